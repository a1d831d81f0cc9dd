"""Region masks ``M`` for region swapping ``I_syn = M * I_sr + (1 - M) * I_gt`` (PAPER.md section 2).

Masks are float32 ``HxW`` in ``[0, 1]``: binary regions whose edge is feathered by a small Gaussian
(sigma 1-2 px, less on tiny images), so the swapped region has no hard seam, and never empty. Every
generator takes an optional ``target``, the approximate fraction of the image to cover (drawn from
``DEFAULT_TARGET`` when ``None``); :func:`sample_mask` picks a kind and retries until the coverage
(the mean of the mask) falls in the requested range.

Kinds: ``blobs`` (thresholded smooth noise), ``strokes`` (thick brush strokes), ``boxes`` (possibly
rotated rectangles), ``superpixel`` (SLIC segments: the boundary follows image edges), and ``sam``
(Segment Anything segments, when :class:`SamMaskGenerator` can be built).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import cv2
import numpy as np

from .degradations import as_float_image, gaussian_blur

__all__ = ["DEFAULT_TARGET", "MASK_KINDS", "smooth_noise_field", "feather", "random_blobs", "random_strokes",
           "random_boxes", "superpixel_mask", "sample_mask", "SamMaskGenerator"]

DEFAULT_TARGET = (0.1, 0.4)
MASK_KINDS = ("blobs", "strokes", "boxes", "superpixel")
_MAX_SHAPES = 12  # strokes / boxes drawn at most per mask


# --------------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------------
def smooth_noise_field(h: int, w: int, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Gaussian white noise low-passed with a Gaussian of ``sigma`` px, standardized to zero mean
    and unit std: a float32 ``HxW`` random field whose features are about ``2 * sigma`` px wide."""
    field = gaussian_blur(rng.standard_normal((h, w), dtype=np.float32), max(float(sigma), 0.1))
    return ((field - field.mean()) / max(float(field.std()), 1e-8)).astype(np.float32)


def feather(binary: np.ndarray, sigma: float) -> np.ndarray:
    """Soften the edge of a binary mask with a Gaussian of ``sigma`` px; float32 in [0, 1]."""
    return np.clip(gaussian_blur(binary.astype(np.float32), sigma), 0.0, 1.0)


def _drop_small_components(binary: np.ndarray, min_area: int) -> np.ndarray:
    """``binary`` without its 8-connected components smaller than ``min_area`` pixels."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False  # background
    return keep[labels]


def _clean(binary: np.ndarray, sigma: float) -> np.ndarray:
    """Remove what feathering with ``sigma`` would only turn into faint grey smudges: spikes,
    slivers and cracks thinner than about ``2 sigma`` (opening / closing with a disk of that
    diameter), then specks and pin-holes smaller than ``(2.5 sigma)^2``. Kept as is if that empties
    the mask."""
    size = 2 * int(round(sigma)) + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    u8 = binary.astype(np.uint8)
    cleaned = cv2.morphologyEx(cv2.morphologyEx(u8, cv2.MORPH_OPEN, kernel), cv2.MORPH_CLOSE, kernel) > 0
    min_area = int(np.ceil((2.5 * sigma) ** 2))
    cleaned = ~_drop_small_components(~_drop_small_components(cleaned, min_area), min_area)
    return cleaned if cleaned.any() else binary.astype(bool)


def _finish(binary: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Clean, then feather with sigma in [1, 2] px (scaled down on images smaller than 64 px)."""
    h, w = binary.shape
    sigma = float(rng.uniform(1.0, 2.0)) * min(1.0, min(h, w) / 64)
    return feather(_clean(binary, sigma), sigma)


def _target(rng: np.random.Generator, target: Optional[float]) -> float:
    t = float(rng.uniform(*DEFAULT_TARGET)) if target is None else float(target)
    if not 0 < t <= 1:
        raise ValueError(f"target coverage must be in (0, 1], got {t}")
    return t


def _check_size(h: int, w: int) -> None:
    if int(h) < 1 or int(w) < 1:
        raise ValueError(f"mask size must be at least 1x1, got {h}x{w}")


def _accumulate(region: Callable[[int], np.ndarray], shape: tuple[int, int], order: Sequence[int],
                target: float) -> np.ndarray:
    """Union of the boolean ``HxW`` regions ``region(i)``, ``i`` in ``order``, until it covers ``target``."""
    union = np.zeros(shape, dtype=bool)
    for i in order:
        union |= region(int(i))
        if union.mean() >= target:
            break
    return union


# --------------------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------------------
def random_blobs(h: int, w: int, rng: np.random.Generator, target: Optional[float] = None) -> np.ndarray:
    """Organic blobs: a smooth noise field (feature size 4-12 % of the short side) thresholded at
    its ``1 - target`` quantile, so the coverage is ``target`` up to feathering."""
    _check_size(h, w)
    t = _target(rng, target)
    field = smooth_noise_field(h, w, rng, sigma=min(h, w) * float(rng.uniform(0.04, 0.12)))
    binary = field >= np.quantile(field, 1.0 - t)
    return _finish(binary, rng)


