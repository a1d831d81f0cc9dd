"""The one place where user input becomes model input.

Everything a user can hand to FinPercep (a file path, a PIL image in any mode, a numpy array, a torch
tensor, or a list of those) goes through this module, and every problem comes back as one exception
class, :class:`ImageInputError` (a ``ValueError``), whose message names the input, what was wrong and
the fix.

Public API::

    load_image(path, max_pixels=None) -> PIL.Image.Image          # fully decoded, EXIF-oriented
    to_float_rgb(image, name="image") -> np.ndarray                # float32 H x W x 3 in [0, 1]
    to_batch_tensor(images, device=None, dtype=torch.float32, min_size=1) -> list[Tensor 1x3xHxW]
    to_unit_range(x, name="image") -> same backend, float32 in [0, 1]
    describe(image) -> str                                         # "PIL RGBA 640x480"

Policies (each applied in exactly one function below):

* **Alpha** (RGBA, LA, PA, P or L/RGB with a ``transparency`` key, numpy ``HxWx2``/``HxWx4``, torch
  ``2xHxW``/``4xHxW``): composited over **white**, ``rgb * a + (1 - a)``. Dropping alpha would expose
  whatever colour an editor left under transparent pixels (often black or garbage), which a
  perceptual model would score as a defect; white is how viewers and browsers usually show it.
  See :func:`_compose_rgb`.
* **Integer ranges**: ``uint8`` / 255, ``uint16`` / 65535, ``bool`` -> {0, 1}. Other integer dtypes
  (``int8..int64``, ``uint32``, ``uint64``) are refused: their range is ambiguous (0..255? 0..65535?
  0..1?) and guessing it silently gives a wrong-but-plausible image. Complex, object, string and
  datetime arrays are refused. See :func:`_int_scale`.
* **Float range**: floats must be finite (NaN/inf refused, naming how many) and within [0, 1];
  values up to :data:`FLOAT_SLACK` outside are rounding / resampling overshoot and are clipped,
  anything further is refused with a hint (0..255 data, [-1, 1] data, ...). Floats are computed in
  float32. See :func:`_check_float_range`.
* **Layouts**: numpy images are ``HxW`` or ``HxWxC`` (C in 1..4); torch images are ``HxW`` or
  ``CxHxW``; batches are numpy ``BxHxWxC`` or torch ``BxCxHxW``. The other order is detected and
  refused with the ``transpose`` / ``permute`` that fixes it.
* **PIL modes**: ``1``, ``L``, ``P``, ``PA``, ``RGB``, ``RGBA``, ``LA``, ``CMYK``, ``YCbCr``, ``HSV``
  via Pillow's own conversion; premultiplied ``La`` / ``RGBa`` over white directly; ``LAB`` via CIELAB (D50, Pillow/littleCMS 8-bit encoding) -> sRGB here, because
  Pillow's ``convert("RGB")`` from ``LAB`` is wrong; ``I;16*`` / 65535; ``I`` / 65535 when every
  value fits 0..65535 (that is how Pillow stores 16-bit PNG/TIFF), else the int32 range 0..2**31-1
  (negatives clipped); ``F`` under the float-range rule. Embedded ICC profiles are not applied.
* **Max pixels**: :data:`DEFAULT_MAX_PIXELS` = 16384 * 9216 (151 MP: a 16K 16:9 frame, so a x4
  upscale of a 3840x2160 frame fits; its float32 RGB copy alone is 1.7 GiB). Larger files are
  refused from their header, before decoding (decompression-bomb guard); pass ``max_pixels=`` to
  raise it. The default sits below Pillow's own hard limit (twice ``PIL.Image.MAX_IMAGE_PIXELS``,
  179 MP by default), so this check and its message decide; Pillow's warning is silenced, and its
  error, reached only with a larger ``max_pixels``, is converted naming both settings.
* **Animated / multi-page files**: the first frame / page.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import PIL.Image
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FLOAT_SLACK",
    "ImageInputError",
    "ImageLike",
    "describe",
    "load_image",
    "to_batch_tensor",
    "to_float_rgb",
    "to_unit_range",
]

ImageLike = Union[str, os.PathLike, PIL.Image.Image, np.ndarray, torch.Tensor]
Array = Union[np.ndarray, torch.Tensor]

#: Default decompression-bomb limit of :func:`load_image`, in pixels (width * height).
DEFAULT_MAX_PIXELS: int = 16384 * 9216
#: Float pixels up to this far outside [0, 1] are clipped; further out they are refused.
FLOAT_SLACK: float = 0.02

_CHANNELS = (1, 2, 3, 4)
_INT_SCALES = {"uint8": 255.0, "uint16": 65535.0, "bool": 1.0}
_PIL_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_PIL_ALPHA = ("RGBA", "LA", "PA")


class ImageInputError(ValueError):
    """An input that cannot become a model image. The message names the input, the problem and the fix."""


# --------------------------------------------------------------------------------------- describe


def describe(image: Any) -> str:
    """A short description of ``image`` for error messages, e.g. ``"PIL RGBA 640x480"`` (width x
    height), ``"numpy uint16 (480, 640, 3)"``, ``"torch float32 (1, 3, 480, 640) on cuda:0"``."""
    if isinstance(image, PIL.Image.Image):
        return f"PIL {image.mode} {image.width}x{image.height}"
    if isinstance(image, np.ndarray):
        return f"numpy {image.dtype.name} {tuple(image.shape)}"
    if isinstance(image, torch.Tensor):
        where = "" if image.device.type == "cpu" else f" on {image.device}"
        return f"torch {str(image.dtype).replace('torch.', '')} {tuple(image.shape)}{where}"
    if isinstance(image, (str, os.PathLike)):
        return f"file {os.fspath(image)!r}"
    kind = type(image)
    return f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else kind.__qualname__


def _label(name: str, image: Any) -> str:
    return f"{name} ({describe(image)})"


# ------------------------------------------------------------------------------------- load_image


def load_image(path: Union[str, os.PathLike], max_pixels: Optional[int] = None) -> PIL.Image.Image:
    """Open and fully decode an image file, with EXIF orientation applied.

    The returned image keeps its file's mode (``I;16`` for a 16-bit PNG, ``RGBA``, ``P`` ...) so
    :func:`to_float_rgb` can scale it correctly; it holds no open file handle.

    Args:
        path: the image file.
        max_pixels: refuse images with more than this many pixels before decoding them
            (default :data:`DEFAULT_MAX_PIXELS`).

    Raises:
        ImageInputError: missing, empty, unreadable, not an image, truncated / corrupt, or too large.
    """
    try:
        file = Path(path)
    except TypeError:
        raise ImageInputError(f"load_image expects a file path, got {describe(path)}; "
                              "pass a str or pathlib.Path (PIL / numpy / torch images go to to_float_rgb)") from None
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    _check_file(file)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit below decides
            with Image.open(file) as im:
                _check_pixels(file, im.size, limit)
                im.load()  # full decode now, so truncation is caught here and not deep in the model
                return _apply_exif_orientation(file, im)
    except ImageInputError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageInputError(
            f"{file}: {e} This is Pillow's own decompression-bomb guard (PIL.Image.MAX_IMAGE_PIXELS = "
            f"{Image.MAX_IMAGE_PIXELS}). If the image is genuine, raise PIL.Image.MAX_IMAGE_PIXELS and "
            "load_image(..., max_pixels=...); otherwise the file is malformed or malicious."
        ) from None
    except UnidentifiedImageError:
        raise ImageInputError(f"{file}: not a recognized image file{_content_hint(file)}; "
                              "pass a PNG, JPEG, WebP, TIFF, BMP or GIF file") from None
    except PermissionError:
        raise ImageInputError(f"{file}: permission denied; make the file readable (chmod) or copy it") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
        raise ImageInputError(
            f"{file}: truncated or corrupt image data ({type(e).__name__}: {e}); the file was probably cut "
            "short by an interrupted download or copy: re-download or re-export it"
        ) from None


def _check_file(file: Path) -> None:
    """Refuse a missing path, a directory and an empty file before Pillow sees them."""
    if not file.exists():
        where = "" if file.is_absolute() else f" (relative paths are resolved from {os.getcwd()})"
        raise ImageInputError(f"{file}: no such file; check the path{where}")
    if file.is_dir():
        raise ImageInputError(f"{file}: is a directory, not an image file; pass the image files inside it")
    if file.stat().st_size == 0:
        raise ImageInputError(f"{file}: the file is empty (0 bytes), e.g. a failed download or an "
                              "interrupted save; re-download or re-export it")


def _check_pixels(file: Path, size: tuple[int, int], limit: int) -> None:
    """The decompression-bomb guard: refuse ``size`` above ``limit`` pixels before decoding."""
    w, h = size
    if w * h > limit:
        raise ImageInputError(
            f"{file}: {w}x{h} = {w * h:,} pixels is above the limit of {limit:,} pixels "
            f"(decompression-bomb guard). If the image is genuine, raise the limit: "
            f"load_image(path, max_pixels={w * h}); otherwise the file is malformed or malicious."
        )


def _content_hint(file: Path) -> str:
    """What the first bytes of an unidentified file look like, for the error message."""
    try:
        with open(file, "rb") as f:
            head = f.read(64)
    except OSError:
        return ""
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html")):
        return " (it is an HTML page, e.g. an error page saved instead of the image)"
    if lowered.startswith(b"version https://git-lfs"):
        return " (it is a Git LFS pointer; run `git lfs pull`)"
    text = head.decode("utf-8", errors="replace")
    if all(c.isprintable() or c in "\t\r\n" for c in text) and text.count("\ufffd") <= 3:
        return f" (it is a text file starting {text[:24]!r})"
    return f" (starts with bytes {head[:8]!r})"


def _apply_exif_orientation(file: Path, im: PIL.Image.Image) -> PIL.Image.Image:
    """A decoded copy of ``im`` turned the way its EXIF Orientation tag says; a broken EXIF block
    only warns (the pixels are fine) and keeps the stored orientation."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception as e:  # malformed EXIF from some cameras / editors
        warnings.warn(f"{file}: unreadable EXIF orientation ({e}); using the stored orientation", stacklevel=3)
        return im.copy()


