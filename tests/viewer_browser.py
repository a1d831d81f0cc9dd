"""Test helper, not part of the viewer: drive the viewer in a real headless Chromium (Playwright with
Debian's ``/usr/bin/chromium``; no browser download). Used by ``tests/test_demo_browser.py``,
``tests/test_demo_app.py`` and ``tests/test_viewer_load.py``; it also makes the README's screenshot:

    python tests/viewer_browser.py docs/viewer.png [--model PATH|HUB_ID]

    with running_app(config) as app:
        report = score_in_browser(app.local_url, artifact_photo(tmp / "photo.png"), screenshot=tmp / "shot.png")
    report.score_text, report.overlay_sizes, report.external_requests
"""
from __future__ import annotations

import io
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional
from urllib.parse import urlparse

import numpy as np
from PIL import Image, ImageFilter

if TYPE_CHECKING:  # pragma: no cover
    import gradio as gr

__all__ = ["CHROMIUM_ARGS", "BrowserReport", "artifact_photo", "free_port", "running_app", "score_in_browser",
           "take_screenshot"]

#: Debian's chromium (``apt-get install chromium``); override with FINPERCEP_CHROMIUM.
CHROMIUM = os.environ.get("FINPERCEP_CHROMIUM", "/usr/bin/chromium")
#: Headless, no sandbox (containers, root), nothing that phones home on a closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--disable-dev-shm-usage"]
SCREENSHOT_MAX_BYTES = 300_000
REPO = Path(__file__).resolve().parent.parent
LOCAL = ("127.0.0.1", "localhost", "[::1]", "::1")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _base_photo(size: int) -> np.ndarray:
    """A real photograph as uint8 ``size x size x 3``: a clean bundled example when there is one,
    else scikit-image's astronaut."""
    examples = REPO / "examples"
    clean = sorted(examples.glob("*clean*")) if examples.is_dir() else []
    if clean:
        img = Image.open(clean[0]).convert("RGB")
    else:
        from skimage import data

        img = Image.fromarray(data.astronaut())
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return np.asarray(img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS))