def random_strokes(h: int, w: int, rng: np.random.Generator, target: Optional[float] = None) -> np.ndarray:
    """Thick brush strokes: random-walk polylines (3-8 vertices, smoothly turning), 3-10 % of the
    short side thick with round joints, added until the coverage reaches ``target``."""
    _check_size(h, w)
    t = _target(rng, target)
    canvas = np.zeros((h, w), dtype=np.uint8)
    short = min(h, w)
    for _ in range(_MAX_SHAPES):
        thickness = max(2, int(round(short * rng.uniform(0.03, 0.10))))
        point = rng.uniform((0, 0), (w, h))
        angle = rng.uniform(-np.pi, np.pi)
        points = [point]
        for _ in range(int(rng.integers(2, 8))):
            angle += rng.normal(0.0, 0.8)
            point = np.clip(point + short * rng.uniform(0.1, 0.3) * np.array([np.cos(angle), np.sin(angle)]),
                            0, (w - 1, h - 1))
            points.append(point)
        pts = np.round(np.array(points)).astype(np.int32)
        cv2.polylines(canvas, [pts.reshape(-1, 1, 2)], isClosed=False, color=1, thickness=thickness)
        for x, y in pts:
            cv2.circle(canvas, (int(x), int(y)), thickness // 2, color=1, thickness=-1)
        if canvas.mean() >= t:
            break
    return _finish(canvas.astype(bool), rng)


def random_boxes(h: int, w: int, rng: np.random.Generator, target: Optional[float] = None) -> np.ndarray:
    """Rectangles (half of them rotated by up to 45 degrees) with area about 25-100 % of ``target``
    and aspect ratio in [1/2, 2], added until the coverage reaches ``target``."""
    _check_size(h, w)
    t = _target(rng, target)
    canvas = np.zeros((h, w), dtype=np.uint8)
    for _ in range(_MAX_SHAPES):
        side = np.sqrt(t * h * w) * rng.uniform(0.5, 1.0)
        aspect = np.exp(rng.uniform(-0.7, 0.7))
        size = (max(2.0, side * np.sqrt(aspect)), max(2.0, side / np.sqrt(aspect)))  # (width, height)
        center = tuple(rng.uniform((0, 0), (w, h)))
        angle = float(rng.uniform(-45, 45)) if rng.random() < 0.5 else 0.0
        corners = cv2.boxPoints((center, size, angle))
        cv2.fillPoly(canvas, [np.round(corners).astype(np.int32)], color=1)
        if canvas.mean() >= t:
            break
    if not canvas.any():  # a box that fell outside a tiny image
        canvas[int(rng.integers(h)), int(rng.integers(w))] = 1
    return _finish(canvas.astype(bool), rng)


def superpixel_mask(img: np.ndarray, rng: np.random.Generator, n_segments: Optional[int] = None,
                    target: Optional[float] = None, compactness: float = 10.0) -> np.ndarray:
    """A random subset of SLIC superpixels of ``img`` (scikit-image, in Lab space), so that the
    mask boundary follows image edges. ``n_segments`` defaults to a draw in [24, 96]. Segments are
    added until the coverage reaches ``target``: with equal chance in random order (scattered) or by
    distance from a random seed segment (one connected-looking region)."""
    from skimage.segmentation import slic

    img = as_float_image(img)
    t = _target(rng, target)
    n = int(rng.integers(24, 97)) if n_segments is None else int(n_segments)
    if n < 1:
        raise ValueError(f"n_segments must be positive, got {n}")
    labels = slic(img, n_segments=n, compactness=compactness, start_label=0, channel_axis=-1)
    count = int(labels.max()) + 1
    ys, xs = np.indices(labels.shape)
    area = np.maximum(np.bincount(labels.ravel(), minlength=count), 1)
    centroids = np.stack([np.bincount(labels.ravel(), ys.ravel(), count) / area,
                          np.bincount(labels.ravel(), xs.ravel(), count) / area], axis=1)
    if rng.random() < 0.5:
        order = rng.permutation(count)
    else:
        distance = np.linalg.norm(centroids - centroids[int(rng.integers(count))], axis=1)
        order = np.argsort(distance * rng.uniform(0.7, 1.3, count))
    return _finish(_accumulate(lambda i: labels == i, labels.shape, order, t), rng)


# --------------------------------------------------------------------------------------------------
# Segment Anything (optional)
# --------------------------------------------------------------------------------------------------
SAM_INSTALL = "pip install git+https://github.com/facebookresearch/segment-anything.git"
SAM_CHECKPOINTS = "https://github.com/facebookresearch/segment-anything#model-checkpoints"


class SamMaskGenerator:
    """Semantic masks from Segment Anything's ``SamAutomaticMaskGenerator``: a random subset of the
    segments it finds, until ``target`` coverage. Needs the ``segment_anything`` package and a
    checkpoint file (e.g. ``sam_vit_h_4b8939.pth`` for ``model_type="vit_h"``); without them the
    constructor raises ``ImportError`` / ``FileNotFoundError`` saying what to install or download.
    ``generator_kwargs`` go to ``SamAutomaticMaskGenerator`` (e.g. ``points_per_side=16``).
    """

    def __init__(self, checkpoint: Union[str, Path], model_type: str = "vit_h", device: str = "cpu",
                 **generator_kwargs: Any) -> None:
        try:
            from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
        except ImportError as err:
            raise ImportError(f"SamMaskGenerator needs the segment_anything package: {SAM_INSTALL} "
                              f"(then download a checkpoint from {SAM_CHECKPOINTS}). Without it, use "
                              "sample_mask() with the built-in kinds.") from err
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"SAM checkpoint {str(path)!r} not found: download one from {SAM_CHECKPOINTS} "
                                    f"(e.g. sam_vit_h_4b8939.pth for model_type='vit_h') and pass its path")
        if model_type not in sam_model_registry:
            raise ValueError(f"unknown SAM model_type {model_type!r}; choose from {sorted(sam_model_registry)}")
        model = sam_model_registry[model_type](checkpoint=str(path)).to(device)
        self._generator = SamAutomaticMaskGenerator(model, **generator_kwargs)

    def segments(self, img: np.ndarray) -> list[np.ndarray]:
        """All segments SAM finds in ``img``, as boolean ``HxW`` arrays."""
        u8 = np.round(as_float_image(img) * 255).astype(np.uint8)
        return [np.asarray(r["segmentation"], dtype=bool) for r in self._generator.generate(u8)]

    def __call__(self, img: np.ndarray, rng: np.random.Generator, target: Optional[float] = None) -> np.ndarray:
        t = _target(rng, target)
        segments = [s for s in self.segments(img) if s.any()]
        if not segments:
            raise RuntimeError("SAM found no segment in this image; use another mask kind")
        return _finish(_accumulate(segments.__getitem__, segments[0].shape, rng.permutation(len(segments)), t), rng)


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------
MaskFn = Callable[[np.ndarray, np.random.Generator, float], np.ndarray]