# ------------------------------------------------------------------------------ range and dtypes


def _is_torch(x: Array) -> bool:
    return isinstance(x, torch.Tensor)


def _dtype_name(x: Array) -> str:
    return str(x.dtype).replace("torch.", "") if _is_torch(x) else x.dtype.name


def _is_float(x: Array) -> bool:
    return x.is_floating_point() if _is_torch(x) else x.dtype.kind == "f"


def _int_scale(x: Array, label: str) -> float:
    """The divisor that maps a non-float dtype to [0, 1]; refuses dtypes without a defined range."""
    name = _dtype_name(x)
    if name in _INT_SCALES:
        return _INT_SCALES[name]
    torch_in = _is_torch(x)
    complex_in = x.is_complex() if torch_in else x.dtype.kind == "c"
    if complex_in:
        fix = "x.abs() or x.real" if torch_in else "np.abs(x) or x.real"
        raise ImageInputError(f"{label}: complex values are not pixels; pass {fix} scaled to [0, 1]")
    integer = (not x.is_floating_point()) if torch_in else x.dtype.kind in "iu"
    if integer:
        fix = ("x.to(torch.uint8) for 0..255 data, x.to(torch.uint16) for 0..65535 data, or x.float() / 255"
               if torch_in else
               "x.astype(np.uint8) for 0..255 data, x.astype(np.uint16) for 0..65535 data, or x / 255.0")
        raise ImageInputError(f"{label}: dtype {name} has no defined pixel range (0..255? 0..65535? 0..1?); "
                              f"convert it: {fix} (float in [0, 1])")
    raise ImageInputError(f"{label}: dtype {name} is not numeric pixel data; pass uint8, uint16 or float in [0, 1]")


