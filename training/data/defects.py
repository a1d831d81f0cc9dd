"""More defect operators (reward model v3): the failures an SR network, a GAN, a diffusion model or
an RL policy can add that the first seven operators of :mod:`.artifacts` do not cover.

Same contract as :mod:`.artifacts` (registered in the same :data:`~.artifacts.ARTIFACTS` table):
``op(img, rng, strength)`` on float32 ``HxWx3`` RGB in ``[0, 1]``; ``strength`` in ``[0, 1]`` scales
the magnitude (0 = identity); the style (orientation, period, ...) comes from ``rng`` with the same
draws at every strength, so one seed at growing strengths gives the same defect, growing.

| name | family group | imitates |
|---|---|---|
| ``color_noise`` | adds | per-channel (chroma) noise: unlike sensor grain, coloured, pixel-independent |
| ``luma_grain`` | adds | synthetic luminance grain of a diffusion / GAN decoder |
| ``impulse_noise`` | adds | salt-and-pepper / dead and hot pixels, sparkles |
| ``periodic_pattern`` | adds | sinusoidal stripes and grids (aliasing, moire, a policy's stripe hack) |
| ``checkerboard`` | adds | transposed-convolution checkerboard of period 2-4 px |
| ``motion_smear`` | removes | directional smear (motion blur, latent smearing) |
| ``waxy_denoise`` | removes | median / non-local-means over-denoising: waxy skin, lost grain |
| ``downup_resample`` | removes | soft down-up resampling: detail lost, no jaggies |
| ``posterize_banding`` | removes | quantized tones: banding and contours in gradients |
| ``tone_shift`` | colour | local gamma / contrast / brightness drift |
| ``chroma_bleed`` | colour | chroma blurred and offset against luma (4:2:0 bleeding, colour fringes) |
| ``tiling_seams`` | structure | tiled inference seams: per-tile offsets and misalignment |
| ``local_warp`` | structure | hallucinated geometry: smooth local displacement of edges |
"""
from __future__ import annotations

import cv2
import numpy as np

from .artifacts import _artifact, _edge_strength, _lerp, _standardize, _to_u8
from .degradations import filter2d, gaussian_blur, resize, to_gray
from .masks import smooth_noise_field

__all__ = ["color_noise", "luma_grain", "impulse_noise", "periodic_pattern", "checkerboard", "motion_smear",
           "waxy_denoise", "downup_resample", "posterize_banding", "tone_shift", "chroma_bleed", "tiling_seams",
           "local_warp"]


def _f32(x) -> np.float32:
    return np.float32(x)


