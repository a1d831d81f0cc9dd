"""Operators that imitate the local failure modes of real-world (GAN / diffusion) SR models.

Every operator is ``op(img, rng, strength) -> img`` on float32 ``HxWx3`` RGB in ``[0, 1]`` (checked by
:func:`.degradations.as_float_image`, which refuses uint8 input with the fix in the message) and
returns a new float32 array of the same shape, clipped to ``[0, 1]``; images must be at least
``MIN_SIZE`` (4) pixels high and wide. ``strength`` in ``[0, 1]`` scales the magnitude of the
effect; ``strength == 0`` is the identity and draws nothing from ``rng``.
The *style* of the effect (radius, method, orientation, grid phase...) comes from ``rng`` with the
same draws at every ``strength``, so one seed at increasing strengths gives the same artifact,
growing.

Registry: :data:`ARTIFACTS` (name -> operator); :func:`apply_random_artifact` draws one.

| name | imitates |
|---|---|
| ``oversharpen_halo`` | GAN/diffusion over-sharpening: bright/dark halos, ringing around edges |
| ``painterly_smooth`` | reward-hacked "painterly" look: texture flattened into patches, edges kept |
| ``hallucinated_texture`` | fake fine detail: high-frequency texture that is not in the scene |
| ``blocking_ringing`` | 8x8 block boundaries and mosquito noise of heavy DCT quantization |
| ``color_shift`` | local hue / saturation drift and tints of latent-diffusion SR |
| ``jaggies_aliasing`` | stair-stepped edges and pixelation from aliased resampling |
| ``blur_detail_loss`` | defocus / Gaussian loss of detail (regression-to-the-mean SR) |
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import cv2
import numpy as np

from .degradations import (as_float_image, bivariate_kernel, filter2d, gaussian_blur, jpeg_compress, resize,
                           sinc_kernel, to_gray)
from .masks import smooth_noise_field

__all__ = ["ARTIFACTS", "ArtifactOp", "MIN_SIZE", "apply_random_artifact", "oversharpen_halo", "painterly_smooth",
           "hallucinated_texture", "blocking_ringing", "color_shift", "jaggies_aliasing", "blur_detail_loss"]

ArtifactOp = Callable[[np.ndarray, np.random.Generator, float], np.ndarray]
ARTIFACTS: dict[str, ArtifactOp] = {}
MIN_SIZE = 4  # smallest height / width accepted (cv2's edge-preserving filter fails on 1-px images)


def _artifact(fn: ArtifactOp) -> ArtifactOp:
    """Register ``fn`` under its name, wrapped with the shared input checks, the ``strength == 0``
    identity and the final clip / dtype."""

    @functools.wraps(fn)
    def op(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
        img = as_float_image(img)
        if min(img.shape[:2]) < MIN_SIZE:
            raise ValueError(f"artifact operators need images of at least {MIN_SIZE}x{MIN_SIZE} px, "
                             f"got {img.shape[:2]}")
        strength = float(strength)
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        if strength == 0.0:
            return img.copy()
        return np.clip(fn(img, rng, strength), 0.0, 1.0).astype(np.float32, copy=False)

    ARTIFACTS[fn.__name__] = op
    return op


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------
def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def _lerp(a: np.ndarray, b: np.ndarray, t: "float | np.ndarray") -> np.ndarray:
    return a + (b - a) * t


def _edge_strength(img: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Smoothed luma gradient magnitude scaled to [0, 1] by its 99th percentile (``HxWx1``)."""
    y = to_gray(img)[..., 0]
    mag = np.hypot(cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=3))
    mag = gaussian_blur(mag, sigma)
    return np.clip(mag / max(float(np.percentile(mag, 99)), 1e-3), 0, 1)[..., None]