def _float_stats(x: Array) -> tuple[int, int, float, float]:
    """(NaN count, inf count, min, max) of a float array or tensor (min/max only when all finite)."""
    if _is_torch(x):
        n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        if n_nan or n_inf:
            return n_nan, n_inf, float("nan"), float("nan")
        return 0, 0, float(x.min()), float(x.max())
    n_nan, n_inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
    if n_nan or n_inf:
        return n_nan, n_inf, float("nan"), float("nan")
    return 0, 0, float(x.min()), float(x.max())


def _range_hint(lo: float, hi: float) -> str:
    """A guess at what a float range outside [0, 1] is, phrased as the fix."""
    if lo >= -FLOAT_SLACK and hi <= 255 * (1 + FLOAT_SLACK):
        return "it looks like 0..255 data: divide by 255"
    if lo >= -FLOAT_SLACK and hi <= 65535 * (1 + FLOAT_SLACK):
        return "it looks like 0..65535 data: divide by 65535"
    if lo >= -1 - FLOAT_SLACK and hi <= 1 + FLOAT_SLACK:
        return "it looks like [-1, 1] data (e.g. a VAE decode): use (x + 1) / 2"
    return "rescale it to [0, 1], e.g. (x - x.min()) / (x.max() - x.min()), or clip it"


