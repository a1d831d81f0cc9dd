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
from diffusers_ext.pdm import Region, draw_regions, label_components, overlay, resize_pdm, summary, worst_windows
from diffusers_ext.request import RequestError, ScoreRequest, check_image_size, resolve, score_record

__all__ = [
    "BAND_LABELS", "CALIBRATED_BANDS", "DEFAULT_MAX_PIXELS", "DEFAULT_OVERLAY", "IMAGE_SUFFIXES", "REGION_HEADERS",
    "Analysis", "Comparison", "ScoreGuide", "analyze", "border_weight", "collect_images", "compare",
    "compare_markdown", "diff_image", "find_regions",
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


#: Bands of a calibrated score (``score_calibration`` in the model config: ``sigmoid(a * raw + b)``,
#: clean photos near 0.9, heavily damaged images near 0.1): (lowest score, label, meaning).
CALIBRATED_BANDS = (
    (0.8, "looks clean", "no visible defect: in the range of clean photos (about 0.9)"),
    (0.5, "some visible defects", "mostly fine, with defects in places: look at the map"),
    (0.2, "clearly degraded", "visible degradation over large parts of the image"),
    (float("-inf"), "severely degraded", "heavily damaged: in the range of badly degraded images (about 0.1)"),
)
BAND_LABELS = tuple(label for _, label, _ in CALIBRATED_BANDS)


@dataclass(frozen=True)
class ScoreGuide:
    """How to read a global score, in four plain bands (:data:`BAND_LABELS`).

    A **calibrated** model (``score_calibration`` in its config; the score is in (0, 1), clean photos
    about 0.9, heavily damaged images about 0.1) uses the fixed :data:`CALIBRATED_BANDS`. An
    uncalibrated model's raw score has no fixed scale; the fallback places it against the typical
    scores of clean photos, of photos with one SR-degraded region and of fully super-resolved
    images, for one model and stage: :meth:`from_model_card` reads them from the test-split table
    that ``training/train_default.py`` writes into the model card (``score_gt``, ``score_syn``,
    ``score_sr``); without such a table the defaults are the training targets (clean anchored at 1.0,
    each tier one ranking margin, 0.1, lower). Those bands split halfway between the typical values.
    """

    clean: float = 1.0
    local: float = 0.9
    degraded: float = 0.8
    source: str = "training targets"
    calibrated: bool = False

    def band(self, score: float) -> tuple[str, str]:
        """``(label, meaning)`` of ``score``."""
        if self.calibrated:
            return next((label, meaning) for lo, label, meaning in CALIBRATED_BANDS if score >= lo)
        if score >= (self.clean + self.local) / 2:
            where = "at or above" if score >= self.clean else "near"
            return BAND_LABELS[0], f"{where} the typical score of clean photos ({self.clean:.2f})"
        if score >= (self.local + self.degraded) / 2:
            return BAND_LABELS[1], f"near photos with one SR-degraded region (typical {self.local:.2f})"
        if score >= self.degraded:
            return BAND_LABELS[2], (f"closer to fully super-resolved, degraded images (typical {self.degraded:.2f}) "
                                    f"than to photos with one degraded region (typical {self.local:.2f})")
        return BAND_LABELS[3], f"below the typical score of fully super-resolved, degraded images ({self.degraded:.2f})"

    def legend(self) -> str:
        if self.calibrated:
            return ("Calibrated score in (0, 1), higher = better: clean photos score about 0.9, heavily damaged images "
                    "about 0.1. Bands: ≥ 0.8 looks clean · 0.5–0.8 some visible defects · 0.2–0.5 clearly degraded "
                    "· < 0.2 severely degraded.")
        return (f"Uncalibrated score (this model's config has no score_calibration), higher = better. Typical scores "
                f"({self.source}): clean photos {self.clean:.2f}, one SR-degraded region {self.local:.2f}, full SR "
                f"output {self.degraded:.2f}. Compare candidates of the same scene: differences mean more than "
                "absolute values across unrelated photos.")

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
    def for_model(cls, folder: Optional[Path], stage: int, calibrated: bool = False) -> "ScoreGuide":
        """The fixed calibrated bands when ``calibrated``; else from ``folder``'s (or its parent's)
        ``README.md`` model card, else the training targets."""
        if calibrated:
            return cls(source="score_calibration", calibrated=True)
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
    raw_score: Optional[float] = None  # the head's unbounded value (= score for an uncalibrated model)

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``."""
        return int(self.rgb.shape[1]), int(self.rgb.shape[0])

    def record(self, regions: Sequence[Region] = (), threshold: Optional[float] = None) -> dict[str, Any]:
        """A JSON-ready record: the ``finpercep score`` fields (:func:`diffusers_ext.request.score_record`)
        plus the band, model, timing and regions."""
        label, _ = self.guide.band(self.score)
        raw = self.score if self.raw_score is None else self.raw_score
        rec = score_record(self.name, self.score, raw, self.pdm, self.stage, self.num_stages, self.tiles,
                           threshold if threshold is not None else 0.5)
        rec.update(band=label, model=self.model, seconds=round(self.seconds, 3), regions=[r.as_dict() for r in regions])
        return rec


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
    h, w = rgb.shape[:2]
    request = ScoreRequest.parse(stage, tile_size)
    try:
        plan = resolve(m, request)
    except RequestError as e:  # stage out of range, bad tile settings
        raise ImageInputError(f"{label}: {e}") from None
    check_image_size(w, h, int(m.config.min_size), label)
    tiles = plan.tiling.count(h, w)
    what = f"scoring {label} ({w}x{h}, {tiles} tile{'s' if tiles > 1 else ''}, stage {plan.stage})"
    if progress is not None:
        progress(0.0, what)
    t0 = time.perf_counter()

    def on_tile(done: int, total: int) -> None:  # per tile, with the time left at the pace so far
        if progress is not None and total > 1:
            left = (time.perf_counter() - t0) / done * (total - done)
            progress(done / total, f"{what}: tile {done} of {total}, about {left:.0f} s left")

    out = pipe([rgb], stage=request.stage, tile_size=request.tile_size, output_overlays=False, on_tile=on_tile)
    pdm = np.asarray(out.pdms[0], dtype=np.float32)
    if guide is None:
        folder = m.config.get("_name_or_path") if hasattr(m.config, "get") else None
        guide = ScoreGuide.for_model(Path(folder) if folder else None, int(out.stage),
                                     calibrated=bool(getattr(m, "calibrated", False)))
    raw = getattr(out, "raw_scores", None)
    return Analysis(name=label, rgb=rgb, score=float(out.scores[0]), pdm=pdm, stage=int(out.stage),
                    num_stages=m.num_stages, model=model_label, seconds=time.perf_counter() - t0,
                    tiles=tiles, stats=summary(pdm), guide=guide,
                    raw_score=float(raw[0]) if raw is not None else None)


# ---------------------------------------------------------------------------------------- render


#: The viewer's default display: the whole map at this opacity, so even a faint map shows at first
#: sight (``"weighted"`` tints only degraded pixels and leaves mild maps barely visible).
DEFAULT_OVERLAY = {"alpha": 0.6, "cmap": "inferno", "mode": "uniform"}


def overlay_image(an: Analysis, alpha: float = DEFAULT_OVERLAY["alpha"], cmap: str = DEFAULT_OVERLAY["cmap"],
                  mode: str = DEFAULT_OVERLAY["mode"]) -> PIL.Image.Image:
    """The PDM as a heat map over the image (``mode`` ``"uniform"``: the whole map at ``alpha``, dark =
    clean, bright = degraded; ``"weighted"``: clean pixels stay untouched)."""
    return overlay(an.rgb, an.pdm, alpha=float(alpha), cmap=cmap, mode=mode)


def as_pil(an: Analysis) -> PIL.Image.Image:
    """The analysed image as an 8-bit RGB PIL image."""
    return Image.fromarray(np.rint(an.rgb * 255.0).astype(np.uint8), mode="RGB")


def border_weight(shape: tuple[int, int], band: Optional[int] = None) -> np.ndarray:
    """Per-pixel weight of the region ranking: 1 inside, falling (quadratically) to 0.05 at the image
    border over ``band`` px (default: an eighth of the shorter side, at least 8 px). A convolutional
    map is least reliable there (padding; the model never sees beyond the edge), and the maps of
    many images rise along their borders, so regions that hug the border must not outrank the defect."""
    h, w = int(shape[0]), int(shape[1])
    band = max(8, round(min(h, w) / 8)) if band is None else max(1, int(band))
    dy = np.minimum(np.arange(h), np.arange(h)[::-1])[:, None]
    dx = np.minimum(np.arange(w), np.arange(w)[::-1])[None, :]
    d = np.minimum(dy, dx).astype(np.float32)
    return np.clip((d + 0.5) / band, 0.0, 1.0) ** 2 * 0.95 + 0.05


def find_regions(pdm: np.ndarray, threshold: float = 0.5, top_k: int = 5) -> list[Region]:
    """The ``top_k`` most degraded regions, worst first. An all-zero map (stage 0) has none.

    Regions are 8-connected components of ``pdm >= threshold`` (at least 0.1 % of the map), else
    (no component) grid windows, as :func:`diffusers_ext.pdm.region_stats`. They are ranked by their
    degradation weighted with :func:`border_weight`, so a band of high map values along the image
    border (an artefact of the map, not a defect of the image) comes after the defects inside; the
    reported mean / max stay the map's own values. A region with most of its pixels in the border band
    of :func:`border_weight` ranks after every region inside."""
    p = np.asarray(pdm, dtype=np.float32)
    if p.size == 0 or float(np.max(p)) <= 0.0:
        return []
    top_k = max(0, int(top_k))
    wmap = border_weight(p.shape)
    labels, n = label_components(p >= float(threshold))
    floor = max(1, int(np.ceil(0.001 * p.size)))
    if n:
        idx = np.flatnonzero(labels)  # the pixels of some component
        lab = labels.ravel()[idx]
        vals = p.ravel()[idx].astype(np.float64)
        area = np.bincount(lab, minlength=n + 1)
        total = np.bincount(lab, weights=vals, minlength=n + 1)
        weighted = np.bincount(lab, weights=vals * wmap.ravel()[idx], minlength=n + 1)
        at_border = np.bincount(lab, weights=(wmap.ravel()[idx] < 1.0).astype(np.float64), minlength=n + 1)
        peak = np.zeros(n + 1, np.float64)
        np.maximum.at(peak, lab, vals)
        ys, xs = np.divmod(idx, p.shape[1])
        x0 = np.full(n + 1, p.shape[1], np.int64)
        y0 = np.full(n + 1, p.shape[0], np.int64)
        x1 = np.zeros(n + 1, np.int64)
        y1 = np.zeros(n + 1, np.int64)
        np.minimum.at(x0, lab, xs)
        np.minimum.at(y0, lab, ys)
        np.maximum.at(x1, lab, xs)
        np.maximum.at(y1, lab, ys)
        keep = [k for k in range(1, n + 1) if area[k] >= floor]
        # regions lying mostly in the border band come after all others; within each group the
        # border-weighted degradation decides
        keep.sort(key=lambda k: (at_border[k] >= 0.5 * area[k], -weighted[k], -peak[k], y0[k], x0[k]))
        regions = [Region(int(x0[k]), int(y0[k]), int(x1[k]) + 1, int(y1[k]) + 1, int(area[k]),
                          float(total[k] / area[k]), float(peak[k])) for k in keep[:top_k]]
        if regions:
            return regions
    out = []
    for r in worst_windows(p * wmap, top_k=top_k):  # placed by the weighted map, reported with the map's values
        cell = p[r.y0:r.y1, r.x0:r.x1]
        out.append(Region(r.x0, r.y0, r.x1, r.y1, r.area, float(cell.mean(dtype=np.float64)), float(cell.max()),
                          kind="window"))
    return out


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
    raw = f" (raw {an.raw_score:.3f})" if an.guide.calibrated and an.raw_score is not None else ""
    return (
        f"### Score {an.score:.3f} · {label}\n"
        f"{meaning[0].upper() + meaning[1:]}{raw}.\n\n"
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