_GENERATORS: dict[str, MaskFn] = {
    "blobs": lambda img, rng, t: random_blobs(img.shape[0], img.shape[1], rng, t),
    "strokes": lambda img, rng, t: random_strokes(img.shape[0], img.shape[1], rng, t),
    "boxes": lambda img, rng, t: random_boxes(img.shape[0], img.shape[1], rng, t),
    "superpixel": lambda img, rng, t: superpixel_mask(img, rng, target=t),
}


def sample_mask(img: np.ndarray, rng: np.random.Generator, kinds: Optional[Sequence[str]] = None,
                coverage: tuple[float, float] = (0.05, 0.5), max_tries: int = 10,
                sam: Optional[SamMaskGenerator] = None) -> tuple[np.ndarray, str]:
    """A mask for ``img`` (float32 ``HxWx3``) whose coverage lies in ``coverage``, and its kind.

    The kind is drawn uniformly from ``kinds`` (default: all of :data:`MASK_KINDS`, plus ``"sam"``
    when ``sam`` is given); the generator is retried with fresh targets (drawn inside ``coverage``)
    up to ``max_tries`` times. If it never lands in range (e.g. superpixels of a tiny image), the
    mask falls back to ``blobs``, whose coverage is exact up to feathering, and the returned kind
    says so. Raises ``RuntimeError`` only if that fails too.
    """
    img = as_float_image(img)
    lo, hi = coverage
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"coverage must be (min, max) with 0 < min <= max <= 1, got {coverage}")
    generators = dict(_GENERATORS, **({"sam": sam} if sam is not None else {}))
    kinds = tuple(kinds) if kinds is not None else tuple(generators)
    unknown = [k for k in kinds if k not in generators]
    if not kinds or unknown:
        raise ValueError(f"unknown mask kinds {unknown} (or none given); available: {tuple(generators)}"
                         + ("" if sam is not None else "; 'sam' needs sam=SamMaskGenerator(...)"))
    kind = kinds[int(rng.integers(len(kinds)))]
    margin = 0.1 * (hi - lo)  # aim inside the range: feathering moves the coverage a little
    for attempt in range(max_tries + 1):
        if attempt == max_tries:
            kind = "blobs"
        mask = generators[kind](img, rng, float(rng.uniform(lo + margin, hi - margin)))
        if lo <= float(mask.mean()) <= hi:
            return mask.astype(np.float32), kind
    raise RuntimeError(f"could not draw a mask with coverage in {coverage} for an image of shape {img.shape}")
