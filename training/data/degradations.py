"""Real-ESRGAN-style second-order degradation ``HR -> LR`` (Wang et al., ICCV-W 2021), in numpy/cv2.

Each of the two orders applies blur -> random resize -> noise -> JPEG; the second order ends, in a
random order, with (resize to the exact target size + optional sinc filter) and JPEG. The result is
rounded to 8-bit levels, as in Real-ESRGAN. Sampling follows ``realesrgan/data/realesrgan_dataset.py``
and ``RealESRGANModel.feed_data`` with the defaults of ``train_realesrgan_x4plus.yml``. Differences:
everything runs on one image with cv2 (``cv2.filter2D`` with reflect-101 borders, ``cv2.resize``
without antialiasing, ``cv2.imencode`` JPEG with 4:2:0 chroma and integer quality) instead of batched
torch, and the Poisson photon scale is fixed at 256 (see :func:`add_poisson_noise`).

Image convention for this package (also used by :mod:`.artifacts` and :mod:`.masks`): float32
``HxWx3`` RGB in ``[0, 1]``. :func:`as_float_image` enforces it and *refuses* integer images rather
than guessing their range (a ``uint8`` image would otherwise be read as 0..255 "floats", or a
``uint16`` one scaled by the wrong constant); the error message names the fix.

The low-level operators here (kernels, :func:`filter2d`, :func:`resize`, noise, :func:`jpeg_compress`)
are public and reused by :mod:`.artifacts`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import cv2
import numpy as np
from scipy import special

__all__ = [
    "KERNEL_TYPES", "RESIZE_MODES", "OrderConfig", "DegradationConfig", "as_float_image",
    "bivariate_kernel", "sinc_kernel", "random_blur_kernel", "filter2d", "gaussian_blur", "resize", "to_gray",
    "add_gaussian_noise", "add_poisson_noise", "jpeg_compress", "quantize_8bit", "degrade",
]

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
_CV2_INTERP = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
               "nearest": cv2.INTER_NEAREST}
_RANGE_TOL = 1e-3  # values this far outside [0, 1] (resampling overshoot) are clipped, not refused
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as torchvision/basicsr

Range = tuple[float, float]


# --------------------------------------------------------------------------------------------------
# Image convention
# --------------------------------------------------------------------------------------------------
def as_float_image(img: np.ndarray, name: str = "img") -> np.ndarray:
    """Check ``img`` is an RGB image ``HxWx3`` of floats in ``[0, 1]``; return it as contiguous float32.

    Floating dtypes are cast to float32 and values within 1e-3 of the range are clipped. Integer and
    bool images are refused (``TypeError``) instead of guessed: convert with
    ``img.astype(np.float32) / 255`` (uint8) or ``/ 65535`` (uint16). Wrong shapes, non-finite values
    and floats outside ``[0, 1]`` (e.g. 0..255 floats) raise ``ValueError``.
    """
    if not isinstance(img, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(img).__name__}")
    if not np.issubdtype(img.dtype, np.floating):
        scale = {np.dtype(np.uint8): "255", np.dtype(np.uint16): "65535"}.get(img.dtype, "its max value")
        raise TypeError(f"{name} has dtype {img.dtype}; expected float32 in [0, 1]. "
                        f"Convert with {name}.astype(np.float32) / {scale}")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{name} must have shape HxWx3 (RGB), got {img.shape}; for a gray image "
                         f"use np.repeat({name}[..., None], 3, axis=2)")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"{name} is empty: shape {img.shape}")
    lo, hi = float(img.min()), float(img.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or inf")
    if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
        raise ValueError(f"{name} has values in [{lo:.4g}, {hi:.4g}]; expected [0, 1]"
                         + (" (0..255 data? divide by 255)" if hi > 1.5 else ""))
    out = np.ascontiguousarray(img, dtype=np.float32)
    return np.clip(out, 0.0, 1.0) if (lo < 0 or hi > 1) else out


def _check_range(name: str, r: tuple, lo: float = -np.inf, hi: float = np.inf) -> None:
    if len(r) != 2 or not (lo <= r[0] <= r[1] <= hi):
        raise ValueError(f"{name} must be (min, max) with {lo} <= min <= max <= {hi}, got {r}")


def _check_probs(name: str, p: tuple, n: Optional[int] = None) -> None:
    if (n is not None and len(p) != n) or any(x < 0 for x in p) or abs(sum(p) - 1) > 1e-6:
        raise ValueError(f"{name} must be {n or len(p)} non-negative probabilities summing to 1, got {p}")


def _check_prob(name: str, p: float) -> None:
    if not 0 <= p <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OrderConfig:
    """Sampling ranges of one degradation order; the defaults are Real-ESRGAN's first order.

    Noise sigmas are in 0..255 units; resize factors are relative to the order's reference size
    (the HR size for the first order, the LR target size for the second, as in Real-ESRGAN).
    """

    blur_prob: float = 1.0
    kernel_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    kernel_types: tuple[str, ...] = KERNEL_TYPES
    kernel_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    blur_sigma: Range = (0.2, 3.0)
    betag_range: Range = (0.5, 4.0)  # generalized Gaussian shape
    betap_range: Range = (1.0, 2.0)  # plateau shape
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: Range = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5  # else Poisson
    noise_range: Range = (1.0, 30.0)
    poisson_scale_range: Range = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[int, int] = (30, 95)

    def __post_init__(self) -> None:
        for name in ("blur_prob", "sinc_prob", "gaussian_noise_prob", "gray_noise_prob"):
            _check_prob(name, getattr(self, name))
        if not self.kernel_sizes or any(k < 1 or k % 2 == 0 for k in self.kernel_sizes):
            raise ValueError(f"kernel_sizes must be odd positive integers, got {self.kernel_sizes}")
        unknown = set(self.kernel_types) - set(KERNEL_TYPES)
        if unknown:
            raise ValueError(f"unknown kernel types {sorted(unknown)}; choose from {KERNEL_TYPES}")
        _check_probs("kernel_probs", self.kernel_probs, len(self.kernel_types))
        _check_probs("resize_probs", self.resize_probs, 3)
        _check_range("blur_sigma", self.blur_sigma, lo=1e-3)
        _check_range("betag_range", self.betag_range, lo=1e-3)
        _check_range("betap_range", self.betap_range, lo=1e-3)
        _check_range("resize_range", self.resize_range, lo=1e-3)
        if not self.resize_range[0] <= 1 <= self.resize_range[1]:
            raise ValueError(f"resize_range must contain 1 (down below, up above), got {self.resize_range}")
        _check_range("noise_range", self.noise_range, lo=0)
        _check_range("poisson_scale_range", self.poisson_scale_range, lo=0)
        _check_range("jpeg_range", self.jpeg_range, lo=1, hi=100)


_SECOND_ORDER = dict(blur_prob=0.8, blur_sigma=(0.2, 1.5), resize_probs=(0.3, 0.4, 0.3),
                     resize_range=(0.3, 1.2), noise_range=(1.0, 25.0), poisson_scale_range=(0.05, 2.5))


@dataclass(frozen=True)
class DegradationConfig:
    """Both orders plus the final step. Defaults: Real-ESRGAN (``train_realesrgan_x4plus.yml``).

    ``final_sinc_prob``: chance of the sinc filter after the final resize (cut-off in
    ``[pi/3, pi]``, size from ``first.kernel_sizes``). ``resize_modes``: interpolations drawn for
    every resize. Use :meth:`light` for a milder preset.
    """

    first: OrderConfig = field(default_factory=OrderConfig)
    second: OrderConfig = field(default_factory=lambda: OrderConfig(**_SECOND_ORDER))
    final_sinc_prob: float = 0.8
    resize_modes: tuple[str, ...] = RESIZE_MODES

    def __post_init__(self) -> None:
        _check_prob("final_sinc_prob", self.final_sinc_prob)
        bad = set(self.resize_modes) - set(_CV2_INTERP)
        if not self.resize_modes or bad:
            raise ValueError(f"resize_modes must be a non-empty subset of {tuple(_CV2_INTERP)}, "
                             f"got {self.resize_modes}")

    @classmethod
    def light(cls) -> "DegradationConfig":
        """A milder preset (ours, not from Real-ESRGAN): smaller blur, gentler down-scaling, a third
        of the noise, JPEG quality >= 60, and fewer second-order blurs / sinc filters. For SR
        outputs that should stay close to the content (e.g. subtle-artifact training items)."""
        first = OrderConfig(sinc_prob=0.05, blur_sigma=(0.2, 1.5), resize_range=(0.5, 1.2),
                            noise_range=(1.0, 10.0), poisson_scale_range=(0.05, 1.0), jpeg_range=(60, 95))
        second = OrderConfig(blur_prob=0.5, sinc_prob=0.05, blur_sigma=(0.2, 1.0),
                             resize_probs=(0.3, 0.4, 0.3), resize_range=(0.6, 1.1), noise_range=(1.0, 8.0),
                             poisson_scale_range=(0.05, 0.8), jpeg_range=(70, 95))
        return cls(first=first, second=second, final_sinc_prob=0.5)


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------
def _mesh_grid(size: int) -> np.ndarray:
    ax = np.arange(-(size // 2), size // 2 + 1, dtype=np.float64)
    xx, yy = np.meshgrid(ax, ax)
    return np.stack([xx, yy], axis=-1)  # size x size x 2


def bivariate_kernel(size: int, sigma_x: float, sigma_y: Optional[float] = None, theta: float = 0.0,
                     shape: Literal["gaussian", "generalized", "plateau"] = "gaussian",
                     beta: float = 1.0) -> np.ndarray:
    """A normalized ``size x size`` float32 blur kernel of the rotated quadratic form
    ``q = x^T S^-1 x`` with ``S = R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T``:

    * ``gaussian``: ``exp(-q / 2)``;
    * ``generalized`` (generalized Gaussian): ``exp(-q^beta / 2)``;
    * ``plateau``: ``1 / (1 + q^beta)``.

    ``sigma_y=None`` means isotropic. Matches basicsr's ``bivariate_*`` kernels.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be odd and positive, got {size}")
    sigma_y = sigma_x if sigma_y is None else sigma_y
    if min(sigma_x, sigma_y) <= 0:
        raise ValueError(f"sigmas must be positive, got {sigma_x}, {sigma_y}")
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    inv_cov = np.linalg.inv(rot @ np.diag([sigma_x ** 2, sigma_y ** 2]) @ rot.T)
    grid = _mesh_grid(size)
    q = np.einsum("...i,ij,...j->...", grid, inv_cov, grid)
    if shape == "gaussian":
        k = np.exp(-0.5 * q)
    elif shape == "generalized":
        k = np.exp(-0.5 * q ** beta)
    elif shape == "plateau":
        k = 1.0 / (q ** beta + 1.0)
    else:
        raise ValueError(f"unknown kernel shape {shape!r}; choose gaussian, generalized or plateau")
    return (k / k.sum()).astype(np.float32)


