"""The functions behind the viewer's widgets, as a plain Python class (no Gradio import): each method
takes widget values and returns widget values, so it is tested directly and, through the running
app, with ``gradio_client``. ``demo/app.py`` lays out the page and wires these methods to events.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from diffusers_ext.image_io import ImageInputError
from diffusers_ext.request import RequestError, parse_option

from . import core
from .core import DEFAULT_MAX_PIXELS, Analysis, Comparison
from .exports import ExportStore, export_analysis, export_batch, export_comparison
from .models import ModelInfo, ModelLoadError, ModelRef, ModelStore, describe_model, stage_choices

__all__ = ["BATCH_HEADERS", "InspectState", "Viewer", "ViewerConfig", "ViewerError"]

ROOT = Path(__file__).resolve().parent.parent
Progress = Optional[Callable[[float, str], None]]
BATCH_HEADERS = ["rank", "image", "score", "band", "PDM mean", "PDM max", "p95", "% ≥ 0.5", "size", "tiles",
                 "seconds", "error"]

#: What the UI turns into a red error toast: the input's or the model's fault, with its fix.
ViewerError = (ImageInputError, ModelLoadError)


@dataclass
class ViewerConfig:
    """Settings of one viewer instance (the command line of ``demo/app.py`` fills them)."""

    model: ModelRef = field(default_factory=ModelRef)
    device: str = "cpu"
    max_file_size: str = "25mb"  # per upload, enforced by Gradio's upload route (HTTP 413)
    concurrency: int = 1  # model jobs (score / compare / batch / load) running at once
    queue_size: int = 16  # jobs waiting at most; more are refused with "queue full"
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_batch: int = 32
    examples_dir: Optional[Path] = ROOT / "examples"


@dataclass
class InspectState:
    """What the page keeps of the last analysis so display changes do not rerun the model."""

    analysis: Analysis
    folder: Path


@dataclass
class CompareState:
    comparison: Comparison
    folder: Path


def _option(value: Any, option: str) -> Optional[int]:
    """A form value through the request layer (``"default"`` / empty / -1 = the model's own value)."""
    try:
        return parse_option(value, option)
    except RequestError as e:
        raise ImageInputError(str(e)) from None


class Viewer:
    """The viewer's behaviour. ``store`` caches models, ``exports`` holds download folders."""

    def __init__(self, config: Optional[ViewerConfig] = None, store: Optional[ModelStore] = None,
                 exports: Optional[ExportStore] = None) -> None:
        self.config = config or ViewerConfig()
        self.store = store or ModelStore(device=self.config.device)
        self.exports = exports or ExportStore()

    # ----------------------------------------------------------------------------- model
    def pipe(self, kind: Optional[str], ref: Optional[str], progress: Progress = None) -> tuple[Any, ModelRef]:
        """The pipeline for the model panel's ``(kind, ref)``; raises :class:`ModelLoadError`."""
        mref = ModelRef.parse(kind, ref)
        if progress is not None and mref not in self.store.loaded():
            progress(0.0, f"loading reward model {mref.label} ({mref.kind_label})")
        return self.store.get(mref), mref

    def model_info(self, kind: Optional[str], ref: Optional[str]) -> ModelInfo:
        pipe, mref = self.pipe(kind, ref)
        return describe_model(pipe, mref)

    def load_model(self, kind: Optional[str], ref: Optional[str]) -> tuple[str, list[tuple[str, int]]]:
        """``(info markdown, stage choices)`` of the chosen model, loading it now."""
        info = self.model_info(kind, ref)
        return info.markdown(), stage_choices(info)

    def initial_model(self) -> tuple[str, list[tuple[str, int]]]:
        """Like :meth:`load_model` for the configured model, but a failure becomes the message."""
        ref = self.config.model
        try:
            return self.load_model(ref.kind, ref.ref)
        except ModelLoadError as e:
            return f"⚠️ {e}", stage_choices(None)

    # ----------------------------------------------------------------------------- inspect
    def analyze(self, image: Any, kind: Optional[str], ref: Optional[str], stage: Any = -1, tile: Any = None,
                progress: Progress = None, name: Optional[str] = None) -> Analysis:
        pipe, mref = self.pipe(kind, ref, progress)
        return core.analyze(pipe, image, name=name, stage=_option(stage, "stage"), tile_size=_option(tile, "tile_size"),
                            model_label=mref.label, max_pixels=self.config.max_pixels, progress=progress)

    def inspect(self, image: Any, kind: Optional[str], ref: Optional[str], stage: Any, tile: Any, alpha: float,
                cmap: str, mode: str, threshold: float, top_k: int, progress: Progress = None) -> tuple:
        """Score ``image`` and render everything: ``(state, score markdown, (image, overlay),
        regions image, region rows, download paths)``."""
        an = self.analyze(image, kind, ref, stage, tile, progress)
        state = InspectState(an, self.exports.new(an.name))
        return (state, *self.render(state, alpha, cmap, mode, threshold, top_k, maps=True))

    def render(self, state: Optional[InspectState], alpha: float, cmap: str, mode: str, threshold: float,
               top_k: int, maps: bool = False) -> tuple:
        """Redraw from the kept analysis (no model run): ``(score markdown, (image, overlay),
        regions image, region rows, download paths)``. ``maps`` also writes the .npy / PNG maps."""
        if state is None:
            raise ImageInputError("nothing to redraw yet: upload an image or pick an example first")
        an = state.analysis
        ov = core.overlay_image(an, alpha, cmap, mode)
        regions = core.find_regions(an.pdm, threshold, top_k)
        files = export_analysis(an, state.folder, ov, regions, float(threshold), maps=maps)
        if not maps:  # keep the maps written by the first render in the downloads
            stem = files[0].name[: -len(".overlay.png")]
            files = [state.folder / f"{stem}.pdm.npy", state.folder / f"{stem}.pdm.png", *files]
        return (core.score_markdown(an), (core.as_pil(an), ov), core.regions_image(an, regions),
                core.region_rows(an, regions), [str(f) for f in files])

    # ----------------------------------------------------------------------------- compare
    def compare(self, image_a: Any, image_b: Any, kind: Optional[str], ref: Optional[str], stage: Any, tile: Any,
                alpha: float, cmap: str, mode: str, progress: Progress = None) -> tuple:
        """Score two candidates: ``(state, markdown, overlay A, overlay B, difference image, downloads)``."""
        if image_a is None or image_b is None:
            raise ImageInputError("compare needs two images: upload candidate A and candidate B")
        step = (lambda f, m: progress(f / 2, m)) if progress else None
        a = self.analyze(image_a, kind, ref, stage, tile, step)
        step = (lambda f, m: progress(0.5 + f / 2, m)) if progress else None
        b = self.analyze(image_b, kind, ref, stage, tile, step)
        c = core.compare(a, b)
        state = CompareState(c, self.exports.new(f"compare-{a.name}"))
        files = export_comparison(c, state.folder)
        return (state, *self.render_compare(state, alpha, cmap, mode, files))

    def render_compare(self, state: Optional[CompareState], alpha: float, cmap: str, mode: str,
                       files: Optional[Sequence[Path]] = None) -> tuple:
        if state is None:
            raise ImageInputError("nothing to redraw yet: run a comparison first")
        c = state.comparison
        if files is None:
            files = sorted(p for p in state.folder.iterdir() if p.is_file())
        return (core.compare_markdown(c), core.overlay_image(c.a, alpha, cmap, mode),
                core.overlay_image(c.b, alpha, cmap, mode), core.diff_image(c.diff), [str(f) for f in files])

    # ----------------------------------------------------------------------------- batch
    def batch(self, files: Optional[Sequence[str]], folder: Optional[Sequence[str]], kind: Optional[str],
              ref: Optional[str], stage: Any, tile: Any, alpha: float, cmap: str, mode: str,
              progress: Progress = None) -> tuple:
        """Score many files: ``(summary markdown, table rows worst first, gallery, downloads)``.
        A file that cannot be scored gets a row with its error; the others are still scored."""
        folder_images = [f for f in (folder or []) if Path(f).suffix.lower() in core.IMAGE_SUFFIXES]
        try:
            paths = core.collect_images(list(files or []) + folder_images, limit=self.config.max_batch)
        except ValueError as e:
            raise ImageInputError(str(e)) from None
        if not paths:
            raise ImageInputError("no images to score: add image files, or a folder that holds PNG / JPEG / "
                                  "WebP / TIFF / BMP files")
        pipe, mref = self.pipe(kind, ref, progress)  # model errors stop the batch: they are not per file
        records, gallery = [], []
        for i, path in enumerate(paths):
            if progress:
                progress(i / len(paths), f"{i + 1}/{len(paths)}: {path.name}")
            try:
                an = core.analyze(pipe, path, stage=_option(stage, "stage"), tile_size=_option(tile, "tile_size"), model_label=mref.label,
                                  max_pixels=self.config.max_pixels)
            except ImageInputError as e:
                records.append({"image": path.name, "error": str(e)})
                continue
            records.append(an.record())
            gallery.append((core.overlay_image(an, alpha, cmap, mode), f"{an.name} · {an.score:.3f}"))
        ok = sorted((r for r in records if "error" not in r), key=lambda r: r["score"])
        bad = [r for r in records if "error" in r]
        rows = [[i, r["image"], round(r["score"], 4), r["band"], round(r["pdm_mean"], 4), round(r["pdm_max"], 4),
                 round(r["pdm_p95"], 4), round(100 * r["frac_above"], 2), f"{r['width']}×{r['height']}", r["tiles"],
                 r["seconds"], ""] for i, r in enumerate(ok, start=1)]
        rows += [["", r["image"], None, "", None, None, None, None, "", None, None, r["error"]] for r in bad]
        out = export_batch(ok + bad, self.exports.new("batch"))
        md = f"Scored {len(ok)} of {len(records)} files with {mref.label}, worst first."
        if bad:
            md += f" {len(bad)} could not be scored (see the error column)."
        return md, rows, gallery, [str(f) for f in out]

    # ----------------------------------------------------------------------------- examples
    def examples(self) -> list[Path]:
        """Image files in the examples folder, sorted (empty when there is none)."""
        d = self.config.examples_dir
        if not d or not Path(d).is_dir():
            return []
        return sorted(p for p in Path(d).iterdir() if p.is_file() and p.suffix.lower() in core.IMAGE_SUFFIXES)

    def example_pairs(self) -> list[tuple[Path, Path]]:
        """Pairs of examples of the same scene (same name up to the first ``_``), for compare."""
        by_scene: dict[str, list[Path]] = {}
        for p in self.examples():
            by_scene.setdefault(p.stem.split("_")[0], []).append(p)
        pairs = []
        for items in by_scene.values():
            clean = [p for p in items if "clean" in p.stem]
            others = [p for p in items if p not in clean]
            pairs += [(o, c) for o in others for c in clean] or [(items[i], items[i + 1]) for i in range(len(items) - 1)]
        return pairs

