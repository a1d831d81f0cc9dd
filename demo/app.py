"""FinPercep PDM viewer: see where an image is broken, compare two upscales, export the map.

    finpercep view [--host 127.0.0.1] [--port 7860] [--model PATH|HUB_ID] [--device cpu]
    python -m demo.app [...]                             # the same page and options (demo/cli.py)

Safe by default: binds 127.0.0.1, never creates a share link, Gradio analytics off, uploads
capped (``--max-file-size``, default 25 MB; images above ``--max-pixels`` are refused before
decoding), one model job at a time (``--concurrency``) with at most ``--queue-size`` waiting.
The model panel can load any local folder or Hub id: bind a public address (``--host 0.0.0.0``)
only on a trusted network.
"""
from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no telemetry, no version check

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional, Sequence  # noqa: E402

import gradio as gr  # noqa: E402
from gradio import processing_utils as _gr_files  # noqa: E402

from diffusers_ext.pdm import COLORMAPS  # noqa: E402

from demo import cli as _cli  # noqa: E402
from demo.core import DEFAULT_OVERLAY, REGION_HEADERS  # noqa: E402
from demo.models import KINDS, ModelLoadError, ModelRef  # noqa: E402
from demo.viewer import BATCH_HEADERS, Viewer, ViewerConfig, ViewerError  # noqa: E402

__all__ = ["ImageInput", "build_app", "launch", "limit_malloc_arenas", "main", "parse_args", "release_memory", "run"]

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
log = logging.getLogger("finpercep.viewer")
CSS = """
#score h3 { margin-top: 0; }
#score { min-height: 7em; }
"""
TILE_CHOICES = [("model default", "default"), ("never tile", "0"), "256", "512", "768", "1024"]


class ImageInput(gr.Image):
    """``gr.Image`` whose upload reaches our loader untouched (a file path), so a file that is not
    an image gets the loader's clear message instead of Pillow's bare error."""

    is_template = True  # rendered by the frontend's Image component

    def preprocess(self, payload):  # type: ignore[override]
        if payload is None:
            return None
        if payload.path and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        return super().preprocess(payload)


