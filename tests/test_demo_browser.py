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


class CountingViewer(Viewer):
    """The viewer, counting its model runs (one per scored image)."""

    def __init__(self, config: ViewerConfig) -> None:
        super().__init__(config)
        self.runs: list[str] = []

    def analyze(self, image, *args, **kwargs):
        self.runs.append(Path(image).name if image is not None else "None")
        return super().analyze(image, *args, **kwargs)


_RESULT_SHOWN = "() => (document.querySelector('#score')?.innerText || '').includes('Score ')"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_one_model_run_per_upload_and_errors_clear_the_last_result(tmp_path, capfd, caplog):
    """An upload scores the image once (the issue: two runs, two toasts, the result overwritten);
    a failed upload (a text file named .png, a 1x1 image) takes the previous image's result off the
    page, and the server log carries one line per user error, no traceback."""
    from playwright.sync_api import sync_playwright

    from viewer_browser import CHROMIUM_ARGS

    make_tiny_model().save_pretrained(tmp_path / "tiny")
    config = ViewerConfig(model=ModelRef.parse("folder", str(tmp_path / "tiny")), examples_dir=None)
    photo, _ = artifact_photo(tmp_path / "photo_with_artifacts.png", size=160)
    notes = tmp_path / "notes.png"
    notes.write_text("these are notes, not pixels")
    dot = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (200, 30, 30)).save(dot)
    viewer = CountingViewer(config)
    with running_app(config, viewer=viewer) as app, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1360, "height": 1100})
        page.goto(app.local_url, wait_until="domcontentloaded", timeout=60_000)
        upload = page.locator("#input-image input[type=file]")
        upload.wait_for(state="attached", timeout=60_000)
        upload.set_input_files(str(photo))
        page.wait_for_function(_RESULT_SHOWN, timeout=60_000)
        page.wait_for_timeout(3000)  # a second run (a second listener) would start within this time
        assert viewer.runs == ["photo_with_artifacts.png"], viewer.runs
        for bad, message in ((notes, "not a recognized image file"), (dot, "1x1 px")):
            upload.set_input_files(str(bad))  # over the shown image, as a user drops the next file
            page.get_by_text(message).first.wait_for(timeout=60_000)
            page.wait_for_function(f"() => !({_RESULT_SHOWN[6:]})", timeout=10_000)
            assert page.locator("#overlay img").count() == 0, "the previous overlay stayed on screen"
            assert page.locator("#regions-table tbody tr").count() <= 1, "the previous regions stayed on screen"
            shown = "\n".join(page.locator(".toast-body").all_inner_texts())
            assert shown.count(message) == 1, f"one error, one message: {shown}"
        page.wait_for_timeout(1500)
        assert viewer.runs == ["photo_with_artifacts.png", "notes.png", "dot.png"], viewer.runs
        browser.close()
    refused = [r.getMessage() for r in caplog.records if r.name == "finpercep.viewer"]
    assert len(refused) == 2 and "notes.png" in refused[0] and "dot.png" in refused[1], refused
    assert "Traceback" not in capfd.readouterr().err, "a user's bad file printed a traceback in the server log"
