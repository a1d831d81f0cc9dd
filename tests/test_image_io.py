"""diffusers_ext.image_io: real files on disk, every accepted input kind, and every refusal."""
from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from diffusers_ext.image_io import (
    FLOAT_SLACK,
    ImageInputError,
    describe,
    load_image,
    to_batch_tensor,
    to_float_rgb,
    to_unit_range,
)


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG with a valid IHDR claiming ``width x height`` and no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _raises(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(ImageInputError, match=match) as info:
        fn(*args, **kwargs)
    return str(info.value)


# ------------------------------------------------------------------------------- files: refusals


def test_missing_file_names_path(tmp_path: Path) -> None:
    msg = _raises("no such file", load_image, tmp_path / "nope.png")
    assert "nope.png" in msg and "check the path" in msg


def test_directory_refused(tmp_path: Path) -> None:
    _raises("is a directory", load_image, tmp_path)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    msg = _raises("empty \\(0 bytes\\)", load_image, path)
    assert "empty.png" in msg and "re-download" in msg


@pytest.mark.parametrize("fmt,suffix", [("PNG", "png"), ("JPEG", "jpg")])
def test_truncated_file(tmp_path: Path, fmt: str, suffix: str) -> None:
    full = tmp_path / f"full.{suffix}"
    Image.fromarray(_noise(64, 64)).save(full, format=fmt)
    cut = tmp_path / f"cut.{suffix}"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])
    assert load_image(full).size == (64, 64)
    msg = _raises("truncated or corrupt", load_image, cut)
    assert f"cut.{suffix}" in msg and "re-download" in msg


def test_text_file_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("these are my notes, not pixels\n")
    msg = _raises("not a recognized image", load_image, path)
    assert "notes.png" in msg and "text file" in msg


def test_html_page_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_text("<!DOCTYPE html><html><body>404</body></html>")
    _raises("HTML page", load_image, path)


def test_decompression_bomb_header_refused_by_pillow_guard(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(100_000, 100_000))
    msg = _raises("decompression", load_image, path)
    assert "bomb.png" in msg and "MAX_IMAGE_PIXELS" in msg


def test_decompression_bomb_refused_by_max_pixels_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(_png_header_only(5000, 5000))  # 25 MP claimed, no data: never decoded
    msg = _raises("above the limit", load_image, path, max_pixels=1_000_000)
    assert "5000x5000" in msg and "max_pixels=25000000" in msg


def test_default_limit_decides_before_pillow(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(16384, 9217))  # just over DEFAULT_MAX_PIXELS, under Pillow's error
    msg = _raises("above the limit of 150,994,944 pixels", load_image, path)
    assert "16384x9217" in msg


