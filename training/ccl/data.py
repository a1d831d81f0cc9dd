"""Training pairs for ReFL: HR crops from a photo pool, degraded on the fly to LR with the data
engine's real-world degradation (training/data). Batches are step-seeded: the batch of (step,
micro-step, rank) is a pure function of the seed, so a resumed run sees exactly the batches an
uninterrupted one would, and every rank sees different images."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from training.data.build_fgr import DEGRADATION_LEVELS, PhotoCache, make_lr, random_hr_crop
from training.data.photos import Photo, folder_photos, offline_photos

logger = logging.getLogger(__name__)

DEGRADATIONS = (*DEGRADATION_LEVELS, "mix")


def load_photos(split: Optional[str], sources: Sequence[str], folders: Iterable[str | Path] = (),
                min_side: int = 128) -> list[Photo]:
    """Photos of ``sources`` (offline pools: mate, plasma, opencv, skimage) plus every image in
    ``folders``, restricted to ``split`` (by photo, see training/data/photos.py); ``None`` = all."""
    photos = offline_photos(sources, min_side=min_side) if sources else []
    for folder in folders:
        photos += folder_photos(folder, min_side=min_side)
    if not photos:
        raise FileNotFoundError(
            "no HR photos: pass --train_data DIR (a folder of photos, each side >= --hr_size) or install the "
            "offline sources (apt-get install mate-backgrounds plasma-workspace-wallpapers opencv-doc; "
            "pip install scikit-image) and keep them in --photo_sources")
    chosen = [p for p in photos if split is None or p.split == split]
    if not chosen:
        logger.warning("no photo of the %r split among %d photos: using all of them", split, len(photos))
        chosen = photos
    return chosen


class SRPairSampler:
    """``(lr, hr)`` float32 batches ``Bx3xhxw`` / ``Bx3xHxW`` in [0,1], ``H = scale * h = hr_size``."""

    def __init__(self, photos: list[Photo], hr_size: int, scale: int, degradation: str = "mix",
                 seed: int = 0) -> None:
        if degradation not in DEGRADATIONS:
            raise ValueError(f"degradation must be one of {DEGRADATIONS}, got {degradation!r}")
        if hr_size % scale:
            raise ValueError(f"--hr_size {hr_size} must be a multiple of the policy's scale {scale}")
        self.photos, self.hr_size, self.scale = photos, int(hr_size), int(scale)
        self.degradation, self.seed = degradation, int(seed)
        self.cache = PhotoCache()

    def _pair(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        photo = self.photos[int(rng.integers(0, len(self.photos)))]
        arr = self.cache.get(photo)
        if min(arr.shape[:2]) < self.hr_size:
            raise ValueError(f"photo {photo.id} is {arr.shape[1]}x{arr.shape[0]} px, smaller than --hr_size "
                             f"{self.hr_size}; lower --hr_size or drop that photo")
        hr = random_hr_crop(arr, self.hr_size, rng)
        level = self.degradation
        if level == "mix":
            level = DEGRADATION_LEVELS[int(rng.integers(0, len(DEGRADATION_LEVELS)))]
        lr = make_lr(hr, self.scale, rng, level)
        return lr, hr

    def _stack(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
        lr = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2).contiguous().float()
        hr = torch.from_numpy(np.stack([p[1] for p in pairs])).permute(0, 3, 1, 2).contiguous().float()
        return lr, hr

    def batch(self, batch_size: int, step: int, micro: int = 0, rank: int = 0,
              world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step, micro, rank, world])
        return self._stack([self._pair(rng) for _ in range(batch_size)])

    def fixed_batch(self, n: int, seed: int = 12345) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed set of ``n`` pairs (the monitor's validation batch)."""
        rng = np.random.default_rng([seed, n])
        return self._stack([self._pair(rng) for _ in range(n)])
