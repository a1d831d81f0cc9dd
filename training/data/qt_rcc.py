"""Reader of Qt's binary resource bundles (``.rcc`` files written by ``rcc -binary``).

The format (Qt's ``src/tools/rcc/rcc.cpp`` writes it, ``src/corelib/io/qresource.cpp`` reads it);
every number is big-endian:

* header: ``b"qres"``, version (u32, 1 to 3), tree offset, data offset, names offset (u32 each),
  and from version 3 on the overall flags (u32);
* tree: an array of nodes, node 0 the root directory. A node is the offset of its name (u32),
  its flags (u16: 1 zlib-compressed, 2 directory, 4 zstd-compressed), then for a directory the
  number of children (u32) and the index of the first child (u32), for a file its country (u16),
  language (u16) and the offset of its data (u32); from version 2 on, the last-modified time in ms
  (u64) follows. Nodes are 14 bytes long in version 1, 22 from version 2;
* names: at their offset a length in UTF-16 code units (u16), a hash (u32), the UTF-16BE text;
* data: at their offset a length (u32) and the bytes. A zlib-compressed file holds ``qCompress``
  output: the uncompressed length (u32), then a zlib stream. A zstd-compressed one holds a zstd
  frame; it is decoded only when the ``zstandard`` module is installed (never the case for the
  bundles this project reads, so it is not a dependency).

>>> bundle = RccBundle.open("/usr/share/gcompris-qt/rcc/explore_monuments.rcc")   # doctest: +SKIP
>>> [p for p in bundle.files() if p.endswith(".webp")][:1]                         # doctest: +SKIP
['gcompris/src/activities/explore_monuments/resource/images/...webp']
>>> data = bundle.read(path)                                                        # doctest: +SKIP
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

MAGIC = b"qres"
FLAG_COMPRESSED, FLAG_DIRECTORY, FLAG_COMPRESSED_ZSTD = 0x01, 0x02, 0x04
_KNOWN_FLAGS = FLAG_COMPRESSED | FLAG_DIRECTORY | FLAG_COMPRESSED_ZSTD


class RccFormatError(ValueError):
    """The bytes are not a Qt binary resource bundle this reader understands."""


@dataclass(frozen=True)
class RccFile:
    """One file of a bundle: its path (``/``-separated, no leading ``/``), where its stored bytes lie
    in the bundle, how they are compressed (``"none"``, ``"zlib"`` or ``"zstd"``) and its locale."""

    path: str
    offset: int
    stored_size: int
    compression: str
    country: int
    language: int


class RccBundle:
    """The file tree of one ``.rcc`` bundle, read from bytes; :meth:`read` decompresses a file."""

    def __init__(self, data: bytes, where: str = "<bytes>") -> None:
        self.where = where
        self._data = data
        if len(data) < 20 or data[:4] != MAGIC:
            raise RccFormatError(f"{where}: not a Qt resource bundle (the file must begin with b'qres', "
                                 f"it begins with {data[:4]!r}); give a file written by `rcc -binary`")
        self.version, tree, self._data_offset, self._names_offset = struct.unpack_from(">4I", data, 4)
        if not 1 <= self.version <= 3:
            raise RccFormatError(f"{where}: rcc format version {self.version}; this reader knows versions 1 to 3")
        self.flags = struct.unpack_from(">I", data, 20)[0] if self.version >= 3 else 0
        for label, offset in (("tree", tree), ("data", self._data_offset), ("names", self._names_offset)):
            if offset >= len(data):
                raise RccFormatError(f"{where}: {label} offset {offset} lies beyond the end of the "
                                     f"{len(data)}-byte file (truncated?)")
        self._tree = tree
        self._node_size = 14 if self.version == 1 else 22
        self.entries: dict[str, RccFile] = {}
        self._walk(0, "", depth=0)

    @classmethod
    def open(cls, path: str | Path) -> "RccBundle":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Qt resource bundle {path} does not exist")
        return cls(path.read_bytes(), str(path))

    # ---- parsing
    def _unpack(self, fmt: str, offset: int, what: str) -> tuple:
        try:
            return struct.unpack_from(fmt, self._data, offset)
        except struct.error:
            raise RccFormatError(f"{self.where}: {what} at byte {offset} runs past the end of the "
                                 f"{len(self._data)}-byte file (truncated?)") from None

    def _name(self, offset: int) -> str:
        at = self._names_offset + offset
        length, _hash = self._unpack(">HI", at, "a name")
        raw = self._data[at + 6: at + 6 + 2 * length]
        if len(raw) != 2 * length:
            raise RccFormatError(f"{self.where}: the name at byte {at} runs past the end of the file")
        return raw.decode("utf-16-be")

    def _walk(self, index: int, prefix: str, depth: int) -> None:
        if depth > 64:
            raise RccFormatError(f"{self.where}: directories nested deeper than 64 levels (a loop in the tree?)")
        node = self._tree + index * self._node_size
        name_offset, flags = self._unpack(">IH", node, f"tree node {index}")
        if flags & ~_KNOWN_FLAGS:
            raise RccFormatError(f"{self.where}: tree node {index} has unknown flags {flags:#x} "
                                 f"(known: 1 zlib, 2 directory, 4 zstd)")
        name = "" if index == 0 else self._name(name_offset)
        path = f"{prefix}/{name}" if prefix else name
        if flags & FLAG_DIRECTORY:
            count, first = self._unpack(">II", node + 6, f"directory node {index}")
            for child in range(first, first + count):
                self._walk(child, path, depth + 1)
            return
        country, language, data_offset = self._unpack(">HHI", node + 6, f"file node {index}")
        at = self._data_offset + data_offset
        (size,) = self._unpack(">I", at, f"the length of {path!r}")
        if at + 4 + size > len(self._data):
            raise RccFormatError(f"{self.where}: {path!r} claims {size} bytes at byte {at + 4}, past the end "
                                 f"of the {len(self._data)}-byte file (truncated?)")
        compression = ("zstd" if flags & FLAG_COMPRESSED_ZSTD else "zlib" if flags & FLAG_COMPRESSED else "none")
        if path in self.entries:  # the same path for another locale: keep the first (the default locale)
            return
        self.entries[path] = RccFile(path, at + 4, size, compression, country, language)

    # ---- access
    def files(self) -> list[str]:
        """Every file path of the bundle, sorted."""
        return sorted(self.entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.files())

    def __contains__(self, path: str) -> bool:
        return path.lstrip("/") in self.entries

    def read(self, path: str) -> bytes:
        """The (decompressed) bytes of file ``path`` (KeyError naming the bundle if absent)."""
        key = path.lstrip("/")
        try:
            entry = self.entries[key]
        except KeyError:
            raise KeyError(f"{self.where} has no file {key!r} ({len(self.entries)} files; list them with "
                           f"RccBundle.files())") from None
        raw = self._data[entry.offset: entry.offset + entry.stored_size]
        if entry.compression == "none":
            return raw
        if entry.compression == "zlib":
            if len(raw) < 4:
                raise RccFormatError(f"{self.where}: {key!r} is marked zlib-compressed but holds {len(raw)} bytes")
            expected = struct.unpack_from(">I", raw)[0]
            try:
                out = zlib.decompress(raw[4:])
            except zlib.error as exc:
                raise RccFormatError(f"{self.where}: {key!r}: bad zlib data ({exc})") from None
            if len(out) != expected:
                raise RccFormatError(f"{self.where}: {key!r} decompressed to {len(out)} bytes, its header "
                                     f"says {expected}")
            return out
        try:
            import zstandard
        except ImportError:
            raise RccFormatError(f"{self.where}: {key!r} is zstd-compressed; install `zstandard` "
                                 f"(pip install zstandard) to read it") from None
        return zstandard.ZstdDecompressor().decompress(raw)
