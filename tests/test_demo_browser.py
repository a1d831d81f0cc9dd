"""End to end in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright; no
browser download): open the viewer, upload a photo with pasted artifacts, wait for the result,
check the score and the overlay, save a screenshot.

Needs ``apt-get install chromium`` and the ``playwright`` Python package (never ``playwright
install``). ``python tests/viewer_browser.py docs/viewer.png`` makes the README's screenshot the
same way, with the bundled model.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from conftest import make_tiny_model
from viewer_browser import CHROMIUM, SCREENSHOT_MAX_BYTES, artifact_photo, running_app, score_in_browser
from demo.models import ModelRef
from demo.viewer import Viewer, ViewerConfig


def test_chromium_is_installed():
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} missing: apt-get install -y chromium (or set FINPERCEP_CHROMIUM)"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_upload_in_chromium_shows_score_and_overlay(tmp_path):
    make_tiny_model().save_pretrained(tmp_path / "tiny")
    config = ViewerConfig(model=ModelRef.parse("folder", str(tmp_path / "tiny")), examples_dir=None)
    photo, box = artifact_photo(tmp_path / "photo_with_artifacts.png", size=192)
    shot = tmp_path / "viewer.png"
    with running_app(config) as app:
        assert app.local_url.startswith("http://127.0.0.1:")
        report = score_in_browser(app.local_url, photo, screenshot=shot, timeout_s=120)

    expected = Viewer(config).analyze(photo, "folder", str(tmp_path / "tiny"), -1, None)
    match = re.search(r"Score (-?\d+\.\d{3})", report.score_text)
    assert match, report.score_text
    assert float(match.group(1)) == pytest.approx(expected.score, abs=1e-3)  # the page shows the real score
    assert "photo_with_artifacts.png" in report.score_text and "192×192" in report.score_text
    assert report.overlay_sizes == [(192, 192), (192, 192)]  # image and overlay, both decoded by the browser
    assert report.table_rows >= 1
    assert report.title == "FinPercep PDM viewer"
    assert report.page_errors == []
    assert report.external_requests == []  # nothing leaves this machine: no analytics, no CDN, no fonts
    assert shot.is_file() and 0 < shot.stat().st_size <= SCREENSHOT_MAX_BYTES
    with Image.open(shot) as img:
        assert img.width >= 600 and img.height >= 400
