"""Perceptual Degradation Map (PDM) rendering and statistics, without matplotlib.

A PDM is a float32 ``H x W`` map in [0, 1], higher = more degraded, at the input image's size.

Public API::

    COLORMAPS                                   # name -> read-only 256 x 3 uint8 lookup table
    get_colormap(name) -> np.ndarray
    apply_colormap(pdm, name="inferno") -> np.ndarray            # uint8 H x W x 3
    overlay(image, pdm, alpha=0.5, cmap="inferno", mode="weighted") -> PIL.Image.Image
    as_pdm(pdm, name="pdm") -> np.ndarray                        # validated float32 H x W in [0, 1]
    resize_pdm(pdm, (height, width)) -> np.ndarray               # bilinear
    pdm_to_png(pdm) -> PIL.Image.Image                           # 16-bit "I;16", exact to 1/65535
    pdm_from_png(image_or_path) -> np.ndarray
    label_components(mask) -> (labels, n)                        # 8-connected; scipy if present
    region_stats(pdm, threshold=0.5, min_area=None, top_k=5) -> list[Region]
    worst_windows(pdm, top_k=5, window=None) -> list[Region]
    draw_regions(image, regions) -> PIL.Image.Image
    summary(pdm, threshold=0.5) -> dict                          # mean, max, p95, frac_above, threshold

Images are anything :func:`diffusers_ext.image_io.to_float_rgb` accepts. Maps are numpy / torch
arrays ``H x W`` (leading axes of length 1 are dropped), float in [0, 1] (or uint8 / uint16, scaled),
checked by the same dtype and range rules as images.
"""
from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np
import PIL.Image
import torch
from PIL import Image, ImageDraw

from .image_io import ImageInputError, ImageLike, describe, load_image, to_float_rgb, to_unit_range

__all__ = [
    "COLORMAPS",
    "Region",
    "apply_colormap",
    "as_pdm",
    "draw_regions",
    "get_colormap",
    "label_components",
    "overlay",
    "pdm_from_png",
    "pdm_to_png",
    "region_stats",
    "resize_pdm",
    "summary",
    "worst_windows",
]

# ------------------------------------------------------------------------------------ colormaps

# Evenly spaced control points (17 = every 16th entry of matplotlib's 256-entry tables; linear
# interpolation between them stays within 7/255 of the originals).
_EVEN_POINTS = {
    "inferno": "000004 0b0724 210c4a 3d0965 57106e 71196e 8a226a a32c61 bc3754 "
               "d04545 e35933 f1711f f98c0a fcaa0f f9c932 f2e865 fcffa4",
    "magma": "000004 0a0822 1d1147 36106b 51127c 6a1c81 832681 9c2e7f b73779 "
             "cf4070 e55064 f4695c fb8761 fea571 fec287 fde0a1 fcfdbf",
    "viridis": "440154 48186a 472d7b 424086 3b528b 33638d 2c728e 26828e 21918c "
               "1f9f88 27ad81 3dbc74 5cc863 81d34d aadc32 d5e21a fde725",
    "turbo": "30123b 4040a2 466be3 4294ff 28bceb 18ddc2 32f298 6dfe62 a4fc3c "
             "cbed34 ecd13a fdae35 fb8122 ec530f d23105 ac1701 7a0403",
    "gray": "000000 ffffff",
}
# "rainbow" is the classic jet: piecewise linear, so its breakpoints reproduce it exactly.
_RAINBOW_POINTS = [
    (0.0, "000080"), (0.11, "0000ff"), (0.125, "0000ff"), (0.34, "00dbff"), (0.35, "00e5f7"),
    (0.375, "15ffe2"), (0.64, "efff08"), (0.65, "f7f600"), (0.66, "ffec00"), (0.89, "ff1300"),
    (0.91, "e80000"), (1.0, "800000"),
]
_ALIASES = {"jet": "rainbow", "grey": "gray"}


