"""Tile geometry of large-image inference: where the tiles start, how their maps blend, which
deepest-feature cells each tile owns. The one place for it: the model's tiled forward, the request
layer's tile counts (progress bars, the viewer's "n tiles") and the tests all use these.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px covering ``length`` px with at least ``overlap`` px overlap."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def ramp(length: int, overlap: int, first: bool, last: bool) -> np.ndarray:
    """1-D blend weight of a tile: linear ramps of ``overlap`` px on the sides that have a neighbour."""
    w = np.ones(length, np.float32)
    r = (np.arange(overlap, dtype=np.float32) + 0.5) / max(overlap, 1)
    n = min(overlap, length)
    if not first:
        w[:n] = np.minimum(w[:n], r[:n])
    if not last:
        w[length - n:] = np.minimum(w[length - n:], r[:n][::-1])
    return w


def owned_cells(starts: list[int], i: int, tile: int, stride: int, n_cells: int) -> slice:
    """The deepest-feature cells of tile ``i`` that it owns: cell centres between the midpoints of
    its overlaps with the previous and the next tile. Every cell of the image is owned once."""
    lo = 0.0 if i == 0 else (starts[i] + starts[i - 1] + tile) / 2
    hi = float("inf") if i == len(starts) - 1 else (starts[i + 1] + starts[i] + tile) / 2
    centres = starts[i] + stride * np.arange(n_cells) + stride / 2
    idx = np.nonzero((centres >= lo) & (centres < hi))[0]
    return slice(int(idx[0]), int(idx[-1]) + 1) if len(idx) else slice(0, 0)


@dataclass(frozen=True)
class Tiling:
    """Resolved tiling of one request: ``size`` px tiles (0 = never tile) overlapping by ``overlap`` px.
    Build it with :func:`diffusers_ext.request.resolve`, which validates and rounds the values."""

    size: int = 0
    overlap: int = 0

    def applies(self, height: int, width: int) -> bool:
        """Whether an image of this size goes through tiles (a side above the tile size)."""
        return bool(self.size) and max(height, width) > self.size

    def grid(self, height: int, width: int) -> tuple[list[int], list[int]]:
        """Tile start rows and columns of an image (one tile when it is not tiled)."""
        if not self.applies(height, width):
            return [0], [0]
        return tile_starts(height, self.size, self.overlap), tile_starts(width, self.size, self.overlap)

    def count(self, height: int, width: int) -> int:
        """How many model passes an image of this size takes."""
        ys, xs = self.grid(height, width)
        return len(ys) * len(xs)
