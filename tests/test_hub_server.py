"""The real huggingface_hub / diffusers clients work end to end against the local Hub test server."""
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
from pathlib import Path

import pytest
import torch
from hub_fixtures import local_hub  # noqa: F401
from hub_server import DEFAULT_TOKEN, LocalHubServer, hub_env
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils._runtime import is_xet_available


def _raw_request(
    server: LocalHubServer, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Send a request with an exact (unnormalised) path, bypassing the client's own checks."""
    host, port = server.endpoint.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Authorization": f"Bearer {DEFAULT_TOKEN}", **(headers or {})})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    """A folder with a JSON config, a ~3 MB safetensors file and a nested text file."""
    from safetensors.torch import save_file

    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"hidden": 8, "name": "tiny"}))
    generator = torch.Generator().manual_seed(0)
    save_file({"weight": torch.randn(768, 1024, generator=generator)}, str(folder / "model.safetensors"))
    (folder / "sub" / "notes.txt").write_text("nested file\n")
    assert (folder / "model.safetensors").stat().st_size > 3_000_000
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_whoami_and_create_repo(local_hub: LocalHubServer) -> None:
    api = HfApi()
    assert api.whoami()["name"] == "user"

    url = api.create_repo("user/alpha")
    assert url.repo_id == "user/alpha" and url.endpoint == local_hub.endpoint
    assert local_hub.list_files("user/alpha") == [".gitattributes"]  # initial commit, like the Hub

    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo("user/alpha")
    assert conflict.value.response.status_code == 409
    assert api.create_repo("user/alpha", exist_ok=True).repo_id == "user/alpha"

    # Same name, other repo type: a distinct repo.
    assert api.create_repo("user/alpha", repo_type="dataset").repo_type == "dataset"
    assert api.repo_exists("user/alpha", repo_type="dataset")
    assert not api.repo_exists("user/nope")

    # Private repos are invisible without the token.
    api.create_repo("user/secret", private=True)
    assert api.model_info("user/secret").private is True
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("user/secret", token=False)
    with pytest.raises(HfHubHTTPError) as bad_token:
        api.model_info("user/secret", token="hf_wrong")
    assert bad_token.value.response.status_code == 401


def test_upload_folder_download_and_snapshot(local_hub: LocalHubServer, model_folder: Path) -> None:
    api = HfApi()
    api.create_repo("user/folder")
    info = api.upload_folder(repo_id="user/folder", folder_path=model_folder, commit_message="add files")
    assert info.oid == local_hub.head("user/folder")

    expected = _files(model_folder)
    assert sorted(api.list_repo_files("user/folder")) == sorted([".gitattributes", *expected])
    # The ~3 MB safetensors went inline (base64 "regular" file) in the one commit: no LFS / xet traffic.
    assert {r.route for r in local_hub.requests} == {"create_repo", "preupload", "commit", "tree"}
    assert local_hub.count("commit") == 1

    for name, content in expected.items():
        assert Path(hf_hub_download("user/folder", name)).read_bytes() == content
        assert local_hub.read_file("user/folder", name) == content

    snapshot = Path(snapshot_download("user/folder"))
    assert {k: v for k, v in _files(snapshot).items() if k != ".gitattributes"} == expected

    # Metadata the client reads from HEAD /resolve: sha256 ETag, X-Repo-Commit, exact size.
    meta = get_hf_file_metadata(hf_hub_url("user/folder", "model.safetensors"))
    weights = expected["model.safetensors"]
    assert meta.etag == hashlib.sha256(weights).hexdigest()
    assert meta.commit_hash == info.oid and meta.size == len(weights) and meta.xet_file_data is None

    siblings = {s.rfilename: s for s in api.model_info("user/folder", files_metadata=True).siblings or []}
    assert siblings["model.safetensors"].size == len(weights)
    tree = {f.path for f in api.list_repo_tree("user/folder")}
    assert tree == {".gitattributes", "config.json", "model.safetensors", "sub"}  # non-recursive: folder entry

    # Re-uploading unchanged files creates no commit (server oids match the client's git blob hashes).
    api.upload_folder(repo_id="user/folder", folder_path=model_folder)
    assert local_hub.head("user/folder") == info.oid and local_hub.count("commit") == 1


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated:UserWarning")  # diffusers
def test_diffusers_push_to_hub_and_from_pretrained(local_hub: LocalHubServer, tmp_path: Path) -> None:
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    config = dict(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    model = UNet2DModel(**config).eval()
    model.push_to_hub("user/tiny")
    files = set(local_hub.list_files("user/tiny"))
    assert {"config.json", "diffusion_pytorch_model.safetensors", "README.md"} <= files

    loaded = UNet2DModel.from_pretrained("user/tiny").eval()
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys() and all(torch.equal(state[k], loaded_state[k]) for k in state)

    # Weights loaded by from_pretrained are views into the mmap'd safetensors file, not 64-byte aligned,
    # so CPU kernels may round differently (~5e-7) from the in-memory model. Bit-identity therefore holds
    # against the same model loaded from a local save_pretrained folder (same bytes, same layout).
    model.save_pretrained(tmp_path / "local")
    local = UNet2DModel.from_pretrained(tmp_path / "local").eval()
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([10])
    with torch.no_grad():
        out = loaded(x, t).sample
        assert torch.equal(out, local(x, t).sample)
        torch.testing.assert_close(out, model(x, t).sample, rtol=0, atol=1e-5)


def test_missing_repo_revision_and_entry(local_hub: LocalHubServer) -> None:
    api = HfApi()
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("user/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("user/missing", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        api.list_repo_files("user/missing")

    api.create_repo("user/exists")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("user/exists", "nope.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("user/exists", ".gitattributes", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("user/exists", revision="f" * 40)
    assert not api.file_exists("user/exists", "nope.json")


def test_commit_operations_revisions_and_pull_requests(local_hub: LocalHubServer) -> None:
    api = HfApi()
    api.create_repo("user/ops")
    adds = [CommitOperationAdd(path, path.encode()) for path in ("w/a.bin", "w/b.bin", "keep.txt")]
    first = api.create_commit("user/ops", adds, commit_message="add").oid
    api.create_commit("user/ops", [CommitOperationDelete("w/")], commit_message="remove folder")
    assert api.list_repo_files("user/ops") == [".gitattributes", "keep.txt"]
    old_files = sorted([".gitattributes", *(a.path_in_repo for a in adds)])
    assert sorted(api.list_repo_files("user/ops", revision=first)) == old_files
    assert Path(hf_hub_download("user/ops", "w/a.bin", revision=first)).read_bytes() == b"w/a.bin"

    with pytest.raises(HfHubHTTPError) as stale:  # parent_commit is no longer the head of main
        api.create_commit("user/ops", [CommitOperationAdd("x", b"x")], commit_message="stale", parent_commit=first)
    assert stale.value.response.status_code == 412

    pr = api.upload_file(path_or_fileobj=b"proposal", path_in_repo="pr.txt", repo_id="user/ops", create_pr=True)
    assert pr.pr_revision == "refs/pr/1" and "pr.txt" not in api.list_repo_files("user/ops")
    assert Path(hf_hub_download("user/ops", "pr.txt", revision=pr.pr_revision)).read_bytes() == b"proposal"


def test_path_traversal_refused(local_hub: LocalHubServer) -> None:
    HfApi().create_repo("user/safe")
    head = local_hub.head("user/safe")
    for path in ("../escape.txt", "a/../../escape.txt", "/etc/passwd", "./x"):
        ndjson = b"\n".join(json.dumps(line).encode() for line in [
            {"key": "header", "value": {"summary": "evil", "description": ""}},
            {"key": "file", "value": {"path": path, "content": base64.b64encode(b"x").decode(), "encoding": "base64"}},
        ])
        status, _, _ = _raw_request(
            local_hub, "POST", "/api/models/user/safe/commit/main", ndjson, {"Content-Type": "application/x-ndjson"}
        )
        assert status == 400, path
    assert local_hub.head("user/safe") == head

    for url in (
        "/user/safe/resolve/main/../../etc/passwd",
        "/user/safe/resolve/main/%2e%2e/%2e%2e/etc/passwd",
        "/user/safe/resolve/main/a%2F..%2F..%2Fetc",
        "/api/models/user/safe/tree/main/..%2Fother",
    ):
        status, headers, _ = _raw_request(local_hub, "GET", url)
        assert status == 400, url
        assert "X-Error-Message" in headers

    # A well-formed raw request still works, Range included (resumed downloads use it).
    status, headers, body = _raw_request(
        local_hub, "GET", "/user/safe/resolve/main/.gitattributes", headers={"Range": "bytes=2-5"}
    )
    assert status == 206 and headers["Content-Range"].startswith("bytes 2-5/") and len(body) == 4


def test_injected_commit_faults_reach_the_client_then_clear(local_hub: LocalHubServer) -> None:
    """``fail_next(n, status)`` answers the next ``n`` commits with ``status``: the real client raises
    an HfHubHTTPError carrying the status and the server's message, the repo is left unchanged, and the
    (n + 1)-th commit goes through. (The project's retrying push, ``training.ccl.export.push_folder``,
    is tested on these faults in tests/test_reliability_training.py.)"""
    api = HfApi()
    api.create_repo("user/flaky")
    local_hub.fail_next(2, status=500, route="commit")
    for _ in range(2):
        with pytest.raises(HfHubHTTPError) as err:
            api.upload_file(path_or_fileobj=b"payload", path_in_repo="data.bin", repo_id="user/flaky")
        assert err.value.response.status_code == 500
    assert "data.bin" not in local_hub.list_files("user/flaky") and not local_hub.faults
    oid = api.upload_file(path_or_fileobj=b"payload", path_in_repo="data.bin", repo_id="user/flaky").oid
    assert local_hub.count("commit") == 3  # upload_file POSTs each commit once: no retry of its own
    assert oid == local_hub.head("user/flaky") and local_hub.read_file("user/flaky", "data.bin") == b"payload"

    local_hub.fail_next(1, status=503, route="commit", message="hub is down for maintenance")
    with pytest.raises(HfHubHTTPError) as failure:
        api.upload_file(path_or_fileobj=b"v2", path_in_repo="data.bin", repo_id="user/flaky")
    assert failure.value.response.status_code == 503
    assert "hub is down for maintenance" in str(failure.value)
    assert local_hub.read_file("user/flaky", "data.bin") == b"payload"


def test_dropped_connection_raises(local_hub: LocalHubServer) -> None:
    import httpx2

    api = HfApi()
    api.create_repo("user/drop")
    local_hub.drop_next(1, route="commit")
    # create_commit / upload_file POST the commit once, without retry: the transport error surfaces.
    with pytest.raises(httpx2.RemoteProtocolError):
        api.upload_file(path_or_fileobj=b"lost", path_in_repo="lost.bin", repo_id="user/drop")
    assert "lost.bin" not in local_hub.list_files("user/drop")
    assert [r.status for r in local_hub.requests if r.route == "commit"] == [None]
    # The server (and the client's connection pool) recover.
    api.upload_file(path_or_fileobj=b"ok", path_in_repo="ok.bin", repo_id="user/drop")
    assert local_hub.read_file("user/drop", "ok.bin") == b"ok"


@pytest.mark.skipif(not is_xet_available(), reason="upload_folder pipelines (with commit retries) only with hf_xet")
def test_upload_folder_retries_commit_itself(local_hub: LocalHubServer, tmp_path: Path) -> None:
    """upload_folder (hence diffusers' push_to_hub) commits with built-in backoff when hf_xet is installed."""
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "a.txt").write_text("a")
    api = HfApi()
    api.create_repo("user/backoff")
    local_hub.fail_next(1, status=503, route="commit")  # client waits 1 s, then retries
    api.upload_folder(repo_id="user/backoff", folder_path=tmp_path / "f")
    assert local_hub.count("commit") == 2 and local_hub.read_file("user/backoff", "a.txt") == b"a"


def test_hub_env_patches_and_restores() -> None:
    import diffusers.utils.hub_utils as diffusers_hub_utils
    from huggingface_hub import constants
    from huggingface_hub.hf_api import api

    before = (constants.ENDPOINT, constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE, api.endpoint,
              diffusers_hub_utils.HF_HUB_OFFLINE, os.environ.get("HF_ENDPOINT"), os.environ.get("HF_HUB_OFFLINE"))
    with LocalHubServer() as server:
        with hub_env(server) as env:
            assert constants.ENDPOINT == api.endpoint == os.environ["HF_ENDPOINT"] == server.endpoint
            assert constants.HF_HUB_OFFLINE is False and diffusers_hub_utils.HF_HUB_OFFLINE is False
            assert constants.HF_HUB_CACHE == str(env.cache_dir) and os.environ["HF_TOKEN"] == DEFAULT_TOKEN
            assert "HF_HUB_OFFLINE" not in os.environ and server.env is env
        assert not env.home.exists() and server.env is None
    after = (constants.ENDPOINT, constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE, api.endpoint,
             diffusers_hub_utils.HF_HUB_OFFLINE, os.environ.get("HF_ENDPOINT"), os.environ.get("HF_HUB_OFFLINE"))
    assert after == before