def _build_lut(points: Sequence[tuple[float, str]]) -> np.ndarray:
    """A read-only 256 x 3 uint8 table interpolated linearly between ``(position, "rrggbb")`` points."""
    pos = np.array([p for p, _ in points], dtype=np.float64)
    rgb = np.array([[int(h[i:i + 2], 16) for i in (0, 2, 4)] for _, h in points], dtype=np.float64)
    x = np.linspace(0.0, 1.0, 256)
    lut = np.stack([np.interp(x, pos, rgb[:, c]) for c in range(3)], axis=-1)
    lut = np.round(lut).astype(np.uint8)
    lut.flags.writeable = False
    return lut


def _even(hexes: str) -> list[tuple[float, str]]:
    colors = hexes.split()
    return [(i / (len(colors) - 1), c) for i, c in enumerate(colors)]


COLORMAPS: dict[str, np.ndarray] = {name: _build_lut(_even(h)) for name, h in _EVEN_POINTS.items()}
COLORMAPS["rainbow"] = _build_lut(_RAINBOW_POINTS)


def get_colormap(name: str) -> np.ndarray:
    """The 256 x 3 uint8 table of colormap ``name`` (case-insensitive; ``jet`` = ``rainbow``)."""
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in COLORMAPS:
        raise ValueError(f"unknown colormap {name!r}; choose one of: {', '.join(sorted(COLORMAPS))}")
    return COLORMAPS[key]


# ------------------------------------------------------------------------------------ map input


def as_pdm(pdm: Any, name: str = "pdm") -> np.ndarray:
    """``pdm`` (numpy or torch, ``H x W`` or with leading axes of length 1) as a float32 ``H x W``
    numpy map in [0, 1], by the image dtype / range rules (NaN refused, slight overshoot clipped)."""
    if isinstance(pdm, PIL.Image.Image):
        raise ImageInputError(f"{name} ({describe(pdm)}): a PIL image; read a PDM PNG with pdm_from_png")
    if not isinstance(pdm, (np.ndarray, torch.Tensor)):
        raise ImageInputError(f"{name} ({describe(pdm)}): expected a numpy array or torch tensor H x W")
    arr = pdm.detach() if isinstance(pdm, torch.Tensor) else pdm
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or 0 in tuple(arr.shape):
        raise ImageInputError(f"{name} ({describe(pdm)}): a map must be H x W (or 1 x H x W, 1 x 1 x H x W) "
                              "and non-empty; pass a single map, e.g. out.pdms[i]")
    unit = to_unit_range(arr, name)
    unit = unit.cpu().numpy() if isinstance(unit, torch.Tensor) else unit
    return np.ascontiguousarray(unit, dtype=np.float32)