# ------------------------------------------------------------------ adds high frequencies
@_artifact
def color_noise(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Independent Gaussian noise per channel (std ``strength`` x 0.02-0.10), optionally slightly
    correlated in space (sigma 0-0.7 px): coloured speckle that sensor grain does not have."""
    h, w = img.shape[:2]
    sigma = strength * rng.uniform(0.02, 0.10)
    blur = rng.uniform(0.0, 0.7)
    noise = rng.standard_normal((h, w, 3), dtype=np.float32)
    if blur > 0.3:
        noise = np.stack([_standardize(gaussian_blur(noise[..., c], blur)) for c in range(3)], -1)
    return img + _f32(sigma) * noise


@_artifact
def luma_grain(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Luminance grain (std ``strength`` x 0.015-0.07) of grain size 0.4-1.5 px, the same on all
    channels; stronger in the mid-tones, as decoders produce it."""
    h, w = img.shape[:2]
    noise = rng.standard_normal((h, w), dtype=np.float32)
    noise = _standardize(gaussian_blur(noise, rng.uniform(0.4, 1.5)))
    y = to_gray(img)
    midtone = 0.4 + 2.4 * y * (1 - y)
    return img + _f32(strength * rng.uniform(0.015, 0.07)) * midtone * noise[..., None]


@_artifact
def impulse_noise(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """A fraction ``strength`` x 0.3-4 % of pixels set to black, white or a random colour (1-2 px
    clusters): salt-and-pepper, dead / hot pixels, sparkle artifacts."""
    h, w = img.shape[:2]
    u = rng.random((h, w))
    density = strength * rng.uniform(0.003, 0.04)
    hit = u < density
    if rng.random() < 0.4:  # 2x2 clusters
        hit = cv2.dilate(hit.astype(np.uint8), np.ones((2, 2), np.uint8)).astype(bool) & (rng.random((h, w)) < 0.7)
    style = int(rng.integers(3))
    if style == 0:
        values = (rng.random((h, w, 1)) < 0.5).astype(np.float32).repeat(3, 2)
    elif style == 1:
        values = rng.random((h, w, 3)).astype(np.float32)
    else:
        values = np.ones((h, w, 3), np.float32) * (rng.random() < 0.5)
    out = img.copy()
    out[hit] = values[hit]
    return out


def _grating(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-amplitude sinusoid of period 2-10 px at a random angle; one time in three a 2-D grid."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(2.0, 10.0)
    theta = rng.choice([0.0, np.pi / 2, rng.uniform(0, np.pi)])
    phase = rng.uniform(0, 2 * np.pi)
    g = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + phase)
    if rng.random() < 1 / 3:
        g = 0.5 * (g + np.sin(2 * np.pi * (-xx * np.sin(theta) + yy * np.cos(theta)) / period + phase))
    return g.astype(np.float32)


@_artifact
def periodic_pattern(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Sinusoidal stripes or a grid (period 2-10 px, amplitude ``strength`` x 0.02-0.12) on the luma
    or, one time in four, in colour: aliasing, moire, the stripes an RL policy learns."""
    h, w = img.shape[:2]
    g = _grating(h, w, rng)[..., None] * _f32(strength * rng.uniform(0.02, 0.12))
    if rng.random() < 0.25:
        tint = rng.standard_normal(3).astype(np.float32)
        return img + g * (tint / max(float(np.abs(tint).max()), 1e-3))
    return img + g


@_artifact
def checkerboard(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Transposed-convolution checkerboard: a fixed 2x2 .. 4x4 tile pattern (zero mean), modulated
    by the local brightness or edges, amplitude ``strength`` x 0.02-0.10."""
    h, w = img.shape[:2]
    period = int(rng.choice([2, 2, 3, 4]))
    tile = rng.standard_normal((period, period)).astype(np.float32)
    tile = (tile - tile.mean()) / max(float(np.abs(tile - tile.mean()).max()), 1e-3)
    pattern = np.tile(tile, (h // period + 1, w // period + 1))[:h, :w]
    if rng.random() < 0.5:
        mod = 0.3 + 0.7 * _edge_strength(img)[..., 0]
    else:
        mod = 0.3 + 0.7 * to_gray(img)[..., 0]
    return img + _f32(strength * rng.uniform(0.02, 0.10)) * (pattern * mod)[..., None]


# ------------------------------------------------------------------ removes high frequencies
def _line_kernel(length: float, angle: float) -> np.ndarray:
    size = 2 * int(np.ceil(length / 2)) + 1
    k = np.zeros((size, size), np.float32)
    c = size // 2
    for t in np.linspace(-length / 2, length / 2, max(2, int(length * 3))):
        x, y = c + t * np.cos(angle), c + t * np.sin(angle)
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        for dx in (0, 1):
            for dy in (0, 1):
                if 0 <= x0 + dx < size and 0 <= y0 + dy < size:
                    k[y0 + dy, x0 + dx] += (1 - abs(x - x0 - dx)) * (1 - abs(y - y0 - dy))
    return k / k.sum()


@_artifact
def motion_smear(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """A straight motion-blur kernel of length ``1 + strength`` x 3-14 px at a random angle."""
    length = 1.0 + strength * rng.uniform(3.0, 14.0)
    return filter2d(img, _line_kernel(length, rng.uniform(0, np.pi)))


@_artifact
def waxy_denoise(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Over-denoising: non-local means (h up to 15) or a median filter (3-7 px), blended by
    ``strength``: grain and fine texture gone, a waxy surface left."""
    if rng.random() < 0.5:
        hval = float(rng.uniform(6, 15))
        den = cv2.fastNlMeansDenoisingColored(_to_u8(img), None, hval, hval, 5, 15).astype(np.float32) / 255
    else:
        k = int(rng.choice([3, 5, 7]))
        den = cv2.medianBlur(_to_u8(img), k).astype(np.float32) / 255
    return _lerp(img, den, strength)


@_artifact
def downup_resample(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Area down-scaling by ``1 + strength`` x 1-3 then bicubic / bilinear back up: soft, detail-free."""
    h, w = img.shape[:2]
    factor = 1.0 + strength * rng.uniform(1.0, 3.0)
    small = resize(img, (max(1, round(h / factor)), max(1, round(w / factor))), "area")
    return resize(small, (h, w), str(rng.choice(["bicubic", "bilinear"])))


@_artifact
def posterize_banding(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Tones quantized to ``round(2 ** (8 - strength * 5.5))`` levels (smooth gradients band into
    contours), one time in two after a light smoothing, as an 8-bit / latent quantizer does."""
    levels = max(2, int(round(2 ** (8 - strength * rng.uniform(4.0, 6.0)))))
    src = gaussian_blur(img, rng.uniform(0.5, 1.5)) if rng.random() < 0.5 else img
    return np.round(src * (levels - 1)) / (levels - 1)


# ------------------------------------------------------------------ colour and tone
@_artifact
def tone_shift(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Local tone drift under a smooth field: gamma ``2 ** (+-strength x 0.3-0.8)``, contrast
    ``1 +- strength x 0.4`` and brightness ``+- strength x 0.1``."""
    h, w = img.shape[:2]
    gamma = 2.0 ** (strength * rng.uniform(0.3, 0.8) * rng.choice([-1, 1]))
    contrast = 1.0 + strength * rng.uniform(-0.4, 0.4)
    bright = strength * rng.uniform(-0.1, 0.1)
    out = np.power(np.clip(img, 0, 1), gamma)
    out = (out - 0.5) * contrast + 0.5 + bright
    field = smooth_noise_field(h, w, rng, sigma=min(h, w) * rng.uniform(0.1, 0.3))
    globalness = rng.uniform(0.0, 0.8)
    weight = (globalness + (1 - globalness) / (1 + np.exp(-2.0 * field)))[..., None]
    return _lerp(img, out.astype(np.float32), weight)


_RGB2YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], np.float32)
_YCC2RGB = np.linalg.inv(_RGB2YCC).astype(np.float32)


@_artifact
def chroma_bleed(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Chroma blurred (sigma ``strength`` x 1-5 px) and shifted (up to ``strength`` x 3 px) against
    the luma, saturation raised a little: colours bleed over edges, fringes appear."""
    ycc = img @ _RGB2YCC.T
    sigma = strength * rng.uniform(1.0, 5.0)
    dx, dy = (strength * rng.uniform(-3, 3, size=2)).tolist()
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    h, w = img.shape[:2]
    for c in (1, 2):
        ch = gaussian_blur(ycc[..., c], sigma) if sigma > 0.3 else ycc[..., c]
        ycc[..., c] = cv2.warpAffine(ch, m, (w, h), borderMode=cv2.BORDER_REFLECT_101) * (1 + 0.3 * strength)
    return (ycc @ _YCC2RGB.T).astype(np.float32)


# ------------------------------------------------------------------ structure
@_artifact
def tiling_seams(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Tiles of 24-72 px each get their own small colour offset (``strength`` x 0.01-0.06) and, one
    time in two, a sub-pixel misalignment: the seams of tiled SR inference."""
    h, w = img.shape[:2]
    t = int(rng.integers(24, 73))
    oy, ox = int(rng.integers(0, t)), int(rng.integers(0, t))
    amp = strength * rng.uniform(0.01, 0.06)
    shift = rng.random() < 0.5
    out = img.copy()
    for y0 in range(-oy, h, t):
        for x0 in range(-ox, w, t):
            ys, xs = slice(max(0, y0), min(h, y0 + t)), slice(max(0, x0), min(w, x0 + t))
            tile = img[ys, xs]
            if shift and min(tile.shape[:2]) > 2:
                d = strength * rng.uniform(-1.5, 1.5, size=2)
                m = np.float32([[1, 0, d[0]], [0, 1, d[1]]])
                tile = cv2.warpAffine(tile, m, (tile.shape[1], tile.shape[0]), borderMode=cv2.BORDER_REFLECT_101)
            out[ys, xs] = tile + _f32(amp) * rng.standard_normal(3).astype(np.float32)
    return out


@_artifact
def local_warp(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """A smooth random displacement field of up to ``strength`` x 1-4 px: edges wobble, shapes bend."""
    h, w = img.shape[:2]
    amp = strength * rng.uniform(1.0, 4.0)
    sigma = min(h, w) * rng.uniform(0.04, 0.12)
    fx = smooth_noise_field(h, w, rng, sigma)
    fy = smooth_noise_field(h, w, rng, sigma)
    fx, fy = fx / max(float(np.abs(fx).max()), 1e-6), fy / max(float(np.abs(fy).max()), 1e-6)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(img, xx + _f32(amp) * fx, yy + _f32(amp) * fy, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT_101)
