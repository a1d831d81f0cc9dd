"""training/data/qt_rcc.py, the reader of Qt binary resource bundles.

The tiny bundles are written here byte by byte from the format as Qt's rcc writes it
(qtbase src/tools/rcc/rcc.cpp: RCCResourceLibrary::writeHeader / writeDataBlobs / writeDataNames /
writeDataStructure; node layout of RCCFileInfo::writeDataInfo), independently of the reader. The
real-package test reads every bundle of Debian gcompris-qt-data (when installed) and decodes its
images with PIL.
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from training.data.qt_rcc import RccBundle, RccFormatError

GCOMPRIS_RCC = Path("/usr/share/gcompris-qt/rcc")


def _qt_hash(name: str) -> int:
    """qt_hash of rcc.cpp (the value rcc stores beside each name; readers do not need it)."""
    h = 0
    for ch in name:
        h = ((h << 4) + ord(ch)) & 0xFFFFFFFF
        h ^= (h & 0xF0000000) >> 23
        h &= 0x0FFFFFFF
    return h


def build_rcc(files: dict[str, bytes], version: int = 3, compress: frozenset[str] = frozenset(),
              flag_override: dict[str, int] | None = None) -> bytes:
    """A binary .rcc holding ``files`` (path -> bytes); paths in ``compress`` are qCompress-ed."""
    # directory tree: dict of dicts, files as bytes
    root: dict = {}
    for path, data in files.items():
        *dirs, leaf = path.split("/")
        node = root
        for d in dirs:
            node = node.setdefault(d, {})
        node[leaf] = path
    names = bytearray()
    name_offset: dict[str, int] = {}
    blobs = bytearray()
    blob_offset: dict[str, int] = {}

    def add_name(name: str) -> int:
        if name not in name_offset:
            name_offset[name] = len(names)
            encoded = name.encode("utf-16-be")
            names.extend(struct.pack(">HI", len(name), _qt_hash(name)) + encoded)
        return name_offset[name]

    for path, data in files.items():
        payload = struct.pack(">I", len(data)) + zlib.compress(data) if path in compress else data
        blob_offset[path] = len(blobs)
        blobs.extend(struct.pack(">I", len(payload)) + payload)
    # breadth-first node numbering, as rcc does: the children of a directory are consecutive
    nodes: list[tuple[str, object]] = [("", root)]
    records: list[bytes] = []
    i = 0
    while i < len(nodes):
        name, obj = nodes[i]
        noff = add_name(name) if i else 0
        if isinstance(obj, dict):
            children = sorted(obj.items(), key=lambda kv: _qt_hash(kv[0]))
            rec = struct.pack(">IHII", noff, 0x02, len(children), len(nodes))
            nodes.extend(children)
        else:
            flags = 0x01 if obj in compress else 0x00
            flags = (flag_override or {}).get(obj, flags)
            rec = struct.pack(">IHHHI", noff, flags, 0, 0, blob_offset[obj])
        if version >= 2:
            rec += struct.pack(">Q", 1_700_000_000_000)
        records.append(rec)
        i += 1
    header_len = 24 if version >= 3 else 20
    data_off = header_len
    names_off = data_off + len(blobs)
    tree_off = names_off + len(names)
    header = b"qres" + struct.pack(">IIII", version, tree_off, data_off, names_off)
    if version >= 3:
        header += struct.pack(">I", 0)
    return header + bytes(blobs) + bytes(names) + b"".join(records)


FILES = {
    "a/b/photo.bin": bytes(range(256)) * 3,
    "a/readme.txt": "hello from qres\n".encode() * 20,
    "top.txt": b"top",
    "a/b/c/deep.txt": "déjà vu ✓".encode(),
}


@pytest.mark.parametrize("version", [1, 2, 3])
def test_reads_a_built_bundle(version: int) -> None:
    data = build_rcc(FILES, version=version, compress=frozenset({"a/readme.txt"}))
    bundle = RccBundle(data, "tiny.rcc")
    assert bundle.version == version
    assert bundle.files() == sorted(FILES)
    for path, content in FILES.items():
        assert bundle.read(path) == content
        assert bundle.read("/" + path) == content
    assert bundle.entries["a/readme.txt"].compression == "zlib"
    assert bundle.entries["top.txt"].compression == "none"
    assert "a/b/photo.bin" in bundle and "a/b" not in bundle


def test_errors_name_the_problem(tmp_path: Path) -> None:
    good = build_rcc(FILES, compress=frozenset({"a/readme.txt"}))
    with pytest.raises(RccFormatError, match=r"x\.rcc: not a Qt resource bundle.*b'qres'"):
        RccBundle(b"PK\x03\x04" + good[4:], "x.rcc")
    with pytest.raises(RccFormatError, match="version 7; this reader knows versions 1 to 3"):
        RccBundle(good[:4] + struct.pack(">I", 7) + good[8:])
    with pytest.raises(RccFormatError, match="truncated"):
        RccBundle(good[:-30])
    with pytest.raises(KeyError, match="has no file 'nope.txt'"):
        RccBundle(good).read("nope.txt")
    with pytest.raises(FileNotFoundError, match="missing.rcc does not exist"):
        RccBundle.open(tmp_path / "missing.rcc")
    bad_flags = build_rcc(FILES, flag_override={"top.txt": 0x08})
    with pytest.raises(RccFormatError, match="unknown flags 0x8"):
        RccBundle(bad_flags)
    # zlib data whose length header lies
    lying = bytearray(good)
    bundle = RccBundle(good)
    entry = bundle.entries["a/readme.txt"]
    lying[entry.offset: entry.offset + 4] = struct.pack(">I", 5)
    with pytest.raises(RccFormatError, match="decompressed to 320 bytes, its header says 5"):
        RccBundle(bytes(lying)).read("a/readme.txt")


def test_zstd_entry_without_zstandard_is_an_error() -> None:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover - not installed by the project's scripts
        pytest.skip("zstandard is installed: the error path is not reachable")
    bundle = RccBundle(build_rcc(FILES, flag_override={"top.txt": 0x04}))
    assert bundle.entries["top.txt"].compression == "zstd"
    with pytest.raises(RccFormatError, match="zstd-compressed; install `zstandard`"):
        bundle.read("top.txt")


def test_real_gcompris_bundles() -> None:
    if not GCOMPRIS_RCC.is_dir():
        pytest.skip("Debian gcompris-qt-data is not installed (scripts/setup_env.sh train,photos installs it)")
    bundle = RccBundle.open(GCOMPRIS_RCC / "explore_monuments.rcc")
    assert bundle.version == 3
    webps = [p for p in bundle.files() if p.endswith(".webp")]
    assert len(webps) >= 48
    assert "gcompris/src/activities/explore_monuments/resource/wonders/petra.webp" in bundle
    with Image.open(io.BytesIO(bundle.read(webps[0]))) as im:
        im.load()
        assert im.format == "WEBP" and min(im.size) > 100
    # every zlib-compressed file of a bundle decompresses to the length its qCompress header states
    erase = RccBundle.open(GCOMPRIS_RCC / "erase.rcc")
    compressed = [p for p, e in erase.entries.items() if e.compression == "zlib"]
    assert compressed
    for path in compressed:
        erase.read(path)
    info = erase.read("gcompris/src/activities/erase/ActivityInfo.qml").decode("utf-8")
    assert info.startswith("/* GCompris - ActivityInfo.qml") and 'name: "erase/Erase.qml"' in info
