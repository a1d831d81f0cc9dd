"""The viewer's work, without Gradio: score one image, render its map, list its worst regions,
compare two candidates, and score a batch. ``demo/app.py`` only wires these to widgets.

    an = analyze(pipe, "photo.png", stage=None, model_label="bundled default")
    overlay_image(an, alpha=0.6, cmap="inferno")       # PIL heat map over the image
    find_regions(an.pdm, threshold=0.5, top_k=5)       # list[Region], worst first
    cmp = compare(an_a, an_b)                          # map difference B - A
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np
import PIL.Image
from PIL import Image

from diffusers_ext.image_io import ImageInputError, describe, load_image, to_float_rgb
from diffusers_ext.pdm import Region, draw_regions, overlay, region_stats, resize_pdm, summary

__all__ = [
    "DEFAULT_MAX_PIXELS", "IMAGE_SUFFIXES", "REGION_HEADERS", "Analysis", "Comparison", "ScoreGuide",
    "analyze", "collect_images", "compare", "compare_markdown", "diff_image", "find_regions",
    "overlay_image", "region_rows", "regions_image", "score_markdown",
]

Progress = Callable[[float, str], None]
ImageSource = Union[str, os.PathLike, PIL.Image.Image, np.ndarray]

#: The viewer refuses images above this many pixels (36 MP, e.g. 7200 x 5000) before decoding;
#: ``--max-pixels`` raises it. The library's own limit (151 MP) is meant for batch jobs, not a web page.
DEFAULT_MAX_PIXELS = 36_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
REGION_HEADERS = ["#", "kind", "box x0,y0,x1,y1", "area %", "mean", "max"]


# ------------------------------------------------------------------------------------ score scale


@dataclass(frozen=True)
class ScoreGuide:
    """How to read a global score: the typical scores of clean photos, of photos with one
    SR-degraded region, and of fully super-resolved (degraded) images, for one model and stage.

    :meth:`from_model_card` reads them from the test-split table that ``training/train_default.py``
    writes into the model card (``score_gt``, ``score_syn``, ``score_sr``). Without such a table
    the defaults are the training targets: clean anchored at 1.0 (``--stage0_anchor``), each
    tier one ranking margin (0.1) lower. Bands split halfway between the typical values.
    """

    clean: float = 1.0
    local: float = 0.9
    degraded: float = 0.8
    source: str = "training targets"

    def band(self, score: float) -> tuple[str, str]:
        """``(label, meaning)`` of ``score``."""
        if score >= (self.clean + self.local) / 2:
            return "clean-like", f"in the range of clean photos (typical {self.clean:.2f})"
        if score >= (self.local + self.degraded) / 2:
            return "local defects", f"like photos with one SR-degraded region (typical {self.local:.2f})"
        return "degraded", f"like fully super-resolved, degraded images (typical {self.degraded:.2f}) or worse"

    def legend(self) -> str:
        return (f"Higher = better. Typical scores ({self.source}): clean photos {self.clean:.2f}, one SR-degraded "
                f"region {self.local:.2f}, full SR output {self.degraded:.2f}. Compare candidates of the same "
                "scene: differences mean more than absolute values across unrelated photos.")

    @classmethod
    def from_model_card(cls, text: str, stage: int) -> Optional["ScoreGuide"]:
        """The guide for ``stage`` from a model card's markdown table with the columns ``stage``,
        ``score_gt``, ``score_syn``, ``score_sr`` (the last row when ``stage`` has none); ``None``
        when there is no such table or its typical scores are not ordered clean > local > degraded."""
        rows: dict[str, dict[str, str]] = {}
        header: Optional[list[str]] = None
        for line in text.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.strip().startswith("|") else None
            if cells is None:
                header = None
            elif header is None and {"stage", "score_gt", "score_syn", "score_sr"} <= set(cells):
                header = cells
            elif header is not None and len(cells) == len(header) and not set(cells[0]) <= set("-: "):
                rows[cells[0]] = dict(zip(header, cells))
        if not rows:
            return None
        row = rows.get(str(stage), list(rows.values())[-1])
        try:
            gt, syn, sr = (float(row[k]) for k in ("score_gt", "score_syn", "score_sr"))
        except ValueError:
            return None
        if not gt > syn > sr:
            return None
        return cls(clean=gt, local=syn, degraded=sr, source=f"this model's test split, stage {row['stage']}")

    @classmethod
    def for_model(cls, folder: Optional[Path], stage: int) -> "ScoreGuide":
        """From ``folder``'s (or its parent's) ``README.md`` model card, else the training targets."""
        for d in ([Path(folder), Path(folder).parent] if folder else []):
            card = d / "README.md"
            if card.is_file():
                guide = cls.from_model_card(card.read_text(errors="replace"), stage)
                if guide is not None:
                    return guide
        return cls()


# ---------------------------------------------------------------------------------------- analyze


@dataclass
class Analysis:
    """One scored image: its pixels, global score and PDM, and how they were obtained."""

    name: str
    rgb: np.ndarray  # float32 H x W x 3 in [0, 1]
    score: float
    pdm: np.ndarray  # float32 H x W in [0, 1], higher = more degraded
    stage: int
    num_stages: int
    model: str
    seconds: float
    tiles: int  # 1 = scored in one pass
    stats: dict = field(default_factory=dict)
    guide: ScoreGuide = field(default_factory=ScoreGuide)

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``."""
        return int(self.rgb.shape[1]), int(self.rgb.shape[0])

    def record(self, regions: Sequence[Region] = (), threshold: Optional[float] = None) -> dict[str, Any]:
        """A JSON-ready record (the ``finpercep score`` fields plus stage, model, size and regions)."""
        label, _ = self.guide.band(self.score)
        st = summary(self.pdm, threshold if threshold is not None else 0.5)
        return {
            "image": self.name, "score": float(self.score), "band": label, "pdm_mean": st["mean"],
            "pdm_max": st["max"], "pdm_p95": st["p95"], "frac_above": st["frac_above"],
            "threshold": st["threshold"], "stage": self.stage, "num_stages": self.num_stages,
            "model": self.model, "width": self.size[0], "height": self.size[1], "tiles": self.tiles,
            "seconds": round(self.seconds, 3), "regions": [r.as_dict() for r in regions],
        }


