"""A small corpus of bad and odd inputs for the front-door reliability tests
(tests/test_reliability_inputs.py). Each builder writes or makes its inputs and returns
``{name: Case}``: what a front door must do with it.

* ``Case.ok``: a good-but-odd input is scored and its map has ``Case.shape`` (rows, cols);
* otherwise the input is refused with an error whose message matches ``Case.error`` (a regex).

The pixels are a seeded gradient + noise (no downloads); every image is small (< 300 px a side).
"""
from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

H, W = 48, 64  # rows, columns of the base image: below the tiny model's tile size (128)
TRUNCATED = "truncated or corrupt"
MINIMUM = "minimum"


@dataclass(frozen=True)
class Case:
    """One corpus entry. ``value``: the path (files) or the object (in-memory inputs)."""

    value: Any
    ok: bool
    shape: Optional[tuple[int, int]] = None  # expected map size (rows, cols) of a good input
    error: str = ""  # regex the refusal's message must match (besides naming the input)


def good(value: Any, shape: tuple[int, int]) -> Case:
    return Case(value, True, shape=shape)


def bad(value: Any, error: str) -> Case:
    return Case(value, False, error=error)


def base_rgb(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """uint8 ``h x w x 3``: a colour gradient with noise (texture for JPEG / PNG to encode)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x / max(w - 1, 1), y / max(h - 1, 1), 0.5 + 0 * x], -1) * 200 + rng.integers(0, 55, (h, w, 3))
    return img.astype(np.uint8)


def _encoded(fmt: str, **save_kwargs: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(base_rgb()).save(buf, fmt, **save_kwargs)
    return buf.getvalue()


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A valid-looking PNG (about 100 bytes) whose header claims ``width x height`` 8-bit gray
    pixels: a decompression bomb as far as any reader that trusts the header is concerned."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1), 9)  # one filtered row; the rest is "missing"
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def image_files(folder: Path) -> dict[str, Case]:
    """Write the file corpus into ``folder``; keys are the file names. Sorted by name, a bad file
    comes first ("1x1.png"), so a front door that stops at the first failure loses good files."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = base_rgb()
    cases: dict[str, Case] = {}

    def save(name: str, im: Image.Image, shape: tuple[int, int], **kw: Any) -> None:
        im.save(folder / name, **kw)
        cases[name] = good(folder / name, shape)

    def write(name: str, data: bytes, error: str) -> None:
        (folder / name).write_bytes(data)
        cases[name] = bad(folder / name, error)

    # good but odd
    save("rgb.png", Image.fromarray(rgb), (H, W))
    save("gray.png", Image.fromarray(rgb).convert("L"), (H, W))
    save("gray16.png", Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)), (H, W))  # 16-bit PNG
    save("rgba.png", Image.fromarray(np.dstack([rgb, np.full((H, W), 128, np.uint8)]), "RGBA"), (H, W))
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), (H, W), quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    save("exif_rot6.jpg", Image.fromarray(rgb), (W, H), exif=exif)  # displayed (and scored) 48 wide x 64 high
    save("thin_wide.png", Image.fromarray(base_rgb(16, 300)), (16, 300))  # minimum height, tiled along its width
    # bad
    write("empty.png", b"", r"empty \(0 bytes\)")
    write("empty.jpg", b"", r"empty \(0 bytes\)")
    png, jpg = _encoded("PNG"), _encoded("JPEG", quality=90)
    write("truncated.png", png[: len(png) // 2], TRUNCATED)
    write("truncated.jpg", jpg[: len(jpg) // 2], TRUNCATED)
    write("text.png", b"these are notes, not pixels\n", "not a recognized image file.*text file")
    # above Pillow's own hard limit (179 MP), and between ours (151 MP) and Pillow's
    write("bomb.png", png_bomb(), r"(900,?000,?000) pixels.*decompression.bomb")
    write("bomb_13k.png", png_bomb(13000, 13000), r"13000x13000 = 169,000,000 pixels is above the limit")
    for name, (h, w) in {"1x1.png": (1, 1), "thin_1x500.png": (500, 1), "thin_500x1.png": (1, 500)}.items():
        Image.fromarray(base_rgb(h, w)).save(folder / name)
        cases[name] = bad(folder / name, MINIMUM)
    return cases


def array_inputs() -> dict[str, Case]:
    """In-memory inputs (numpy / torch) for the Python API; keys are short names."""
    u8 = base_rgb()
    f = u8.astype(np.float32) / 255.0
    t = torch.from_numpy(f).permute(2, 0, 1).contiguous()  # 3 x H x W
    nan, inf = f.copy(), t.clone()
    nan[3, 4, 1] = np.nan
    inf[0, 5, 6] = float("inf")
    batch = torch.stack([t, t.clone(), t.clone()])
    batch[1, 2, 7, 7] = float("nan")
    return {
        "bool_hwc": good(u8 > 127, (H, W)),
        "uint16_hwc": good(u8.astype(np.uint16) * 257, (H, W)),
        "gray_alpha_hwc2": good(np.dstack([f[..., 0], np.full((H, W), 0.5, np.float32)]), (H, W)),
        "torch_gray_alpha_2hw": good(t[:2].clone(), (H, W)),
        "numpy_nan": bad(nan, r"1 NaN and 0 infinite.*nan_to_num"),
        "torch_inf": bad(inf, r"0 NaN and 1 infinite.*torch.nan_to_num"),
        "torch_batch_one_nan": bad(batch, r"\[1\].*1 NaN"),
        "int64": bad(u8.astype(np.int64), "int64 has no defined pixel range"),
        "complex": bad(f.astype(np.complex64), "complex values are not pixels"),
        "torch_hwc": bad(t.permute(1, 2, 0).contiguous(), r"channels-last.*permute\(2, 0, 1\)"),
        "numpy_chw": bad(f.transpose(2, 0, 1).copy(), r"channels-first.*transpose\(1, 2, 0\)"),
        "torch_5d": bad(t[None, None], "5 dimensions"),
        "numpy_5_channels": bad(np.dstack([f, f[..., :2]]), "5 channels"),
        "torch_5_channels": bad(torch.cat([t, t[:2]]), "5 channels"),
        "tiny_1x1": bad(f[:1, :1], MINIMUM),
    }


# ------------------------------------------------------------------------------------ weights

WEIGHTS = "diffusion_pytorch_model.safetensors"


def model_folders(good_folder: Path, dest: Path) -> dict[str, Case]:
    """Broken copies of the model folder ``good_folder`` (config.json + safetensors) under ``dest``.
    Keys are folder names; each must be refused with a message matching ``Case.error``."""
    data = (good_folder / WEIGHTS).read_bytes()
    out: dict[str, Case] = {}

    def copy(name: str) -> Path:
        folder = dest / name
        shutil.copytree(good_folder, folder)
        return folder

    corrupt = copy("corrupt_weights")
    (corrupt / WEIGHTS).write_bytes(np.random.default_rng(0).bytes(len(data)))
    out["corrupt_weights"] = bad(corrupt, "corrupt or truncated")
    cut = copy("truncated_weights")
    (cut / WEIGHTS).write_bytes(data[: len(data) // 2])
    out["truncated_weights"] = bad(cut, "corrupt or truncated")
    edited = copy("mismatched_config")
    cfg = json.loads((edited / "config.json").read_text())
    cfg["decoder_channels"] = int(cfg["decoder_channels"]) + 4
    (edited / "config.json").write_text(json.dumps(cfg))
    out["mismatched_config"] = bad(edited, "config.json does not match the weights")
    pickled = copy("pickle_bin")
    (pickled / WEIGHTS).unlink()
    from safetensors.torch import load_file

    torch.save(load_file(str(good_folder / WEIGHTS)), pickled / "diffusion_pytorch_model.bin")
    out["pickle_bin"] = bad(pickled, "safetensors only")
    return out