def _save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
    """Gradio's ``save_pil_to_cache`` (6.31) with an atomic write. Gradio stores each output image
    under the hash of its bytes and rewrites that file in place, so when two users get the same
    image (same upload, same settings) the second write truncates the file while the first user's
    download is reading it: "peer closed connection without sending complete message body
    (received 0 bytes ...)" (found by benchmarks/load_viewer.py). Here an existing copy is reused
    (touched, as ``delete_cache`` ages by time) and a new one is written aside and renamed in."""
    data = _gr_files.encode_pil_to_bytes(img, format)
    folder = Path(cache_dir) / _gr_files.hash_bytes(data)
    folder.mkdir(exist_ok=True, parents=True)
    target = (folder / f"{name}.{format}").resolve()
    try:
        os.utime(target)
        return str(target)
    except FileNotFoundError:
        pass
    fd, staging = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(staging, target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return str(target)


_gr_files.save_pil_to_cache = _save_pil_to_cache  # every image output goes through this module attribute


def _glibc():
    """The C library when it is glibc (``mallopt`` / ``malloc_trim``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both exist in glibc only
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _glibc()


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas for this process; True when done. glibc gives each thread that
    allocates its own arena (up to 8 per core) and keeps freed memory in it, and Gradio runs every
    job on one of its many worker threads, so the server grew by about one job's working set per new
    thread: 816 -> 1110 MB RSS over 4 rounds of ``benchmarks/load_viewer.py`` (bundled model, 20
    users), still rising. Not done when ``MALLOC_ARENA_MAX`` is set (the user's choice wins)."""
    if os.environ.get("MALLOC_ARENA_MAX") or _LIBC is None:
        return False
    return bool(_LIBC.mallopt(-8, int(arenas)))  # -8: M_ARENA_MAX


def release_memory() -> None:
    """Hand the heap's free pages back to the OS after a job. Image-sized blocks freed by a job stay
    in glibc's heap, fragmented, so with the arenas capped RSS still crept up (711 -> 813 MB over 9
    rounds of the load benchmark); trimming after every job kept it flat (635-676 MB over 10 rounds)
    at no measurable CPU cost. No-op off glibc."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _guard(fn, *args, **kwargs):
    """Run ``fn``; input and model errors become a red message in the page (and the API) and one line
    in the server log (the user's file or choice, not a bug: no traceback). Anything else is a bug and
    keeps Gradio's traceback."""
    try:
        return fn(*args, **kwargs)
    except ViewerError as e:
        log.warning("finpercep view: refused: %s", e)
        raise gr.Error(str(e), duration=None, print_exception=False) from None
    finally:
        release_memory()


def _progress(progress: gr.Progress):
    """The viewer's ``progress(fraction, message)`` on Gradio's bar: per tile with the time left when
    an image is tiled (demo/core.py), per file in a batch."""
    return lambda fraction, message: progress(fraction, desc=message)


def build_app(config: Optional[ViewerConfig] = None, viewer: Optional[Viewer] = None) -> gr.Blocks:
    """The page. ``viewer`` (default: one from ``config``) does the work; see demo/viewer.py."""
    v = viewer or Viewer(config)
    cfg = v.config
    info_md, stages = v.initial_model()
    cmaps = sorted(COLORMAPS)

    with gr.Blocks(title="FinPercep PDM viewer", delete_cache=(3600, 3600)) as app:
        gr.Markdown("## FinPercep PDM viewer\nWhere does the reward model see degradation? Global score "
                    "(higher = better) and the Perceptual Degradation Map (bright = more degraded).")
        with gr.Sidebar(label="Model and display", open=True, width=330):
            gr.Markdown("#### Model")
            kind = gr.Radio(list(KINDS), value=cfg.model.kind_label, label="Source", elem_id="model-kind")
            ref = gr.Textbox(value=cfg.model.ref, label="Folder or Hub id", placeholder="/path/to/model or owner/name",
                             elem_id="model-ref")
            load = gr.Button("Load model", size="sm")
            info = gr.Markdown(info_md, elem_id="model-info")
            stage = gr.Dropdown(stages, value=-1, label="Curriculum stage", elem_id="stage")
            tile = gr.Dropdown(TILE_CHOICES, value="default", allow_custom_value=True, label="Tile size (px)",
                               info="large images are scored in overlapping tiles of this size, like the CLI")
            gr.Markdown("#### Display")
            alpha = gr.Slider(0.0, 1.0, value=DEFAULT_OVERLAY["alpha"], step=0.05, label="Overlay opacity",
                              elem_id="alpha")
            cmap = gr.Dropdown(cmaps, value="inferno", label="Colormap", elem_id="cmap")
            mode = gr.Radio(["uniform", "weighted"], value=DEFAULT_OVERLAY["mode"], label="Overlay mode",
                            info="uniform: the whole map at that opacity (dark = clean, bright = degraded); "
                                 "weighted: clean pixels untouched, only degraded ones tinted (faint for mild maps)")
            threshold = gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="Region threshold")
            top_k = gr.Slider(1, 20, value=5, step=1, label="Regions listed")
        model_inputs = [kind, ref, stage, tile]
        display = [alpha, cmap, mode]

        with gr.Tabs():
            with gr.Tab("Inspect", id="inspect"):
                inspect_state = gr.State(None)
                with gr.Row():
                    with gr.Column(scale=2):
                        image = ImageInput(type="filepath", label="Image", image_mode=None, height=300,
                                           sources=["upload", "clipboard"], elem_id="input-image")
                        run = gr.Button("Score image", variant="primary", elem_id="run")
                        examples = v.examples()
                        example_set = gr.Examples([[str(p)] for p in examples], inputs=[image],
                                                  label="Examples") if examples else None
                    with gr.Column(scale=3):
                        score = gr.Markdown("Upload an image or pick an example.", elem_id="score")
                        # slider_position 0: the overlay covers the whole image at first sight (a handle in
                        # the middle would hide half of it, and maybe the defect); drag it right for the photo
                        slider = gr.ImageSlider(type="pil", format="png", elem_id="overlay", max_height=460,
                                                label="PDM overlay | image: drag the handle from the left edge",
                                                interactive=False, slider_position=0)
                with gr.Row():
                    boxes = gr.Image(type="pil", format="png", label="Worst regions", elem_id="regions-image",
                                     interactive=False, height=300, scale=2)
                    with gr.Column(scale=3):
                        table = gr.Dataframe(headers=REGION_HEADERS, label="Worst regions, worst first (x1, y1 exclusive; regions along the image border rank lower)", interactive=False, elem_id="regions-table", wrap=True,
                                             column_widths=["7%", "19%", "32%", "14%", "14%", "14%"])
                        files = gr.File(label="Downloads: PDM .npy, PDM 16-bit PNG, overlay, JSON",
                                        file_count="multiple", interactive=False, elem_id="downloads")

            with gr.Tab("Compare", id="compare"):
                compare_state = gr.State(None)
                with gr.Row():
                    img_a = ImageInput(type="filepath", label="Candidate A", image_mode=None, height=300,
                                       elem_id="image-a", sources=["upload", "clipboard"])
                    img_b = ImageInput(type="filepath", label="Candidate B", image_mode=None, height=300,
                                       elem_id="image-b", sources=["upload", "clipboard"])
                pairs = v.example_pairs()
                if pairs:
                    gr.Examples([[str(a), str(b)] for a, b in pairs], inputs=[img_a, img_b], label="Same-scene pairs")
                run_cmp = gr.Button("Compare", variant="primary", elem_id="run-compare")
                cmp_md = gr.Markdown(elem_id="compare-score")
                with gr.Row():
                    ov_a = gr.Image(type="pil", format="png", label="A: PDM overlay", interactive=False)
                    ov_b = gr.Image(type="pil", format="png", label="B: PDM overlay", interactive=False)
                    diff = gr.Image(type="pil", format="png", label="B − A (red: B worse, blue: A worse)",
                                    interactive=False)
                cmp_files = gr.File(label="Downloads: both maps, difference .npy, compare.json", file_count="multiple",
                                    interactive=False)

            with gr.Tab("Batch", id="batch"):
                with gr.Row():
                    batch_files = gr.File(file_count="multiple", type="filepath", label="Image files")
                    batch_dir = gr.File(file_count="directory", type="filepath", label="…or a folder")
                run_batch = gr.Button("Score all", variant="primary")
                batch_md = gr.Markdown()
                batch_table = gr.Dataframe(headers=BATCH_HEADERS, interactive=False, wrap=True)
                gallery = gr.Gallery(label="Overlays (worst first in the table)", columns=4, height=360, format="png")
                batch_out = gr.File(label="Downloads: batch.json, batch.csv", file_count="multiple", interactive=False,
                                    height=140)

        gr.Markdown(f"<small>Limits of this viewer: {cfg.max_file_size} per upload, {cfg.max_pixels / 1e6:.0f} MP "
                    f"per image, {cfg.max_batch} files per batch, {cfg.concurrency} model job(s) at a time, "
                    f"{cfg.queue_size} waiting.</small>")

        # ------------------------------------------------------------------ events
        def on_load(model_source, model_ref):
            md, choices = _guard(v.load_model, model_source, model_ref)
            return md, gr.Dropdown(choices=choices, value=-1)

        def on_inspect(image, model_source, model_ref, stage, tile_size, opacity, colormap, overlay_mode,
                       threshold, top_k, progress=gr.Progress()):
            return _guard(v.inspect, image, model_source, model_ref, stage, tile_size, opacity, colormap,
                          overlay_mode, threshold, int(top_k), _progress(progress))

        def on_render(state, opacity, colormap, overlay_mode, threshold, top_k):
            if state is None:
                return tuple(gr.skip() for _ in range(5))
            return _guard(v.render, state, opacity, colormap, overlay_mode, threshold, int(top_k))

        def on_compare(image_a, image_b, model_source, model_ref, stage, tile_size, opacity, colormap,
                       overlay_mode, progress=gr.Progress()):
            return _guard(v.compare, image_a, image_b, model_source, model_ref, stage, tile_size, opacity,
                          colormap, overlay_mode, _progress(progress))

        def on_render_compare(state, opacity, colormap, overlay_mode):
            if state is None:
                return tuple(gr.skip() for _ in range(5))
            return _guard(v.render_compare, state, opacity, colormap, overlay_mode)

        def on_batch(files, folder, model_source, model_ref, stage, tile_size, opacity, colormap, overlay_mode,
                     progress=gr.Progress(track_tqdm=True)):
            return _guard(v.batch, files, folder, model_source, model_ref, stage, tile_size, opacity, colormap,
                          overlay_mode, _progress(progress))

        heavy = dict(concurrency_limit=cfg.concurrency, concurrency_id="model")
        load.click(on_load, [kind, ref], [info, stage], api_name="load_model", **heavy)
        inspect_out = [inspect_state, score, slider, boxes, table, files]
        inspect_in = [image, *model_inputs, *display, threshold, top_k]
        cleared = ("No result: the last image could not be scored (the red message says why). "
                   "Upload another image or pick an example.")

        def on_failed():  # no stale result beside the error: the previous image's score, map and files go
            return None, cleared, None, None, [], None

        run.click(on_inspect, inspect_in, inspect_out, api_name="inspect", **heavy).failure(
            on_failed, None, inspect_out, api_name=False, queue=False, show_progress="hidden")

        def on_new_input(image, *rest, progress=gr.Progress()):
            if image is None:  # cleared: keep the last result on screen
                return tuple(gr.skip() for _ in inspect_out)
            return on_inspect(image, *rest, progress=progress)

        # Score again at once on a new upload, an example, another stage or tile size: one model run
        # each. Not image.change: it fires again when the page re-sets the value (a file that is not
        # an image ran the model twice, with two error toasts).
        triggers = [image.upload, stage.change, tile.change]
        if example_set is not None:
            triggers.append(example_set.load_input_event.then)
        for trigger in triggers:
            trigger(on_new_input, inspect_in, inspect_out, api_name=False, **heavy).failure(
                on_failed, None, inspect_out, api_name=False, queue=False, show_progress="hidden")
        render_in = [inspect_state, *display, threshold, top_k]
        light = dict(concurrency_limit=4, concurrency_id="render", show_progress="hidden")
        triggers = ((alpha, "release"), (cmap, "change"), (mode, "change"), (threshold, "release"), (top_k, "release"))
        for i, (comp, ev) in enumerate(triggers):  # display changes redraw from the kept maps: no model run
            getattr(comp, ev)(on_render, render_in, inspect_out[1:], api_name="render" if i == 0 else False, **light)
            getattr(comp, ev)(on_render_compare, [compare_state, *display], [cmp_md, ov_a, ov_b, diff, cmp_files],
                              api_name="render_compare" if i == 0 else False, **light)
        run_cmp.click(on_compare, [img_a, img_b, *model_inputs, *display],
                      [compare_state, cmp_md, ov_a, ov_b, diff, cmp_files], api_name="compare", **heavy)
        run_batch.click(on_batch, [batch_files, batch_dir, *model_inputs, *display],
                        [batch_md, batch_table, gallery, batch_out], api_name="batch", **heavy)
    return app


def launch(app: gr.Blocks, config: ViewerConfig, host: str = "127.0.0.1", port: Optional[int] = None,
           block: bool = True, quiet: bool = False) -> gr.Blocks:
    """Queue and launch ``app`` with the safe defaults: no share link, upload cap, queue limits,
    no run history, only the examples folder served besides Gradio's own cache."""
    if host not in LOCAL_HOSTS:
        print(f"warning: binding {host}: anyone who can reach this address can use the viewer and load models "
              "from this machine's folders; use 127.0.0.1 unless the network is trusted", file=sys.stderr)
    app.queue(max_size=max(1, int(config.queue_size)), default_concurrency_limit=config.concurrency)
    allowed = [str(config.examples_dir)] if config.examples_dir and Path(config.examples_dir).is_dir() else []
    app.launch(server_name=host, server_port=port, share=False, inbrowser=False, show_error=True, quiet=quiet,
               max_file_size=config.max_file_size, prevent_thread_lock=not block, ssr_mode=False,
               allowed_paths=allowed, css=CSS, theme=gr.themes.Default(), footer_links=["api", "settings"],
               run_history=False)  # no run history: it can offer to upload runs to a Hub bucket
    return app


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The options of ``finpercep view`` / ``python -m demo.app`` (defined in demo/cli.py, no Gradio)."""
    return _cli.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> ViewerConfig:
    optional = {k: v for k, v in (("max_pixels", args.max_pixels), ("examples_dir", args.examples)) if v is not None}
    return ViewerConfig(model=ModelRef.from_cli(args.model), device=args.device, max_file_size=args.max_file_size,
                        concurrency=max(1, args.concurrency), queue_size=max(1, args.queue_size),
                        max_batch=args.max_batch, **optional)


def run(args: argparse.Namespace) -> int:
    """Start the server with parsed options (``finpercep view`` calls this); returns the exit code."""
    limit_malloc_arenas()  # the server process: keep its memory flat under many users
    try:
        config = config_from_args(args)
    except ModelLoadError as e:
        print(f"finpercep view: {e}", file=sys.stderr)
        return 2
    launch(build_app(config), config, host=args.host, port=args.port, block=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m demo.app``; returns the exit code."""
    return run(parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