def _check_float_range(x: Array, label: str) -> None:
    """The float-range policy: finite, and within [0, 1] up to :data:`FLOAT_SLACK`."""
    n_nan, n_inf, lo, hi = _float_stats(x)
    if n_nan or n_inf:
        fix = "torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0)" if _is_torch(x) else \
            "np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0)"
        raise ImageInputError(
            f"{label}: contains {n_nan} NaN and {n_inf} infinite values; whatever produced it diverged or "
            f"divided by zero. Fix the source, or replace them with {fix}"
        )
    if lo < -FLOAT_SLACK or hi > 1 + FLOAT_SLACK:
        raise ImageInputError(
            f"{label}: float values span [{lo:.6g}, {hi:.6g}] but images must be in [0, 1] "
            f"(up to {FLOAT_SLACK} outside is clipped); {_range_hint(lo, hi)}"
        )


def _size(x: Array) -> int:
    return int(x.numel()) if _is_torch(x) else int(x.size)


def _unit(x: Array, label: str) -> Array:
    """The dtype rules (see :func:`to_unit_range`), with ``label`` naming the input in errors."""
    if _is_float(x):
        if _size(x):
            _check_float_range(x, label)
        y = x.to(torch.float32) if _is_torch(x) else x.astype(np.float32)
        return y.clip(0.0, 1.0)
    scale = _int_scale(x, label)
    y = x.to(torch.float32) if _is_torch(x) else x.astype(np.float32)
    return y / scale


def to_unit_range(x: Array, name: str = "image") -> Array:
    """``x`` as float32 in [0, 1], same backend (numpy / torch), shape and device, by the dtype rules
    of this module: uint8 / 255, uint16 / 65535, bool -> {0, 1}, floats checked (finite, within
    [0, 1] up to :data:`FLOAT_SLACK`) and clipped; anything else raises :class:`ImageInputError`."""
    return _unit(x, _label(name, x))


def _compose_rgb(hwc: Array) -> Array:
    """Channels-last ``H x W x C`` (C in 1..4, float in [0, 1], numpy or torch) to ``H x W x 3``:
    gray is repeated, alpha (the last of 2 or 4 channels) is composited over white."""
    c = hwc.shape[-1]
    if c in (2, 4):
        alpha = hwc[..., c - 1:]
        hwc = hwc[..., : c - 1] * alpha + (1.0 - alpha)
    if hwc.shape[-1] == 1:
        hwc = hwc[..., [0, 0, 0]]
    return hwc.clip(0.0, 1.0)


# ------------------------------------------------------------------------------------- layouts