def _standardize(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / max(float(x.std()), 1e-6)


# --------------------------------------------------------------------------------------------------
# Operators
# --------------------------------------------------------------------------------------------------
@_artifact
def oversharpen_halo(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Unsharp masking of the luma with a large amount (``strength`` x 1-3): overshoot halos on
    both sides of edges. The low-pass is a Gaussian (radius 1-3 px) or, one time in three, a sinc
    (jinc) filter whose oscillating residual gives multi-line ringing."""
    amount = strength * rng.uniform(1.0, 3.0)
    if rng.random() < 1 / 3:
        low = filter2d(img, sinc_kernel(int(rng.choice([11, 15, 21])), rng.uniform(np.pi / 4, np.pi / 2)))
    else:
        low = gaussian_blur(img, rng.uniform(1.0, 3.0))
    detail = to_gray(img) - to_gray(low)  # luma only: halos without colour fringes
    return img + np.float32(amount) * detail


def _painterly_filter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    method = int(rng.integers(3))
    if method == 0:  # domain-transform recursive filter (Gastal & Oliveira 2011)
        u8 = cv2.edgePreservingFilter(_to_u8(img), flags=cv2.RECURS_FILTER,
                                      sigma_s=float(rng.uniform(20, 80)), sigma_r=float(rng.uniform(0.15, 0.45)))
        return u8.astype(np.float32) / 255.0
    if method == 1:  # L0 gradient minimization (Xu et al. 2011): piecewise-flat, sharp-edged
        # l0Smooth overwrites a float32 input in place (OpenCV 4.x/5.x): give it a copy
        return cv2.ximgproc.l0Smooth(img.copy(), lambda_=float(rng.uniform(0.005, 0.03)), kappa=2.0)
    out = img  # iterated bilateral filter
    sigma_color, sigma_space = float(rng.uniform(0.1, 0.25)), float(rng.uniform(2.0, 5.0))
    for _ in range(int(rng.integers(2, 5))):
        out = cv2.bilateralFilter(out, 0, sigma_color, sigma_space, borderType=cv2.BORDER_REFLECT_101)
    return out


@_artifact
def painterly_smooth(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Edge-preserving over-smoothing: fine texture flattened into smooth patches while edges stay
    sharp (the plastic, "painterly" look of reward-hacked SR). One of: domain-transform recursive
    filter, L0 gradient smoothing, iterated bilateral; blended with the input by ``strength``.
    (Oil-painting and Kuwahara filters were tried and left out: at SR scales they give a posterized
    mosaic, an art-filter look, rather than flattened texture.)"""
    return _lerp(img, _painterly_filter(img, rng), strength)


def _bandpass_noise(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-std band-pass noise (feature size ~1-3 px); half the time streaked along a random
    direction by an anisotropic Gaussian (hair / grass / fur-like strands)."""
    noise = rng.standard_normal((h, w), dtype=np.float32)
    if rng.random() < 0.5:
        long_sigma = rng.uniform(1.5, 4.0)
        kernel = bivariate_kernel(2 * int(np.ceil(3 * long_sigma)) + 1, long_sigma, rng.uniform(0.4, 0.8),
                                  rng.uniform(-np.pi, np.pi))
        noise = filter2d(noise, kernel)
    else:
        noise = gaussian_blur(noise, rng.uniform(0.5, 1.0))
    return _standardize(noise - gaussian_blur(noise, rng.uniform(1.5, 3.0)))


def _transplanted_detail(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit-std high-pass of the luma taken from elsewhere in the image (rolled by a large random
    offset, maybe flipped): real-looking texture in the wrong place."""
    h, w = img.shape[:2]
    y = to_gray(img)[..., 0]
    detail = y - gaussian_blur(y, rng.uniform(1.0, 2.5))
    shift = (int(rng.integers(h // 4, 3 * h // 4 + 1)), int(rng.integers(w // 4, 3 * w // 4 + 1)))
    detail = np.roll(detail, shift, axis=(0, 1))
    flips = tuple(ax for ax in (0, 1) if rng.random() < 0.5)
    detail = np.flip(detail, flips) if flips else detail
    if detail.std() < 1e-4:  # a flat image has no detail to transplant
        return _bandpass_noise(h, w, rng)
    return _standardize(detail)


@_artifact
def hallucinated_texture(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Fake fine detail: unit-std luma texture (band-pass / streaked noise, or the image's own
    high-pass transplanted from elsewhere) added with std ``strength`` x 0.03-0.08, weighted away from
    strong edges (where invented texture would read as noise on the contour rather than detail)."""
    h, w = img.shape[:2]
    texture = _bandpass_noise(h, w, rng) if rng.random() < 0.6 else _transplanted_detail(img, rng)
    weight = (1.0 - _edge_strength(img)) ** 2
    return img + np.float32(strength * rng.uniform(0.03, 0.08)) * weight * texture[..., None]


_JPEG_LUMA = np.array([[16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
                       [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
                       [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
                       [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], np.float32)
_JPEG_CHROMA = np.full((8, 8), 99, np.float32)
_JPEG_CHROMA[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]


def _dct_matrix(n: int = 8) -> np.ndarray:
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2 / n)
    d[0] /= np.sqrt(2)
    return d.astype(np.float32)


def _jpeg_table_scale(quality: float) -> float:
    """libjpeg's quantization-table scale for ``quality`` in (0, 100] (1 at 50, 0 at 100)."""
    return (5000.0 / quality if quality < 50 else 200.0 - 2.0 * quality) / 100.0


def _block_quantize(img: np.ndarray, quality: float) -> np.ndarray:
    """8x8 DCT of Y, Cr, Cb (sizes multiple of 8), coefficients rounded to the standard JPEG tables
    scaled as libjpeg does for ``quality`` (float, no chroma subsampling, no 8-bit rounding),
    inverse DCT. ``quality = 100`` is the identity."""
    h, w = img.shape[:2]
    d = _dct_matrix()
    ycc = cv2.cvtColor(img, cv2.COLOR_RGB2YCrCb) * 255.0 - 128.0  # JPEG's level shift
    blocks = ycc.reshape(h // 8, 8, w // 8, 8, 3).transpose(0, 2, 4, 1, 3)  # (by, bx, channel, 8, 8)
    table = np.stack([_JPEG_LUMA, _JPEG_CHROMA, _JPEG_CHROMA])[None, None] * np.float32(_jpeg_table_scale(quality))
    coeffs = d @ blocks @ d.T
    coeffs = np.where(table > 0, np.round(coeffs / np.maximum(table, 1e-12)) * table, coeffs)
    blocks = (d.T @ coeffs @ d).transpose(0, 3, 1, 4, 2).reshape(h, w, 3)
    return cv2.cvtColor(np.ascontiguousarray((blocks + 128.0) / 255.0, dtype=np.float32), cv2.COLOR_YCrCb2RGB)


@_artifact
def blocking_ringing(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Heavy block-DCT compression: 8x8 block edges plus ringing (mosquito noise) near edges, on a
    random grid phase, at JPEG quality ``100 - strength * (100 - q_min)`` with ``q_min`` in [5, 20].
    Either real JPEG (libjpeg via cv2, 4:2:0 chroma, 8-bit) or our float 8x8 DCT quantization of
    Y/Cr/Cb with the same scaled tables (no chroma subsampling; continuous in ``strength``)."""
    h, w = img.shape[:2]
    use_jpeg = rng.random() < 0.5
    quality = 100.0 - strength * (100.0 - rng.uniform(5.0, 20.0))
    dy, dx = (int(v) for v in rng.integers(0, 8, size=2))
    pad = ((dy, (-(h + dy)) % 8), (dx, (-(w + dx)) % 8), (0, 0))  # grid phase and whole blocks
    padded = np.pad(img, pad, mode="reflect" if min(h, w) > 8 else "edge")
    out = jpeg_compress(padded, max(1, int(round(quality)))) if use_jpeg else _block_quantize(padded, quality)
    return out[dy:dy + h, dx:dx + w]


_RGB2YUV = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], np.float32)
_YUV2RGB = np.linalg.inv(_RGB2YUV).astype(np.float32)


@_artifact
def color_shift(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Local colour drift: in BT.601 YCbCr the chroma vector is rotated (hue, up to +-10-35 degrees),
    scaled (saturation x ``1 +- 0.5``) and offset (a tint), each scaled by ``strength``, under a smooth
    random spatial weight (from patchy to nearly global). The luma is untouched before clipping."""
    h, w = img.shape[:2]
    hue = strength * np.deg2rad(rng.uniform(10, 35)) * rng.choice([-1, 1])
    gain = 1.0 + strength * rng.uniform(-0.5, 0.5)
    tint_angle = rng.uniform(-np.pi, np.pi)
    tint = strength * rng.uniform(0.01, 0.05) * np.array([np.cos(tint_angle), np.sin(tint_angle)], np.float32)
    field = smooth_noise_field(h, w, rng, sigma=min(h, w) * rng.uniform(0.1, 0.3))
    globalness = rng.uniform(0.0, 0.8)
    weight = globalness + (1 - globalness) / (1 + np.exp(-2.0 * field))

    yuv = img @ _RGB2YUV.T
    chroma = yuv[..., 1:]
    c, s = np.cos(hue), np.sin(hue)
    shifted = gain * chroma @ np.array([[c, -s], [s, c]], np.float32).T + tint
    yuv = np.concatenate([yuv[..., :1], _lerp(chroma, shifted, weight[..., None])], axis=-1)
    return (yuv @ _YUV2RGB.T).astype(np.float32)


@_artifact
def jaggies_aliasing(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Aliased resampling: nearest-neighbour down-scaling by ``1 + strength * (2..4 - 1)`` (no
    pre-filter: stair-stepped edges, broken thin lines), then back up with nearest (pixelated) or
    bilinear / bicubic (smooth but jagged edges)."""
    h, w = img.shape[:2]
    factor = 1.0 + strength * (rng.uniform(2.0, 4.0) - 1.0)
    up = str(rng.choice(["nearest", "bilinear", "bicubic"]))
    small = resize(img, (max(1, round(h / factor)), max(1, round(w / factor))), "nearest")
    return resize(small, (h, w), up)


def _disk_kernel(radius: float) -> np.ndarray:
    """Normalized anti-aliased disk (defocus PSF) of ``radius`` px."""
    size = 2 * int(np.ceil(radius)) + 1
    ax = np.arange(size, dtype=np.float32) - size // 2
    k = np.clip(radius + 0.5 - np.hypot(*np.meshgrid(ax, ax)), 0, 1)
    return k / k.sum()


@_artifact
def blur_detail_loss(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Loss of fine detail: a Gaussian blur (sigma ``strength`` x 1-3 px) or a defocus disk (radius
    ``strength`` x 1.5-4 px), with equal chance."""
    if rng.random() < 0.5:
        return gaussian_blur(img, strength * rng.uniform(1.0, 3.0))
    return filter2d(img, _disk_kernel(strength * rng.uniform(1.5, 4.0)))


def apply_random_artifact(img: np.ndarray, rng: np.random.Generator, kinds: Optional[Sequence[str]] = None,
                          strength: tuple[float, float] = (0.3, 1.0)) -> tuple[np.ndarray, str]:
    """Apply one artifact drawn uniformly from ``kinds`` (default: all of :data:`ARTIFACTS`) at a
    strength drawn uniformly from ``strength``; returns the image and the artifact's name."""
    names = sorted(ARTIFACTS) if kinds is None else list(kinds)
    unknown = [k for k in names if k not in ARTIFACTS]
    if not names or unknown:
        raise ValueError(f"unknown artifacts {unknown} (or none given); available: {sorted(ARTIFACTS)}")
    if not 0 <= strength[0] <= strength[1] <= 1:
        raise ValueError(f"strength must be (min, max) within [0, 1], got {strength}")
    name = names[int(rng.integers(len(names)))]
    return ARTIFACTS[name](img, rng, float(rng.uniform(*strength))), name


# The v3 operators register themselves in ARTIFACTS too: import them here so that the registry is
# complete whichever module is imported first.
from . import defects  # noqa: E402,F401
