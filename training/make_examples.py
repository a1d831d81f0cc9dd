"""Make the bundled example images (``examples/``) from test-split photos: real SR outputs of real
degraded inputs, one image with a locally swapped defect, and one clean reference.

    python -m training.make_examples

Deterministic (fixed seeds); the photos come from the test split, never used in training.
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from training.data.artifacts import ARTIFACTS
from training.data.degradations import degrade
from training.data.photos import photo_pool
from training.data.sr_pool import NetworkSR

ROOT = Path(__file__).resolve().parent.parent

OUT = ROOT / "examples"
SIZE = 384
PAINTERLY_BOX = (slice(40, 150), slice(30, 160))  # the smoothed patch of chelsea_local_painterly.png (rows, columns)


def center_crop(img: np.ndarray, size: int, scale: float) -> np.ndarray:
    h, w = img.shape[:2]
    img = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    h, w = img.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(img[y:y + size, x:x + size])


def painterly_source(photos: dict) -> np.ndarray:
    """The clean crop of the cat that ``chelsea_local_painterly.png`` smooths a patch of (float, 288 px)."""
    return center_crop(photos["skimage/chelsea"].load(), 288, 1.0)


def save(img: np.ndarray, name: str) -> None:
    arr = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    path = OUT / name
    if path.suffix == ".jpg":
        Image.fromarray(arr).save(path, quality=95)
    else:
        Image.fromarray(arr).save(path, optimize=True)
    print(path, file=sys.stderr)


def main() -> int:
    OUT.mkdir(exist_ok=True)
    photos = {p.id: p for p in photo_pool("test")}
    rng = np.random.default_rng(2026)
    astro = center_crop(photos["skimage/astronaut"].load(), SIZE, 0.75)
    lr = degrade(astro, 4, rng)
    save(NetworkSR("realesrgan-x4plus")(lr, rng), "astronaut_realesrgan_x4.png")
    save(astro, "astronaut_clean.jpg")
    butterfly = center_crop(photos["opencv/butterfly.jpg"].load(), 352, 1.0)
    lr = degrade(butterfly, 4, np.random.default_rng(7))
    save(NetworkSR("realesr-animevideov3-x4")(lr, rng), "butterfly_animevideov3_x4.png")
    cat = painterly_source(photos)
    painted = ARTIFACTS["painterly_smooth"](cat, np.random.default_rng(3), 1.0)
    mask = np.zeros(cat.shape[:2], np.float32)
    mask[PAINTERLY_BOX] = 1.0
    mask = cv2.GaussianBlur(mask, (0, 0), 2.0)[..., None]
    save(mask * painted + (1 - mask) * cat, "chelsea_local_painterly.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