def _check_hw(shape: Sequence[int], label: str) -> None:
    if any(int(s) == 0 for s in shape):
        raise ImageInputError(f"{label}: empty image (a side or the channel axis has length 0); "
                              "check the crop / slicing that produced it")


def _check_numpy_layout(a: np.ndarray, label: str) -> None:
    """numpy images are ``HxW`` or ``HxWxC`` with C in 1..4; refuse everything else naming the fix."""
    if a.ndim == 3 and a.shape[-1] not in _CHANNELS and a.shape[0] in _CHANNELS:
        raise ImageInputError(f"{label}: looks channels-first (CxHxW); numpy images are HxWxC: "
                              "pass a.transpose(1, 2, 0)")
    if a.ndim == 3 and a.shape[-1] not in _CHANNELS:
        raise ImageInputError(f"{label}: {a.shape[-1]} channels; expected HxW, HxWx1 (gray), HxWx2 "
                              "(gray + alpha), HxWx3 (RGB) or HxWx4 (RGBA)")
    if a.ndim not in (2, 3):
        raise ImageInputError(f"{label}: {a.ndim} dimensions; a numpy image is HxW or HxWxC "
                              "(a batch BxHxWxC goes to to_batch_tensor or as a list)")
    _check_hw(a.shape, label)


def _check_torch_layout(t: torch.Tensor, label: str) -> None:
    """torch images are ``HxW`` or ``CxHxW`` with C in 1..4; refuse everything else naming the fix."""
    if t.ndim == 3 and t.shape[0] not in _CHANNELS and t.shape[-1] in _CHANNELS:
        raise ImageInputError(f"{label}: looks channels-last (HxWxC); torch images are CxHxW: "
                              "pass x.permute(2, 0, 1)")
    if t.ndim == 3 and t.shape[0] not in _CHANNELS:
        raise ImageInputError(f"{label}: {t.shape[0]} channels; expected HxW, 1xHxW, 2xHxW, 3xHxW (RGB) "
                              "or 4xHxW (RGBA)")
    if t.ndim not in (2, 3):
        raise ImageInputError(f"{label}: {t.ndim} dimensions; a torch image is CxHxW "
                              "(a batch Bx3xHxW goes to to_batch_tensor)")
    _check_hw(t.shape, label)


def _single(x: Array, label: str) -> Array:
    """Drop a leading batch axis of length 1 (``1xCxHxW`` / ``1xHxWxC``); refuse a real batch."""
    if x.ndim == 4 and x.shape[0] == 1:
        return x[0]
    if x.ndim == 4:
        raise ImageInputError(f"{label}: holds a batch of {x.shape[0]} images; pass one image, "
                              "or use to_batch_tensor for batches")
    return x


# ------------------------------------------------------------------------------------ converters


def _numpy_to_rgb(a: np.ndarray, label: str) -> np.ndarray:
    """A numpy image (``HxW``, ``HxWxC`` or ``1xHxWxC``) as float32 ``HxWx3`` in [0, 1]."""
    a = _single(a, label)
    _check_numpy_layout(a, label)
    x = _unit(a, label)
    hwc = x[..., None] if x.ndim == 2 else x
    return np.ascontiguousarray(_compose_rgb(hwc), dtype=np.float32)


def _tensor_to_chw(t: torch.Tensor, name: str) -> torch.Tensor:
    """A torch image (``HxW``, ``CxHxW`` or ``1xCxHxW``) as float32 ``3xHxW`` in [0, 1], same device."""
    label = _label(name, t)
    t = _single(t.detach(), label)
    _check_torch_layout(t, label)
    x = _unit(t, label)
    hwc = x[..., None] if x.ndim == 2 else x.permute(1, 2, 0)
    return _compose_rgb(hwc).permute(2, 0, 1).contiguous()