def test_max_pixels_on_a_real_image(tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    Image.fromarray(_noise(40, 50)).save(path)
    _raises("2,000 pixels is above the limit of 1,000", load_image, path, max_pixels=1000)
    assert load_image(path, max_pixels=2000).size == (50, 40)


def test_pillow_bomb_warning_is_silenced_and_its_error_converted(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    warn_zone, error_zone = tmp_path / "w.png", tmp_path / "e.png"
    Image.fromarray(_noise(40, 40)).save(warn_zone)  # 1600 px: Pillow would warn
    Image.fromarray(_noise(50, 50)).save(error_zone)  # 2500 px > 2 * 1000: Pillow refuses
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(warn_zone).size == (40, 40)
    _raises("MAX_IMAGE_PIXELS", load_image, error_zone)


def test_load_image_rejects_non_path() -> None:
    _raises("expects a file path", load_image, Image.new("RGB", (4, 4)))


# ------------------------------------------------------------------------------- files: decoding


def test_one_by_one_and_thin(tmp_path: Path) -> None:
    tiny, thin = tmp_path / "tiny.png", tmp_path / "thin.png"
    Image.new("RGB", (1, 1), (255, 0, 0)).save(tiny)
    Image.new("RGB", (1, 500), (0, 0, 255)).save(thin)
    assert np.allclose(to_float_rgb(tiny), [[[1, 0, 0]]])
    arr = to_float_rgb(load_image(thin))
    assert arr.shape == (500, 1, 3) and np.allclose(arr[..., 2], 1.0)
    (t,) = to_batch_tensor([load_image(thin)], min_size=1)
    assert t.shape == (1, 3, 500, 1)
    msg = _raises("below the reward model's minimum", to_batch_tensor, [load_image(tiny), load_image(thin)], min_size=32)
    assert "images[0]" in msg and "1x1 px" in msg and "32" in msg
    msg = _raises("1x500 px", to_batch_tensor, [load_image(thin)], min_size=32)
    assert "to at least 32x32 px" in msg


def test_grayscale_png(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    Image.fromarray(np.array([[0, 128, 255]], dtype=np.uint8), mode="L").save(path)
    img = load_image(path)
    assert img.mode == "L"
    arr = to_float_rgb(img)
    assert arr.shape == (1, 3, 3)
    assert np.allclose(arr[0, :, 0], [0, 128 / 255, 1]) and np.allclose(arr[..., 0], arr[..., 2])


def test_16bit_png_scaled_by_65535(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(path)
    img = load_image(path)
    assert img.mode.startswith("I")
    arr = to_float_rgb(img)
    assert arr[0, 2, 0] == 1.0 and arr[0, 0, 0] == 0.0
    assert abs(arr[0, 1, 0] - 0.5) < 1e-4


def test_pil_mode_i_and_f() -> None:
    i16 = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))  # 16-bit data in mode I
    assert i16.mode == "I" and np.allclose(to_float_rgb(i16)[0, :, 0], [0, 1])
    i32 = Image.fromarray(np.array([[0, 2**31 - 1, -5]], dtype=np.int32))
    assert np.allclose(to_float_rgb(i32)[0, :, 0], [0, 1, 0])
    f = Image.fromarray(np.array([[0.25, 1.0]], dtype=np.float32))
    assert np.allclose(to_float_rgb(f)[0, :, 1], [0.25, 1.0])
    bad = Image.fromarray(np.array([[0.0, 200.0]], dtype=np.float32))
    _raises("0..255 data", to_float_rgb, bad)


def test_rgba_composited_over_white(tmp_path: Path) -> None:
    px = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 0, 128]]], dtype=np.uint8)
    path = tmp_path / "rgba.png"
    Image.fromarray(px, mode="RGBA").save(path)
    arr = to_float_rgb(load_image(path))
    assert np.allclose(arr[0, 0], [1, 0, 0])  # opaque red
    assert np.allclose(arr[0, 1], [1, 1, 1])  # transparent -> white, not the hidden red
    assert np.allclose(arr[0, 2], 1 - 128 / 255, atol=1e-6)  # half-transparent black -> mid gray
    assert np.allclose(to_float_rgb(px), arr)  # numpy HxWx4 follows the same rule
    assert np.allclose(to_float_rgb(torch.from_numpy(px).permute(2, 0, 1)), arr)  # and torch 4xHxW


def test_la_and_premultiplied_modes() -> None:
    la = Image.new("LA", (2, 1), (0, 0))
    assert np.allclose(to_float_rgb(la), 1.0)
    assert np.allclose(to_float_rgb(la.convert("La")), 1.0)
    rgba = Image.new("RGBA", (1, 1), (0, 0, 255, 255))
    assert np.allclose(to_float_rgb(rgba.convert("RGBa")), [[[0, 0, 1]]])


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (2, 2), 0)
    img.putpalette([10, 20, 30, 200, 0, 0] + [0] * 762)
    img.putpixel((1, 1), 1)
    img.info["transparency"] = 0
    path = tmp_path / "pal.png"
    img.save(path, transparency=0)
    loaded = load_image(path)
    assert loaded.mode == "P" and "transparency" in loaded.info
    arr = to_float_rgb(loaded)
    assert np.allclose(arr[0, 0], 1.0)  # transparent index -> white
    assert np.allclose(arr[1, 1], [200 / 255, 0, 0])


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)
    img = load_image(path)
    assert img.mode == "CMYK"
    mean = to_float_rgb(img).reshape(-1, 3).mean(0)
    assert mean[0] > 0.9 and mean[1] < 0.1 and mean[2] < 0.1


@pytest.mark.parametrize("mode", ["YCbCr", "HSV", "1", "L", "P"])
def test_other_modes_give_rgb(mode: str) -> None:
    arr = to_float_rgb(Image.new("RGB", (5, 3), (255, 255, 255)).convert(mode))
    assert arr.shape == (3, 5, 3) and arr.dtype == np.float32
    assert np.allclose(arr, 1.0, atol=0.02)


def test_lab_mode_uses_real_cielab() -> None:
    # Pillow/littleCMS 8-bit Lab of sRGB red, white and blue (L*255/100, a+128, b+128).
    red = to_float_rgb(Image.new("LAB", (1, 1), (138, 209, 198)))[0, 0]
    white = to_float_rgb(Image.new("LAB", (1, 1), (255, 128, 128)))[0, 0]
    blue = to_float_rgb(Image.new("LAB", (1, 1), (75, 196, 16)))[0, 0]
    assert red[0] > 0.95 and red[1:].max() < 0.05
    assert np.allclose(white, 1.0, atol=1e-3)
    assert blue[2] > 0.95 and blue[:2].max() < 0.05