def sinc_kernel(size: int, cutoff: float) -> np.ndarray:
    """The 2-D circular low-pass (jinc) kernel with cut-off ``cutoff`` (rad/pixel, ``<= pi``),
    normalized: it produces the ringing/overshoot of an ideal low-pass filter. As basicsr's
    ``circular_lowpass_kernel``."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be odd and positive, got {size}")
    r = np.hypot(*np.moveaxis(_mesh_grid(size), -1, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        k = cutoff * special.j1(cutoff * r) / (2 * np.pi * r)
    k[size // 2, size // 2] = cutoff ** 2 / (4 * np.pi)  # the limit at r = 0
    return (k / k.sum()).astype(np.float32)


def _uniform(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1]))


def _sample_beta(rng: np.random.Generator, r: Range) -> float:
    """Shape parameter drawn, with equal chance, from the part of ``r`` below 1 or above 1 (as basicsr)."""
    below = rng.random() < 0.5
    return _uniform(rng, (min(r[0], 1.0), min(r[1], 1.0)) if below else (max(r[0], 1.0), max(r[1], 1.0)))


def random_blur_kernel(rng: np.random.Generator, order: OrderConfig) -> np.ndarray:
    """One Real-ESRGAN blur kernel: with ``order.sinc_prob`` a sinc kernel (cut-off in
    ``[pi/3, pi]``, or ``[pi/5, pi]`` for sizes >= 13), else a mixed kernel of ``order.kernel_types``
    with isotropic or anisotropic (rotated) sigmas from ``order.blur_sigma``."""
    size = int(rng.choice(order.kernel_sizes))
    if rng.random() < order.sinc_prob:
        return sinc_kernel(size, _uniform(rng, (np.pi / 3 if size < 13 else np.pi / 5, np.pi)))
    kind = order.kernel_types[int(rng.choice(len(order.kernel_types), p=order.kernel_probs))]
    sigma_x = _uniform(rng, order.blur_sigma)
    sigma_y, theta = None, 0.0
    if "aniso" in kind:
        sigma_y, theta = _uniform(rng, order.blur_sigma), _uniform(rng, (-np.pi, np.pi))
    if kind.startswith("generalized"):
        return bivariate_kernel(size, sigma_x, sigma_y, theta, "generalized", _sample_beta(rng, order.betag_range))
    if kind.startswith("plateau"):
        return bivariate_kernel(size, sigma_x, sigma_y, theta, "plateau", _sample_beta(rng, order.betap_range))
    return bivariate_kernel(size, sigma_x, sigma_y, theta, "gaussian")


# --------------------------------------------------------------------------------------------------
# Operators (each a pure function of its arguments)
# --------------------------------------------------------------------------------------------------
def filter2d(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Filter every channel with ``kernel`` (reflect-101 borders, as basicsr's ``filter2D``).
    The kernels here are point-symmetric, so correlation equals convolution."""
    return cv2.filter2D(img, -1, kernel.astype(np.float32), borderType=cv2.BORDER_REFLECT_101)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of std ``sigma`` px (reflect-101 borders) of an ``HxW`` or ``HxWxC``
    array; the shape is kept (also for ``C = 1``). ``sigma <= 0`` returns ``img`` unchanged."""
    if sigma <= 0:
        return img
    out = cv2.GaussianBlur(img, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT_101)
    return out.reshape(img.shape)


def resize(img: np.ndarray, size: tuple[int, int], mode: str = "bicubic") -> np.ndarray:
    """Resize to ``size = (height, width)`` with ``mode`` in area / bilinear / bicubic / nearest
    (no antialiasing for bilinear / bicubic, as ``F.interpolate``). Values may overshoot [0, 1]."""
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"resize target must be at least 1x1, got {size}")
    if (h, w) == img.shape[:2]:
        return img
    if mode not in _CV2_INTERP:
        raise ValueError(f"unknown resize mode {mode!r}; choose from {tuple(_CV2_INTERP)}")
    out = cv2.resize(img, (w, h), interpolation=_CV2_INTERP[mode])
    return out.reshape(h, w, *img.shape[2:])  # cv2 drops a trailing channel axis of size 1


def to_gray(img: np.ndarray) -> np.ndarray:
    """BT.601 luma ``HxWx1`` of an RGB image."""
    return (img @ _LUMA)[..., None]


def add_gaussian_noise(img: np.ndarray, rng: np.random.Generator, sigma: float, gray: bool = False) -> np.ndarray:
    """``img + N(0, (sigma/255)^2)`` per pixel (one field shared by the channels if ``gray``), clipped."""
    shape = img.shape[:2] + ((1,) if gray else img.shape[2:])
    noise = rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma / 255.0)
    return np.clip(img + noise, 0.0, 1.0)


_PHOTON_SCALE = 256.0


def _poisson_residual(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shot noise ``Poisson(q * 256) / 256 - q`` of the 8-bit-rounded ``q = x``.

    basicsr scales by the number of distinct 8-bit levels rounded up to a power of two, which is 256
    for any photo with more than 128 levels but 1 for a flat crop (noise of +-1). We always use 256.
    """
    q = np.round(np.clip(x, 0, 1) * 255) / 255
    return (rng.poisson(q * _PHOTON_SCALE) / _PHOTON_SCALE - q).astype(np.float32)