def artifact_photo(path: Path, size: int = 320, seed: int = 0) -> tuple[Path, tuple[int, int, int, int]]:
    """Save a photo with two pasted artifacts (a strongly blurred square and a noise square) to
    ``path``; returns ``(path, box)`` with the blurred square's ``(x0, y0, x1, y1)``."""
    img = Image.fromarray(_base_photo(size))
    s = size // 4  # both squares in the right half: the overlay side of the viewer's slider
    box = (size * 9 // 16, size // 4, size * 9 // 16 + s, size // 4 + s)
    img.paste(img.crop(box).filter(ImageFilter.GaussianBlur(radius=max(2, s // 10))), box[:2])
    rng = np.random.default_rng(seed)
    nbox = (size - size // 16 - s, size * 5 // 8, size - size // 16, size * 5 // 8 + s)
    patch = np.asarray(img.crop(nbox)).astype(np.float32) + rng.normal(0.0, 40.0, (s, s, 3))
    img.paste(Image.fromarray(np.clip(patch, 0, 255).astype(np.uint8)), nbox[:2])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path, box


@contextmanager
def running_app(config, host: str = "127.0.0.1", port: Optional[int] = None, viewer=None) -> Iterator["gr.Blocks"]:
    """The viewer for ``config`` (or ``viewer``, a :class:`demo.viewer.Viewer`) served on ``host:port``
    (a free port by default) in this process; yields the launched ``gr.Blocks`` (``.local_url``) and
    closes it afterwards."""
    from demo.app import build_app, launch

    app = build_app(config, viewer)
    launch(app, config, host=host, port=port or free_port(), block=False, quiet=True)
    try:
        yield app
    finally:
        app.close()


@dataclass
class BrowserReport:
    """What the browser saw."""

    title: str = ""
    score_text: str = ""
    overlay_sizes: list[tuple[int, int]] = field(default_factory=list)  # natural sizes of the slider's images
    table_rows: int = 0
    external_requests: list[str] = field(default_factory=list)  # requests to anything but this machine
    page_errors: list[str] = field(default_factory=list)
    screenshot: Optional[Path] = None


_OVERLAY_READY = """() => {
  const imgs = [...document.querySelectorAll('#overlay img')];
  return imgs.length >= 2 && imgs.every(i => i.complete && i.naturalWidth > 0);
}"""


def score_in_browser(url: str, image: Path, screenshot: Optional[Path] = None, timeout_s: float = 120.0,
                     viewport: tuple[int, int] = (1360, 1180), overlay_mode: Optional[str] = None) -> BrowserReport:
    """Open the viewer at ``url``, upload ``image`` in the Inspect tab, wait for the score and the
    overlay, and optionally save a screenshot (shrunk under :data:`SCREENSHOT_MAX_BYTES`).
    ``overlay_mode`` (``"weighted"`` / ``"uniform"``) is clicked in the page before the upload."""
    from playwright.sync_api import sync_playwright

    report = BrowserReport()
    ms = int(timeout_s * 1000)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})

            def on_request(req) -> None:
                parsed = urlparse(req.url)
                if parsed.scheme in ("http", "https", "ws", "wss") and parsed.hostname not in LOCAL:
                    report.external_requests.append(req.url)

            page.on("request", on_request)
            page.on("pageerror", lambda err: report.page_errors.append(str(err)))
            page.route(lambda u: urlparse(u).hostname not in LOCAL and urlparse(u).scheme in ("http", "https"),
                       lambda route: route.abort())  # closed network: fail fast instead of hanging
            page.goto(url, wait_until="domcontentloaded", timeout=ms)
            file_input = page.locator("#input-image input[type=file]")
            file_input.wait_for(state="attached", timeout=ms)
            report.title = page.title()
            if overlay_mode:
                page.get_by_label(overlay_mode, exact=True).check()
            file_input.set_input_files(str(image))  # the upload event scores the image
            page.wait_for_function("() => (document.querySelector('#score')?.innerText || '').includes('Score ')",
                                   timeout=ms)
            page.wait_for_function(_OVERLAY_READY, timeout=ms)
            report.score_text = page.locator("#score").inner_text()
            report.overlay_sizes = [tuple(s) for s in page.eval_on_selector_all(
                "#overlay img", "imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])")]
            report.table_rows = page.locator("#regions-table tbody tr").count()
            if screenshot is not None:
                page.wait_for_timeout(300)  # let the table and the downloads settle
                report.screenshot = _save_small_png(page.screenshot(full_page=False), Path(screenshot))
        finally:
            browser.close()
    return report


def _save_small_png(png: bytes, path: Path, max_bytes: int = SCREENSHOT_MAX_BYTES) -> Path:
    """Save a PNG screenshot, palette-quantized (and then downscaled) until under ``max_bytes``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.open(io.BytesIO(png)).convert("RGB")
    data = png
    scale = 1.0
    while len(data) > max_bytes and scale > 0.3:
        small = img if scale == 1.0 else img.resize((round(img.width * scale), round(img.height * scale)),
                                                     Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        small.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            buf, format="PNG", optimize=True)
        data = buf.getvalue()
        scale *= 0.85
    path.write_bytes(data)
    return path


def take_screenshot(out: Path, config, image: Optional[Path] = None, overlay_mode: str = "uniform") -> Path:
    """Serve the viewer for ``config`` on a free local port, score a photo with pasted artifacts
    (or ``image``) in headless Chromium and save the page to ``out`` (PNG under 300 KB). The
    uniform overlay shows the whole map, faint values included."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="finpercep-shot-") as tmp:
        photo = image or artifact_photo(Path(tmp) / "photo_with_artifacts.png")[0]
        with running_app(config) as app:
            report = score_in_browser(app.local_url, photo, screenshot=Path(out), overlay_mode=overlay_mode)
    if report.page_errors:
        raise RuntimeError(f"the page reported errors: {report.page_errors}")
    return Path(out)


def main(argv=None) -> int:
    """``python tests/viewer_browser.py OUT.png [viewer options]``: the README's screenshot."""
    import argparse
    import sys

    from demo import cli
    from demo.app import config_from_args

    p = cli.add_arguments(argparse.ArgumentParser(prog="tests/viewer_browser.py", description=main.__doc__))
    p.add_argument("out", type=Path, help="PNG to write (kept under 300 KB)")
    p.add_argument("--image", type=Path, default=None, help="photo to score (default: one with pasted artifacts)")
    args = p.parse_args(argv)
    if args.examples is None and (REPO / "examples").is_dir():
        args.examples = REPO / "examples"
    path = take_screenshot(args.out, config_from_args(args), image=args.image)
    print(f"screenshot saved to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