def open_image(source: ImageSource, name: Optional[str] = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[PIL.Image.Image | np.ndarray, str]:
    """``(image, name)`` for a file path, a PIL image or an array; files go through
    :func:`~diffusers_ext.image_io.load_image` (decompression-bomb guard at ``max_pixels``).

    Raises ImageInputError naming the file (its own name, not a temporary upload path)."""
    if source is None:
        raise ImageInputError("no image: upload an image file (PNG, JPEG, WebP, TIFF, BMP) or pick an example")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = name or path.name
        try:
            return load_image(path, max_pixels=max_pixels), label
        except ImageInputError as e:
            raise ImageInputError(str(e).replace(str(path), label)) from None
    if isinstance(source, (PIL.Image.Image, np.ndarray)):
        return source, name or describe(source)
    raise ImageInputError(f"cannot read an image from {describe(source)}; pass a file path, PIL image or array")


def tile_count(pipe, size: tuple[int, int], tile_size: Optional[int]) -> int:
    """How many tiles the pipeline will use for an image of ``size = (width, height)``."""
    from diffusers_ext.pipelines.pipeline_finpercep_reward import tile_starts

    cfg = pipe.reward_model.config
    tile = cfg.tile_size if tile_size is None else int(tile_size)
    s = pipe.reward_model.encoder.max_stride
    if not tile or max(size) <= tile:
        return 1
    tile = max(s, tile // s * s)
    return len(tile_starts(size[1], tile, cfg.tile_overlap)) * len(tile_starts(size[0], tile, cfg.tile_overlap))


def analyze(
    pipe,
    image: ImageSource,
    *,
    name: Optional[str] = None,
    stage: Optional[int] = None,
    tile_size: Optional[int] = None,
    model_label: str = "",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Optional[Progress] = None,
    guide: Optional[ScoreGuide] = None,
) -> Analysis:
    """Score ``image`` with the reward pipeline ``pipe``.

    Args:
        stage: curriculum stage (``None`` or ``-1`` = the model's default; 0 = global only).
        tile_size: ``None`` = the model's tile size, 0 = never tile (large images are tiled
            exactly like ``finpercep score``).
        progress: called as ``progress(fraction, message)`` before the work starts.
        guide: how to read the score (default: :meth:`ScoreGuide.for_model` of the model's folder).
    Raises:
        ImageInputError: not an image, unreadable, too large, or smaller than the model's minimum.
    """
    img, label = open_image(image, name, max_pixels)
    rgb = to_float_rgb(img, label)
    m = pipe.reward_model
    st = m.stage if stage is None or int(stage) < 0 else int(stage)
    h, w = rgb.shape[:2]
    if min(h, w) < m.config.min_size:
        raise ImageInputError(f"{label}: {w}x{h} px is smaller than this reward model's minimum side of "
                              f"{m.config.min_size} px; upscale it first or pick a larger image")
    tiles = tile_count(pipe, (w, h), tile_size)
    if progress is not None:
        progress(0.0, f"scoring {label} ({w}x{h}, {tiles} tile{'s' if tiles > 1 else ''}, stage {st})")
    t0 = time.perf_counter()
    try:
        out = pipe([rgb], stage=st, tile_size=tile_size, output_overlays=False)
    except ValueError as e:  # stage out of range, bad tile settings
        raise ImageInputError(f"{label}: {e}") from None
    pdm = np.asarray(out.pdms[0], dtype=np.float32)
    if guide is None:
        folder = m.config.get("_name_or_path") if hasattr(m.config, "get") else None
        guide = ScoreGuide.for_model(Path(folder) if folder else None, int(out.stage))
    return Analysis(name=label, rgb=rgb, score=float(out.scores[0]), pdm=pdm, stage=int(out.stage),
                    num_stages=m.num_stages, model=model_label, seconds=time.perf_counter() - t0,
                    tiles=tiles, stats=summary(pdm), guide=guide)


# ---------------------------------------------------------------------------------------- render


def overlay_image(an: Analysis, alpha: float = 0.6, cmap: str = "inferno", mode: str = "weighted") -> PIL.Image.Image:
    """The PDM as a heat map over the image (``mode`` ``"weighted"``: clean pixels stay untouched)."""
    return overlay(an.rgb, an.pdm, alpha=float(alpha), cmap=cmap, mode=mode)


def as_pil(an: Analysis) -> PIL.Image.Image:
    """The analysed image as an 8-bit RGB PIL image."""
    return Image.fromarray(np.rint(an.rgb * 255.0).astype(np.uint8), mode="RGB")


def find_regions(pdm: np.ndarray, threshold: float = 0.5, top_k: int = 5) -> list[Region]:
    """The ``top_k`` most degraded regions (components of ``pdm >= threshold``, else grid windows).
    An all-zero map (stage 0) has none."""
    if float(np.max(pdm)) <= 0.0:
        return []
    return region_stats(pdm, threshold=float(threshold), top_k=int(top_k))


def regions_image(an: Analysis, regions: Sequence[Region]) -> PIL.Image.Image:
    """The image with the regions' boxes drawn and numbered (red: components, yellow: windows)."""
    return draw_regions(an.rgb, regions)


def region_rows(an: Analysis, regions: Sequence[Region]) -> list[list]:
    """Rows of the region table, in the order of :data:`REGION_HEADERS` (the box is half-open, like
    ``PIL.Image.crop``; the JSON export has every field of each region)."""
    total = an.pdm.size
    return [[i, r.kind, f"{r.x0}, {r.y0}, {r.x1}, {r.y1}", round(100.0 * r.area / total, 2), round(r.mean, 3),
             round(r.max, 3)] for i, r in enumerate(regions, start=1)]


def score_markdown(an: Analysis) -> str:
    """The score panel: score, its band, map statistics and how the result was computed."""
    label, meaning = an.guide.band(an.score)
    st = an.stats or summary(an.pdm)
    w, h = an.size
    how = f"{an.tiles} tiles" if an.tiles > 1 else "one pass"
    stage = f"stage {an.stage}/{an.num_stages}" + (" (global only, no map)" if an.stage == 0 else "")
    return (
        f"### Score {an.score:.3f} · {label}\n"
        f"{meaning}.\n\n"
        f"PDM mean {st['mean']:.3f} · max {st['max']:.3f} · p95 {st['p95']:.3f} · "
        f"{100 * st['frac_above']:.1f}% of pixels ≥ {st['threshold']:.2f}\n\n"
        f"`{an.name}` · {w}×{h} · {an.model or 'model'} · {stage} · {how} · {an.seconds:.2f} s\n\n"
        f"<small>{an.guide.legend()}</small>"
    )


# --------------------------------------------------------------------------------------- compare


@dataclass
class Comparison:
    """Two candidates of the same scene and the difference of their maps, ``B - A`` at A's size."""

    a: Analysis
    b: Analysis
    diff: np.ndarray  # float32 H x W in [-1, 1]; > 0 where B is more degraded
    resized: bool  # B's map was resized to A's size

    def record(self) -> dict[str, Any]:
        d = self.diff
        return {
            "a": self.a.record(), "b": self.b.record(),
            "score_delta_b_minus_a": float(self.b.score - self.a.score),
            "better": "a" if self.a.score > self.b.score else "b" if self.b.score > self.a.score else "tie",
            "diff_mean": float(d.mean()), "diff_abs_mean": float(np.abs(d).mean()),
            "frac_b_worse": float((d > 0.1).mean()), "frac_a_worse": float((d < -0.1).mean()),
            "b_map_resized_to_a": self.resized,
        }


def compare(a: Analysis, b: Analysis) -> Comparison:
    """Compare two analyses; B's map is resized to A's size when they differ (noted in the result)."""
    pb = b.pdm if b.pdm.shape == a.pdm.shape else resize_pdm(b.pdm, a.pdm.shape)
    return Comparison(a=a, b=b, diff=(pb - a.pdm).astype(np.float32), resized=b.pdm.shape != a.pdm.shape)


def _diverging_lut() -> np.ndarray:
    """255 x 3 uint8 blue (-1) -> near-white (0, the middle entry) -> red (+1)."""
    x = np.linspace(-1.0, 1.0, 255)[:, None]
    blue, white, red = np.array([33, 102, 172.]), np.array([247, 247, 247.]), np.array([178, 24, 43.])
    lut = np.where(x < 0, white + (blue - white) * (-x), white + (red - white) * x)
    return np.rint(lut).astype(np.uint8)


_DIVERGING = _diverging_lut()


def diff_image(diff: np.ndarray, gain: float = 1.0) -> PIL.Image.Image:
    """The signed map difference as an image: red where B is more degraded, blue where A is."""
    idx = np.rint((np.clip(diff * float(gain), -1.0, 1.0) + 1.0) * 127.0).astype(np.uint8)
    return Image.fromarray(_DIVERGING[idx], mode="RGB")


def compare_markdown(c: Comparison) -> str:
    r = c.record()
    delta = r["score_delta_b_minus_a"]
    better = "tie" if abs(delta) < 5e-4 else r["better"]
    verdict = {"a": f"**A ({c.a.name}) scores higher**", "b": f"**B ({c.b.name}) scores higher**",
               "tie": "**practically equal scores** (|B − A| < 0.0005)"}[better]
    la, lb = c.a.guide.band(c.a.score)[0], c.b.guide.band(c.b.score)[0]
    note = " B's map was resized to A's size for the difference." if c.resized else ""
    return (
        f"### A {c.a.score:.3f} ({la}) · B {c.b.score:.3f} ({lb}) · B − A = {delta:+.3f}\n"
        f"{verdict}. Difference map: red where B is more degraded, blue where A is. "
        f"B is worse by more than 0.1 on {100 * r['frac_b_worse']:.1f}% of the pixels, A on "
        f"{100 * r['frac_a_worse']:.1f}%; mean absolute difference {r['diff_abs_mean']:.3f}.{note}\n\n"
        f"<small>{c.a.guide.legend()}</small>"
    )


# ----------------------------------------------------------------------------------------- batch


def collect_images(paths: Iterable[Union[str, os.PathLike]], limit: Optional[int] = None) -> list[Path]:
    """Files to score: each given file as is (a non-image then gets a clear error row), and the
    image files (by suffix, sorted) inside each given folder, recursively. Duplicates dropped.

    Raises ValueError when more than ``limit`` files result."""
    out: list[Path] = []
    seen: set[str] = set()
    for p in paths:
        p = Path(p)
        found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES) \
            if p.is_dir() else [p]
        for q in found:
            key = str(q.resolve())
            if key not in seen:
                seen.add(key)
                out.append(q)
    if limit is not None and len(out) > limit:
        raise ValueError(f"{len(out)} files is more than this viewer's batch limit of {limit}; "
                         "score large sets with `finpercep score FILES... --pdm-dir DIR` or raise --max-batch")
    return out
