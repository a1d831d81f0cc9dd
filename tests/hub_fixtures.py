"""Pytest fixture for tests that talk to the local Hub test server (see tests/hub_server.py).

Usage in a test module (tests/ is on sys.path, tests have no __init__.py)::

    from hub_fixtures import local_hub  # noqa: F401

    def test_push(local_hub):
        model.push_to_hub("user/tiny")            # goes to local_hub.endpoint
        assert "config.json" in local_hub.list_files("user/tiny")
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_server import LocalHubServer, hub_env

__all__ = ["local_hub"]


@pytest.fixture
def local_hub(tmp_path: Path) -> Iterator[LocalHubServer]:
    """A started `LocalHubServer` with `hub_env` applied (HF_ENDPOINT, dummy HF_TOKEN, temp HF_HOME).

    Function-scoped: every test gets empty repos, no pending faults and a fresh download cache
    (starting a server takes a few milliseconds). `local_hub.env` holds the `HubEnv` (cache dir...).
    The test fails at teardown if the server hit an unexpected internal error.
    """
    with LocalHubServer(tmp_path / "hub-server") as server, hub_env(server, home=tmp_path / "hf-home"):
        yield server
        if server.errors:
            pytest.fail("LocalHubServer internal error(s):\n" + "\n".join(server.errors), pytrace=False)
