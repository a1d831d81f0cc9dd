"""The HR photo pool: real photographs available offline, split train/val/test by source photo.

Sources (DESIGN.md §4): Debian ``mate-backgrounds`` (nature photos), ``plasma-workspace-wallpapers``
(11 photos), ``opencv-doc`` (classic test photos), scikit-image's shipped images, and any user folder.
The split is a pure function of the photo's id (a hash), so it never depends on which sources are
installed and a photo never appears in two splits; crops are taken later, inside one split.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
from PIL import Image

from diffusers_ext.image_io import load_image, to_float_rgb

MATE_DIR = Path("/usr/share/backgrounds/mate/nature")
PLASMA_DIR = Path("/usr/share/wallpapers")
PLASMA_PHOTOS = ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf",
                 "Grey", "Kite", "OneStandsOut", "Path", "summer_1am")
OPENCV_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
OPENCV_PHOTOS = ("aero1.jpg", "aero3.jpg", "apple.jpg", "baboon.jpg", "basketball1.png", "board.jpg",
                 "building.jpg", "butterfly.jpg", "fruits.jpg", "home.jpg", "leuvenA.jpg", "leuvenB.jpg",
                 "messi5.jpg", "orange.jpg", "rubberwhale1.png", "squirrel_cls.jpg", "stuff.jpg",
                 "graf1.png", "aloeL.jpg", "HappyFish.jpg", "smarties.png", "lena.jpg")
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "brick",
                  "grass", "gravel", "camera", "coins", "moon", "immunohistochemistry", "cell")
SKIMAGE_FILES = ("motorcycle_left.png",)  # photos in the wheel that skimage.data returns only in tuples
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Photo:
    """One source photograph. ``load()`` gives float32 RGB HxWx3 in [0, 1]."""

    id: str
    source: str
    loader: Callable[[], np.ndarray]

    def load(self) -> np.ndarray:
        return self.loader()

    @property
    def split(self) -> str:
        return split_of(self.id)


def split_of(photo_id: str, fractions: tuple[float, float, float] = (0.6, 0.15, 0.25)) -> str:
    """Deterministic split of a photo id: a hash in [0, 1) against cumulative fractions."""
    u = int(hashlib.sha1(photo_id.encode()).hexdigest()[:8], 16) / 2**32
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


def _file_loader(path: Path) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        return to_float_rgb(load_image(path), str(path))
    return load


def _skimage_loader(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        return to_float_rgb(getattr(data, name)(), f"skimage.data.{name}")
    return load


def folder_photos(folder: str | Path, source: Optional[str] = None, min_side: int = 256) -> list[Photo]:
    """Every image file under ``folder`` (recursively) with both sides >= ``min_side``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"photo folder {folder} does not exist")
    out = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            try:
                with Image.open(p) as im:
                    if min(im.size) < min_side:
                        continue
            except OSError:
                continue
            out.append(Photo(f"{source or folder.name}/{p.relative_to(folder)}", source or "user", _file_loader(p)))
    return out


def offline_photos(sources: Iterable[str] = ("mate", "plasma", "opencv", "skimage"), min_side: int = 256) -> list[Photo]:
    """The photos of our offline sources that are installed on this machine."""
    photos: list[Photo] = []
    sources = set(sources)
    if "mate" in sources and MATE_DIR.is_dir():
        photos += [Photo(f"mate/{p.name}", "mate", _file_loader(p)) for p in sorted(MATE_DIR.glob("*.jpg"))]
    if "plasma" in sources:
        for name in PLASMA_PHOTOS:
            p = PLASMA_DIR / name / "contents" / "images" / "2560x1600.jpg"
            if p.is_file():
                photos.append(Photo(f"plasma/{name}", "plasma", _file_loader(p)))
    if "opencv" in sources:
        for name in OPENCV_PHOTOS:
            p = OPENCV_DIR / name
            if p.is_file():
                with Image.open(p) as im:
                    if min(im.size) < min_side:
                        continue
                photos.append(Photo(f"opencv/{name}", "opencv", _file_loader(p)))
    if "skimage" in sources:
        try:
            import skimage.data
        except ImportError:
            pass
        else:
            photos += [Photo(f"skimage/{n}", "skimage", _skimage_loader(n)) for n in SKIMAGE_PHOTOS]
            data_dir = Path(skimage.data.__file__).parent
            photos += [Photo(f"skimage/{n}", "skimage", _file_loader(data_dir / n)) for n in SKIMAGE_FILES
                       if (data_dir / n).is_file()]
    return photos


def photo_pool(split: Optional[str] = None, extra_folders: Iterable[str | Path] = (),
               sources: Iterable[str] = ("mate", "plasma", "opencv", "skimage")) -> list[Photo]:
    """All photos (offline sources + ``extra_folders``), optionally only those of ``split``."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    photos = offline_photos(sources)
    for folder in extra_folders:
        photos += folder_photos(folder)
    if not photos:
        raise FileNotFoundError(
            "no photos found: install the offline sources (apt-get install mate-backgrounds "
            "plasma-workspace-wallpapers opencv-doc; pip install scikit-image) or pass --photos DIR"
        )
    return [p for p in photos if split is None or p.split == split]