def resize_pdm(pdm: Any, size: tuple[int, int]) -> np.ndarray:
    """``pdm`` resized bilinearly to ``size = (height, width)``, float32 in [0, 1]."""
    p = as_pdm(pdm)
    h, w = int(size[0]), int(size[1])
    if p.shape == (h, w):
        return p
    resized = Image.fromarray(p).resize((w, h), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


# ------------------------------------------------------------------------------------ rendering


def apply_colormap(pdm: Any, name: str = "inferno") -> np.ndarray:
    """``pdm`` coloured with colormap ``name``: uint8 ``H x W x 3`` (0 -> first entry, 1 -> last)."""
    lut = get_colormap(name)
    idx = np.rint(as_pdm(pdm) * 255.0).astype(np.uint8)
    return lut[idx]


def overlay(
    image: ImageLike,
    pdm: Any,
    alpha: float = 0.5,
    cmap: str = "inferno",
    mode: str = "weighted",
) -> PIL.Image.Image:
    """A heat map of ``pdm`` over ``image`` as an RGB PIL image at the image's size.

    Args:
        image: anything :func:`~diffusers_ext.image_io.to_float_rgb` accepts.
        pdm: the map; resized bilinearly to the image when the sizes differ.
        alpha: the heat map's weight in [0, 1].
        cmap: a name in :data:`COLORMAPS`.
        mode: ``"weighted"`` blends each pixel with weight ``alpha * pdm`` (clean regions keep the
            image exactly, degraded ones glow); ``"uniform"`` blends everywhere with ``alpha``.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"overlay: alpha must be in [0, 1], got {alpha}")
    if mode not in ("weighted", "uniform"):
        raise ValueError(f"overlay: mode must be 'weighted' or 'uniform', got {mode!r}")
    rgb = to_float_rgb(image, "image")
    p = resize_pdm(pdm, rgb.shape[:2])
    heat = apply_colormap(p, cmap).astype(np.float32) / 255.0
    weight = float(alpha) * p[..., None] if mode == "weighted" else np.float32(alpha)
    blended = rgb * (1.0 - weight) + heat * weight
    return Image.fromarray(np.rint(np.clip(blended, 0.0, 1.0) * 255.0).astype(np.uint8), mode="RGB")


# ------------------------------------------------------------------------------------- PNG I/O


def pdm_to_png(pdm: Any) -> PIL.Image.Image:
    """``pdm`` as a 16-bit grayscale (``I;16``) PIL image, value ``round(p * 65535)``; save it as PNG.
    :func:`pdm_from_png` reads it back to within 0.5 / 65535."""
    return Image.fromarray(np.rint(as_pdm(pdm) * 65535.0).astype(np.uint16))


def pdm_from_png(image: Union[str, Any, PIL.Image.Image]) -> np.ndarray:
    """A PDM image (a path or PIL image) as float32 ``H x W`` in [0, 1]: 16-bit (``I;16*``, or ``I``
    holding 0..65535) / 65535, 8-bit ``L`` / 255, ``F`` as is. Colour images are refused: an overlay
    or a colormapped rendering cannot be turned back into a map."""
    img = image if isinstance(image, PIL.Image.Image) else load_image(image)
    name = f"PDM image ({describe(img)})"
    if img.mode == "I":
        raw = np.asarray(img)
        if raw.min() < 0 or raw.max() > 65535:
            raise ImageInputError(f"{name}: 32-bit values outside 0..65535; a PDM PNG is 16-bit (pdm_to_png)")
        return as_pdm(raw.astype(np.uint16), name)
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "L", "F"):
        return as_pdm(np.asarray(img), name)
    raise ImageInputError(f"{name}: mode {img.mode} is not a grayscale map; a PDM PNG is 16-bit grayscale "
                          "written by pdm_to_png (coloured overlays cannot be inverted)")


# ------------------------------------------------------------------------------------- regions


@dataclass(frozen=True)
class Region:
    """A degraded region of a PDM.

    ``(x0, y0, x1, y1)`` is a half-open pixel box (``x1``/``y1`` exclusive, the order of
    ``PIL.Image.crop``); ``area`` counts the region's pixels (a component's own pixels, not its
    box); ``mean`` / ``max`` are the map's values over those pixels; ``kind`` is ``"component"``
    (connected pixels at or above the threshold) or ``"window"`` (a grid window, the fallback).
    """

    x0: int
    y0: int
    x1: int
    y1: int
    area: int
    mean: float
    max: float
    kind: str = "component"

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)

    @property
    def severity(self) -> float:
        """Total degradation, ``mean * area``: the ordering key of :func:`region_stats`."""
        return self.mean * self.area

    def as_dict(self) -> dict:
        return {**asdict(self), "severity": self.severity}


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of True in ``mask``: (row, start, stop) arrays in raster order."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)
    rows, starts = np.nonzero(d == 1)
    _, stops = np.nonzero(d == -1)
    return rows, starts, stops


def _run_edges(rows: np.ndarray, starts: np.ndarray, stops: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a, b) of runs in consecutive rows that touch with 8-connectivity."""
    stride = width + 2
    start_key, stop_key = rows * stride + starts, rows * stride + stops
    above = rows - 1  # a run in row y touches runs in row y-1 whose [start, stop] meets [s-1, e]
    lo = np.searchsorted(stop_key, above * stride + starts, side="left")
    hi = np.searchsorted(start_key, above * stride + stops, side="right")
    count = np.clip(hi - lo, 0, None)
    count[rows == 0] = 0
    b = np.repeat(np.arange(len(rows)), count)
    a = np.repeat(lo, count) + (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
    return a, b


def _union_roots(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each of ``n`` nodes, the smallest node index of its connected component (edges a-b):
    min-label propagation with pointer jumping, vectorized."""
    labels = np.arange(n)
    while True:
        m = np.minimum(labels[a], labels[b])
        new = labels.copy()
        np.minimum.at(new, a, m)
        np.minimum.at(new, b, m)
        new = new[new]
        if np.array_equal(new, labels):
            return labels
        labels = new


def _label_numpy(mask: np.ndarray) -> tuple[np.ndarray, int]:
    rows, starts, stops = _runs(mask)
    labels = np.zeros(mask.shape, dtype=np.int32)
    if len(rows) == 0:
        return labels, 0
    a, b = _run_edges(rows, starts, stops, mask.shape[1])
    roots = _union_roots(len(rows), a, b)
    uniq, run_label = np.unique(roots, return_inverse=True)  # raster order of first pixel, like scipy
    lengths = stops - starts
    run_of_pixel = np.repeat(np.arange(len(rows)), lengths)
    cols = np.repeat(starts, lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    labels[rows[run_of_pixel], cols] = run_label[run_of_pixel] + 1
    return labels, len(uniq)


def label_components(mask: np.ndarray, use_scipy: Optional[bool] = None) -> tuple[np.ndarray, int]:
    """8-connected components of a boolean ``H x W`` mask: (int32 labels, 0 = background, 1..n in
    raster order of each component's first pixel; n). Uses ``scipy.ndimage.label`` when scipy is
    importable (``use_scipy=None``), else a vectorized numpy run-length union-find; both agree."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"label_components: mask must be H x W, got shape {mask.shape}")
    if use_scipy is None:
        use_scipy = importlib.util.find_spec("scipy") is not None
    if use_scipy:
        from scipy import ndimage

        labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        return labels.astype(np.int32, copy=False), int(n)
    return _label_numpy(mask)


def _component_regions(pdm: np.ndarray, labels: np.ndarray, n: int) -> list[Region]:
    """Box, area, mean and max of components 1..n, via one sort and ``reduceat``."""
    flat = labels.ravel()
    idx = np.flatnonzero(flat)
    if n == 0 or idx.size == 0:
        return []
    idx = idx[np.argsort(flat[idx], kind="stable")]
    lab = flat[idx]
    first = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    ys, xs = np.divmod(idx, labels.shape[1])
    vals = pdm.ravel()[idx].astype(np.float64)
    area = np.diff(np.r_[first, idx.size])
    stats = zip(np.minimum.reduceat(xs, first), np.minimum.reduceat(ys, first), np.maximum.reduceat(xs, first),
                np.maximum.reduceat(ys, first), area, np.add.reduceat(vals, first), np.maximum.reduceat(vals, first))
    return [Region(int(x0), int(y0), int(x1) + 1, int(y1) + 1, int(a), float(s / a), float(m))
            for x0, y0, x1, y1, a, s, m in stats]


def worst_windows(pdm: Any, top_k: int = 5, window: Optional[int] = None) -> list[Region]:
    """The ``top_k`` grid windows with the highest mean (ties: higher max, then raster order).

    The grid is non-overlapping ``window x window`` px cells (default: an eighth of the shorter
    side, at least 1 px); cells at the right / bottom edge may be smaller. ``kind = "window"``."""
    p = as_pdm(pdm)
    h, w = p.shape
    size = max(1, int(window) if window else round(min(h, w) / 8))
    ys, xs = np.arange(0, h, size), np.arange(0, w, size)
    sums = np.add.reduceat(np.add.reduceat(p.astype(np.float64), ys, axis=0), xs, axis=1)
    maxs = np.maximum.reduceat(np.maximum.reduceat(p, ys, axis=0), xs, axis=1)
    hs, ws = np.diff(np.r_[ys, h]), np.diff(np.r_[xs, w])
    areas = hs[:, None] * ws[None, :]
    means = sums / areas
    order = np.lexsort((np.arange(means.size), -maxs.ravel(), -means.ravel()))[: max(0, int(top_k))]
    out = []
    for k in order:
        i, j = divmod(int(k), len(xs))
        out.append(Region(int(xs[j]), int(ys[i]), int(xs[j] + ws[j]), int(ys[i] + hs[i]), int(areas[i, j]),
                          float(means[i, j]), float(maxs[i, j]), kind="window"))
    return out


def region_stats(
    pdm: Any,
    threshold: float = 0.5,
    min_area: Optional[int] = None,
    top_k: int = 5,
    fallback: bool = True,
) -> list[Region]:
    """The most degraded regions of ``pdm``, most severe first.

    Regions are 8-connected components of ``pdm >= threshold`` with at least ``min_area`` pixels
    (default: 0.1 % of the map, at least 1), sorted by severity ``mean * area`` (ties: higher max,
    then raster order), the first ``top_k`` kept. When no component qualifies and ``fallback`` is
    true, the ``top_k`` :func:`worst_windows` are returned instead (``kind = "window"``), so a
    caller always has somewhere to look.
    """
    p = as_pdm(pdm)
    floor = max(1, int(np.ceil(0.001 * p.size))) if min_area is None else int(min_area)
    labels, n = label_components(p >= float(threshold))
    regions = [r for r in _component_regions(p, labels, n) if r.area >= floor]
    regions.sort(key=lambda r: (-r.severity, -r.max, r.y0, r.x0))
    if not regions and fallback:
        return worst_windows(p, top_k)
    return regions[: max(0, int(top_k))]


_KIND_COLORS = {"component": (255, 59, 48), "window": (255, 214, 10)}


def draw_regions(
    image: ImageLike,
    regions: Sequence[Region],
    color: Optional[tuple[int, int, int]] = None,
    width: Optional[int] = None,
    numbered: bool = True,
) -> PIL.Image.Image:
    """``image`` (RGB copy) with each region's box drawn and, when ``numbered``, its rank (1 = worst)
    at the box's top-left. Colour: ``color`` or red for components, yellow for windows; line
    width: ``width`` or about 1/200 of the shorter side (at least 1 px)."""
    rgb = to_float_rgb(image, "image")
    canvas = Image.fromarray(np.rint(rgb * 255.0).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(canvas)
    line = width or max(1, round(min(canvas.size) / 200))
    for rank, r in enumerate(regions, start=1):
        c = color or _KIND_COLORS.get(r.kind, _KIND_COLORS["component"])
        draw.rectangle((r.x0, r.y0, r.x1 - 1, r.y1 - 1), outline=c, width=line)
        if numbered:
            draw.text((r.x0 + line + 1, r.y0 + line), str(rank), fill=c)
    return canvas


# ------------------------------------------------------------------------------------- summary


def summary(pdm: Any, threshold: float = 0.5) -> dict:
    """Plain-float statistics of ``pdm``: ``mean``, ``max``, ``p95`` (95th percentile, linear),
    ``frac_above`` (fraction of pixels ``>= threshold``) and the ``threshold`` used."""
    p = as_pdm(pdm)
    return {
        "mean": float(p.mean(dtype=np.float64)),
        "max": float(p.max()),
        "p95": float(np.percentile(p, 95)),
        "frac_above": float((p >= threshold).mean()),
        "threshold": float(threshold),
    }