def _lab_to_srgb(raw: np.ndarray) -> np.ndarray:
    """Pillow ``LAB`` pixels as numpy exports them (L 0..255 -> 0..100; a and b signed 8-bit; D50
    white, as littleCMS uses) to float sRGB in [0, 1]: CIELAB -> XYZ(D50) -> Bradford-adapted
    linear sRGB -> sRGB transfer curve."""
    lightness = raw[..., 0].astype(np.float64) * (100.0 / 255.0)
    ab = raw[..., 1:].view(np.int8).astype(np.float64)
    fy = (lightness + 16.0) / 116.0
    f = np.stack([fy + ab[..., 0] / 500.0, fy, fy - ab[..., 1] / 200.0], axis=-1)
    delta = 6.0 / 29.0
    xyz = np.where(f > delta, f ** 3, 3 * delta ** 2 * (f - 4.0 / 29.0)) * np.array([0.96422, 1.0, 0.82521])
    m = np.array([[3.1338561, -1.6168667, -0.4906146],
                  [-0.9787684, 1.9161415, 0.0334540],
                  [0.0719453, -0.2289914, 1.4052427]])
    lin = np.clip(xyz @ m.T, 0.0, 1.0)
    srgb = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    return np.clip(srgb, 0.0, 1.0).astype(np.float32)


def _premultiplied_over_white(raw: np.ndarray) -> np.ndarray:
    """Pillow ``La`` / ``RGBa`` (colour already multiplied by alpha) composited over white:
    ``c_premultiplied + (1 - a)``, then gray repeated to RGB."""
    x = raw.astype(np.float32) / 255.0
    alpha = x[..., -1:]
    return _compose_rgb(x[..., :-1] + (1.0 - alpha)).astype(np.float32)


def _pil_int32_to_unit(a: np.ndarray) -> np.ndarray:
    """Pillow mode ``I`` (int32): 16-bit data when it fits 0..65535, else the int32 range."""
    if a.size and a.min() >= 0 and a.max() <= 65535:
        return a.astype(np.float32) / 65535.0
    return np.clip(a.astype(np.float64) / 2147483647.0, 0.0, 1.0).astype(np.float32)


def _pil_to_rgb(img: PIL.Image.Image, name: str) -> np.ndarray:
    """A PIL image in any mode as float32 ``HxWx3`` (see the module docstring for the mode rules)."""
    label = _label(name, img)
    _check_hw(img.size, label)
    mode = img.mode
    if mode in _PIL_16BIT or mode == "F":
        return _numpy_to_rgb(np.asarray(img), label)
    if mode == "I":
        return _compose_rgb(_pil_int32_to_unit(np.asarray(img))[..., None]).astype(np.float32)
    if mode == "LAB":
        return _lab_to_srgb(np.asarray(img))
    if mode in ("La", "RGBa"):
        return _premultiplied_over_white(np.asarray(img))
    has_alpha = mode in _PIL_ALPHA or "transparency" in img.info
    try:
        converted = img.convert("RGBA" if has_alpha else "RGB")
    except (ValueError, OSError) as e:
        raise ImageInputError(f"{label}: Pillow cannot convert mode {mode} to RGB ({e}); "
                              "convert the image to RGB yourself first") from None
    return _numpy_to_rgb(np.asarray(converted), label)


def to_float_rgb(image: ImageLike, name: str = "image") -> np.ndarray:
    """Any accepted image as a float32 ``H x W x 3`` numpy array in [0, 1].

    Accepts a file path (:func:`load_image`), a PIL image in any mode, a numpy ``HxW`` /
    ``HxWxC`` array (C in 1..4, or ``1xHxWxC``), or a torch ``HxW`` / ``CxHxW`` / ``1xCxHxW`` tensor
    (any device; detached). ``name`` labels the input in error messages.

    Raises:
        ImageInputError: anything that is not a valid image, with the reason and the fix.
    """
    if isinstance(image, (str, os.PathLike)):
        image = load_image(image)
    if isinstance(image, PIL.Image.Image):
        return _pil_to_rgb(image, name)
    if isinstance(image, np.ndarray):
        return _numpy_to_rgb(image, _label(name, image))
    if isinstance(image, torch.Tensor):
        return _tensor_to_chw(image, name).permute(1, 2, 0).cpu().numpy()
    raise ImageInputError(f"{_label(name, image)}: unsupported input type; pass a file path, a PIL image, "
                          "a numpy HxWxC array or a torch CxHxW tensor")


