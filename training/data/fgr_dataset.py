"""Reading an FGR folder written by :mod:`training.data.build_fgr` for training and validation."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .build_fgr import load_png, read_manifest
from .families import families_of


class FGRDataset(Dataset):
    """Items of one split as tensors: ``gt``, ``sr``, ``syn`` (3xHxW), ``mask``, ``mgt`` (1xHxW).

    ``exclude_families`` drops items containing any of those families; ``limit_index`` keeps the
    items with index below it and ``start_index`` those at or above it (a fixed subset: two models
    trained on disjoint ranges saw different triplets); ``limit`` keeps the first ``limit`` items.

    ``__getitem__`` takes an index, or ``(index, seed)`` to draw a random crop / flip / rotation
    from that seed (so a batch is a pure function of the step: exact resume)."""

    def __init__(self, root: str | Path, split: str, crop: Optional[int] = None, augment: bool = False,
                 limit: Optional[int] = None, exclude_families: Sequence[str] = (),
                 limit_index: Optional[int] = None, start_index: int = 0) -> None:
        self.root = Path(root)
        meta_path = self.root / "dataset.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.root} is not an FGR dataset (no dataset.json); build it with "
                                    "python -m training.data.build_fgr --out {self.root}")
        self.meta = json.loads(meta_path.read_text())
        excluded = set(exclude_families)
        self.records = sorted((r for r in read_manifest(self.root).values()
                               if r["split"] == split and not (families_of(r) & excluded)
                               and (limit_index is None or r["index"] < limit_index)
                               and r["index"] >= start_index), key=lambda r: r["index"])
        if limit is not None:
            self.records = self.records[:limit]
        if not self.records:
            raise ValueError(f"{self.root} has no finished items in split {split!r}")
        self.crop, self.augment, self.split = crop, augment, split
        self.changed_threshold = float(self.meta.get("changed_threshold", 0.1))

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, rec: dict) -> dict[str, np.ndarray]:
        stem = self.root / rec["id"]
        arrs = {k: load_png(Path(f"{stem}_{k}.png")) for k in ("gt", "sr", "syn", "mask", "mgt")}
        for k in ("mask", "mgt"):
            if arrs[k].ndim == 3:
                arrs[k] = arrs[k][..., 0]
        return arrs

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        arrs = self._load(self.records[index])
        if seed is not None:
            rng = np.random.default_rng(seed)
            h, w = arrs["gt"].shape[:2]
            c = self.crop or min(h, w)
            y, x = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
            flip, rot = bool(rng.random() < 0.5) and self.augment, int(rng.integers(0, 4)) if self.augment else 0
            for k, a in arrs.items():
                a = a[y:y + c, x:x + c]
                a = a[:, ::-1] if flip else a
                arrs[k] = np.ascontiguousarray(np.rot90(a, rot))
        out = {}
        for k, a in arrs.items():
            t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
            out[k] = t.permute(2, 0, 1) if t.ndim == 3 else t[None]
        return out


def step_batches(n_items: int, batch_size: int, seed: int, start_step: int = 0, rank: int = 0,
                 world_size: int = 1) -> Iterator[list[tuple[int, int]]]:
    """Infinite batches of ``(index, crop_seed)``. Step ``s`` draws one global batch of
    ``batch_size * world_size`` items from (seed, s) and gives rank ``r`` its ``r``-th slice, so
    training resumed at step ``s`` sees exactly the batches an uninterrupted run would, and ``n``
    processes together see what one process with an ``n`` times larger batch sees."""
    step = start_step
    while True:
        rng = np.random.default_rng([seed, step])
        idx = rng.integers(0, n_items, size=batch_size * world_size)
        seeds = rng.integers(0, 2**31, size=batch_size * world_size)
        part = slice(rank * batch_size, (rank + 1) * batch_size)
        yield [(int(i), int(s)) for i, s in zip(idx[part], seeds[part])]
        step += 1


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