def test_exif_orientation_6_rotates(tmp_path: Path) -> None:
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = (255, 0, 0)  # left half red
    stored[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rot.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    img = load_image(path)
    assert img.size == (20, 40)  # width and height swapped
    arr = to_float_rgb(img)
    top, bottom = arr[:18].reshape(-1, 3).mean(0), arr[22:].reshape(-1, 3).mean(0)
    assert top[0] > 0.9 and top[2] < 0.1  # the left (red) edge is now on top
    assert bottom[2] > 0.9 and bottom[0] < 0.1


# ------------------------------------------------------------------------------------ numpy input


def test_numpy_dtypes_and_shapes() -> None:
    assert np.allclose(to_float_rgb(np.full((2, 3), 255, np.uint8)), 1.0)
    assert np.allclose(to_float_rgb(np.full((2, 3, 1), 65535, np.uint16)), 1.0)
    assert np.allclose(to_float_rgb(np.ones((2, 3), bool)), 1.0)
    two = np.zeros((2, 3, 2), np.float32)  # gray + alpha 0 -> white
    assert np.allclose(to_float_rgb(two), 1.0)
    big_endian = np.full((2, 2), 65535, dtype=">u2")
    assert np.allclose(to_float_rgb(big_endian), 1.0)
    batch_of_one = np.full((1, 4, 5, 3), 0.25, np.float64)
    out = to_float_rgb(batch_of_one)
    assert out.shape == (4, 5, 3) and out.dtype == np.float32 and np.allclose(out, 0.25)
    assert to_float_rgb(np.zeros((4, 5, 3))[::-1, ::2]).flags.c_contiguous


def test_float_slack_clips_and_beyond_refuses() -> None:
    x = np.array([[-FLOAT_SLACK / 2, 1 + FLOAT_SLACK / 2]], np.float32)
    assert np.allclose(to_float_rgb(x)[0, :, 0], [0, 1])
    _raises("0..255 data: divide by 255", to_float_rgb, np.full((2, 2, 3), 200.0))
    _raises("\\(x \\+ 1\\) / 2", to_float_rgb, np.full((2, 2, 3), -0.8))
    _raises("rescale it", to_float_rgb, np.array([[-5.0, 1e6]]))


def test_numpy_nan_inf_refused_with_counts() -> None:
    x = np.zeros((4, 4, 3), np.float32)
    x[0, 0, 0], x[1, 1, 1], x[2, 2, 2] = np.nan, np.inf, -np.inf
    msg = _raises("1 NaN and 2 infinite", to_float_rgb, x, name="sr_output")
    assert "sr_output" in msg and "nan_to_num" in msg


@pytest.mark.parametrize(
    "array,match",
    [
        (np.zeros((4, 4), np.int64), "dtype int64 has no defined pixel range"),
        (np.zeros((4, 4), np.int8), "astype\\(np.uint8\\)"),
        (np.zeros((4, 4), np.uint32), "dtype uint32"),
        (np.zeros((4, 4), np.complex64), "complex values"),
        (np.zeros((4, 4), object), "not numeric"),
        (np.array([["a"]]), "not numeric"),
        (np.zeros((3, 16, 16), np.float32), "channels-first.*transpose\\(1, 2, 0\\)"),
        (np.zeros((16, 16, 5), np.float32), "5 channels"),
        (np.zeros((16,), np.float32), "1 dimensions"),
        (np.zeros((0, 4, 3), np.float32), "empty image"),
        (np.zeros((2, 4, 4, 3), np.float32), "batch of 2"),
    ],
)
def test_numpy_refusals(array: np.ndarray, match: str) -> None:
    msg = _raises(match, to_float_rgb, array)
    assert describe(array) in msg


# ------------------------------------------------------------------------------------ torch input


def test_torch_inputs() -> None:
    x = torch.rand(3, 6, 7, requires_grad=True)
    out = to_float_rgb(x)
    assert out.shape == (6, 7, 3) and np.allclose(out, x.detach().permute(1, 2, 0).numpy())
    assert np.allclose(to_float_rgb(torch.full((1, 2, 2), 255, dtype=torch.uint8)), 1.0)
    assert np.allclose(to_float_rgb(torch.ones(2, 2, dtype=torch.bool)), 1.0)
    assert np.allclose(to_float_rgb(torch.full((3, 2, 2), 0.5, dtype=torch.bfloat16)), 0.5)
    assert to_float_rgb(torch.rand(1, 3, 4, 5)).shape == (4, 5, 3)


@pytest.mark.parametrize(
    "tensor,match",
    [
        (torch.zeros(3, 4, 4, dtype=torch.int64), "torch.uint8"),
        (torch.zeros(3, 4, 4, dtype=torch.complex64), "complex values"),
        (torch.zeros(16, 16, 3), "channels-last.*permute\\(2, 0, 1\\)"),
        (torch.zeros(8, 16, 16), "8 channels"),
        (torch.full((3, 2, 2), 2.0), "divide by 255"),
        (torch.zeros(2, 3, 4, 4), "batch of 2.*to_batch_tensor"),
    ],
)
def test_torch_refusals(tensor: torch.Tensor, match: str) -> None:
    _raises(match, to_float_rgb, tensor)


def test_to_batch_tensor_mixed_list() -> None:
    items = [Image.new("RGB", (8, 6), (255, 0, 0)), np.zeros((5, 7), np.uint8), torch.ones(3, 4, 9)]
    out = to_batch_tensor(items)
    assert [tuple(t.shape) for t in out] == [(1, 3, 6, 8), (1, 3, 5, 7), (1, 3, 4, 9)]
    assert all(t.dtype == torch.float32 for t in out)
    assert torch.allclose(out[0][0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))


def test_to_batch_tensor_batches_split() -> None:
    batch = torch.rand(3, 3, 8, 8)
    out = to_batch_tensor(batch, dtype=torch.float64)
    assert len(out) == 3 and out[1].dtype == torch.float64
    assert torch.allclose(out[2][0].float(), batch[2])
    assert len(to_batch_tensor(np.zeros((2, 8, 8, 3), np.uint8))) == 2
    assert len(to_batch_tensor([batch, torch.rand(3, 8, 8)])) == 4


def test_to_batch_tensor_names_the_bad_image() -> None:
    bad = torch.rand(2, 3, 8, 8)
    bad[1, 0, 0, 0] = float("nan")
    msg = _raises("contains 1 NaN", to_batch_tensor, [torch.rand(3, 8, 8), bad])
    assert "images[1][1]" in msg
    msg = _raises("contains 0 NaN and 1 infinite", to_batch_tensor, [np.zeros((4, 4)), np.array([[0.0, np.inf]])])
    assert "images[1] (numpy float64 (1, 2))" in msg


def test_to_batch_tensor_layout_and_argument_errors() -> None:
    _raises("BxHxWxC.*permute\\(0, 3, 1, 2\\)", to_batch_tensor, torch.rand(2, 8, 8, 3))
    _raises("no images given", to_batch_tensor, [])
    _raises("nested list", to_batch_tensor, [[np.zeros((4, 4))]])
    _raises("unsupported input type", to_batch_tensor, [{"pixels": 1}])
    with pytest.raises(TypeError, match="floating"):
        to_batch_tensor(torch.rand(3, 4, 4), dtype=torch.int64)


def test_to_batch_tensor_device_and_paths(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(_noise(9, 11)).save(path)
    (t,) = to_batch_tensor(str(path), device="cpu")
    assert t.shape == (1, 3, 9, 11) and t.device.type == "cpu"
    assert torch.allclose(t[0].permute(1, 2, 0), torch.from_numpy(_noise(9, 11).astype(np.float32) / 255))


def test_describe() -> None:
    assert describe(Image.new("RGBA", (640, 480))) == "PIL RGBA 640x480"
    assert describe(np.zeros((480, 640, 3), np.uint16)) == "numpy uint16 (480, 640, 3)"
    assert describe(torch.zeros(1, 3, 4, 5)) == "torch float32 (1, 3, 4, 5)"
    assert describe("x.png") == "file 'x.png'"
    assert describe(3) == "int"


def test_to_unit_range_keeps_backend() -> None:
    assert isinstance(to_unit_range(torch.zeros(2, 2, dtype=torch.uint8)), torch.Tensor)
    y = to_unit_range(np.full((2,), 65535, np.uint16))
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and np.all(y == 1.0)


# ------------------------------------------------------------------------------- property tests

_DTYPES = st.sampled_from(
    [np.uint8, np.uint16, np.int16, np.int64, np.float16, np.float32, np.float64, np.bool_, np.complex64]
)
_ANY_ARRAYS = hnp.arrays(dtype=_DTYPES, shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
_VALID_ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64]),
    shape=st.tuples(st.integers(1, 6), st.integers(1, 6), st.sampled_from([1, 2, 3, 4])),
    elements=st.floats(-0.0078125, 1.0078125, width=32),  # exact in float32, inside the slack
)


def _check_output(array: np.ndarray) -> None:
    try:
        out = to_float_rgb(array)
    except ImageInputError:
        return
    assert out.dtype == np.float32 and out.ndim == 3 and out.shape[-1] == 3
    assert out.shape[:2] == (array.shape[-3:-1] if array.ndim >= 3 else array.shape)
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


@settings(max_examples=50, deadline=None)
@given(_ANY_ARRAYS)
def test_property_any_numpy_array(array: np.ndarray) -> None:
    _check_output(array)


@settings(max_examples=30, deadline=None)
@given(_VALID_ARRAYS)
def test_property_valid_float_arrays_always_convert(array: np.ndarray) -> None:
    out = to_float_rgb(array)
    assert out.shape == array.shape[:2] + (3,) and 0.0 <= out.min() and out.max() <= 1.0