# ------------------------------------------------------------------------------------- batches


def _split(image: Any, name: str) -> Iterator[tuple[str, Any]]:
    """Yield ``(name, image)`` for one list item, expanding a batch (numpy ``BxHxWxC``, torch
    ``BxCxHxW``) into ``name[b]``; a channels-last torch batch is refused naming the permute."""
    if isinstance(image, torch.Tensor) and image.ndim == 4:
        if image.shape[1] not in _CHANNELS and image.shape[-1] in _CHANNELS:
            raise ImageInputError(f"{_label(name, image)}: looks channels-last (BxHxWxC); torch batches are "
                                  "BxCxHxW: pass x.permute(0, 3, 1, 2)")
        for b in range(image.shape[0]):
            yield f"{name}[{b}]", image[b]
    elif isinstance(image, np.ndarray) and image.ndim == 4:
        for b in range(image.shape[0]):
            yield f"{name}[{b}]", image[b]
    elif isinstance(image, (list, tuple)):
        raise ImageInputError(f"{name}: a nested {type(image).__name__}; pass a flat list of images")
    else:
        yield name, image


def check_image_size(width: int, height: int, min_size: int, label: str = "image") -> None:
    """ImageInputError when a side of a ``width x height`` image is below the model's ``min_size``
    (the one minimum-size check of the package; :mod:`diffusers_ext.request` re-exports it)."""
    if min(width, height) < min_size:
        raise ImageInputError(
            f"{label}: {width}x{height} px (width x height) is below the reward model's minimum of {min_size} px "
            f"on each side; upscale it first (or pad it) to at least {min_size}x{min_size} px"
        )


def _to_chw(image: Any, name: str) -> torch.Tensor:
    """One image as float32 ``3xHxW``: tensors stay on their device, everything else on the CPU."""
    if isinstance(image, torch.Tensor):
        return _tensor_to_chw(image, name)
    return torch.from_numpy(to_float_rgb(image, name)).permute(2, 0, 1).contiguous()


def to_batch_tensor(
    images: Union[ImageLike, Sequence[ImageLike]],
    device: Optional[Union[str, torch.device]] = None,
    dtype: torch.dtype = torch.float32,
    min_size: int = 1,
) -> list[torch.Tensor]:
    """Images as a list of ``1 x 3 x H x W`` tensors in [0, 1] (sizes may differ between images).

    Args:
        images: one image or a list / tuple of images, each anything :func:`to_float_rgb` accepts;
            a torch ``Bx3xHxW`` tensor or numpy ``BxHxWxC`` array (alone or as a list item) counts as
            ``B`` images. Errors name the item: ``images[2]``, ``images[0][1]`` (batch item), ``image``.
        device: where the tensors go; ``None`` keeps torch inputs on their device and puts the
            others on the CPU.
        dtype: a floating dtype (values are computed in float32, then cast).
        min_size: the smallest allowed side in pixels (the model's minimum).

    Raises:
        ImageInputError: an empty list, or any item that is not a valid image or is too small.
        TypeError: ``dtype`` is not a floating dtype.
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"to_batch_tensor: dtype must be a floating torch dtype, got {dtype!r}")
    if isinstance(images, (list, tuple)):
        items = [item for i, image in enumerate(images) for item in _split(image, f"images[{i}]")]
    else:
        items = list(_split(images, "image"))
    if not items:
        raise ImageInputError("no images given; pass an image or a non-empty list of images")
    out = []
    for name, image in items:
        chw = _to_chw(image, name)
        check_image_size(int(chw.shape[-1]), int(chw.shape[-2]), int(min_size), _label(name, image))
        out.append(chw.unsqueeze(0).to(device=device if device is not None else chw.device, dtype=dtype))
    return out