def add_poisson_noise(img: np.ndarray, rng: np.random.Generator, scale: float, gray: bool = False) -> np.ndarray:
    """``img + scale * shot noise`` (computed on the luma and shared by the channels if ``gray``), clipped."""
    noise = _poisson_residual(to_gray(img) if gray else img, rng)
    return np.clip(img + np.float32(scale) * noise, 0.0, 1.0)


def jpeg_compress(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode/decode as 8-bit JPEG (libjpeg via cv2, 4:2:0 chroma) at ``quality`` in 1..100."""
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    u8 = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(u8, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("cv2.imencode failed to encode JPEG")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def quantize_8bit(img: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] and round to the 256 levels of an 8-bit image (kept as float32)."""
    return (np.round(np.clip(img, 0, 1) * 255) / 255).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------
def _random_noise(img: np.ndarray, rng: np.random.Generator, order: OrderConfig) -> np.ndarray:
    if rng.random() < order.gaussian_noise_prob:
        sigma = _uniform(rng, order.noise_range)
        return add_gaussian_noise(img, rng, sigma, gray=bool(rng.random() < order.gray_noise_prob))
    scale = _uniform(rng, order.poisson_scale_range)
    return add_poisson_noise(img, rng, scale, gray=bool(rng.random() < order.gray_noise_prob))


def _random_resize(img: np.ndarray, rng: np.random.Generator, order: OrderConfig,
                   reference: tuple[int, int], modes: tuple[str, ...]) -> np.ndarray:
    """Resize to ``reference * s`` with ``s`` above 1 (up), below 1 (down) or 1 (keep)."""
    direction = int(rng.choice(3, p=order.resize_probs))
    s = (_uniform(rng, (1.0, order.resize_range[1])), _uniform(rng, (order.resize_range[0], 1.0)), 1.0)[direction]
    mode = str(rng.choice(modes))
    return resize(img, (max(1, int(reference[0] * s)), max(1, int(reference[1] * s))), mode)


def _degrade_order(img: np.ndarray, rng: np.random.Generator, order: OrderConfig,
                   reference: tuple[int, int], modes: tuple[str, ...]) -> np.ndarray:
    """Blur (with ``order.blur_prob``), random resize and noise of one order (its JPEG is the caller's)."""
    if rng.random() < order.blur_prob:
        img = filter2d(img, random_blur_kernel(rng, order))
    img = _random_resize(img, rng, order, reference, modes)
    return _random_noise(img, rng, order)


def _random_quality(rng: np.random.Generator, order: OrderConfig) -> int:
    return int(rng.integers(order.jpeg_range[0], order.jpeg_range[1] + 1))


def degrade(hr: np.ndarray, scale: int, rng: np.random.Generator,
            cfg: Optional[DegradationConfig] = None) -> np.ndarray:
    """Second-order real-world degradation of ``hr`` (float32 ``HxWx3`` in [0, 1]) to an LR image of
    exactly ``(H // scale, W // scale)``, float32 in [0, 1] on 8-bit levels.

    All randomness comes from ``rng``: the same generator state gives the same LR image.
    ``cfg`` defaults to Real-ESRGAN's settings (:class:`DegradationConfig`).
    """
    hr = as_float_image(hr, "hr")
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    cfg = cfg or DegradationConfig()
    h, w = hr.shape[:2]
    target = (h // scale, w // scale)
    if min(target) < 1:
        raise ValueError(f"hr of size {h}x{w} is smaller than scale {scale}: the LR image would be empty")

    out = _degrade_order(hr, rng, cfg.first, (h, w), cfg.resize_modes)
    out = jpeg_compress(out, _random_quality(rng, cfg.first))
    out = _degrade_order(out, rng, cfg.second, target, cfg.resize_modes)

    size = int(rng.choice(cfg.first.kernel_sizes))
    final_sinc = sinc_kernel(size, _uniform(rng, (np.pi / 3, np.pi))) if rng.random() < cfg.final_sinc_prob else None
    mode, quality = str(rng.choice(cfg.resize_modes)), _random_quality(rng, cfg.second)

    def resize_and_sinc(x: np.ndarray) -> np.ndarray:
        x = resize(x, target, mode)
        return x if final_sinc is None else filter2d(x, final_sinc)

    if rng.random() < 0.5:
        out = jpeg_compress(resize_and_sinc(out), quality)
    else:
        out = resize_and_sinc(jpeg_compress(out, quality))
    return quantize_8bit(out)
