"""Whole-image supervision from a full-reference teacher (reward model v6).

A version set (:mod:`training.data.versions`) holds one clean crop and many whole versions of it,
each with the teacher's distance to the clean crop (LPIPS-VGG, DISTS, LPIPS-alex). The score learns
to order the versions of one photo as the teacher does, the clean crop first, and to sit on one
scale across photos:

    L_order = mean over pairs (i, j) of one crop with t_j - t_i > min_gap of
              relu(slope * (t_j - t_i) - (S_i - S_j))                  # the better one higher, by the gap
    L_cal   = mean smooth-L1(S_i - (anchor - slope * t_i))             # one scale across photos

``t`` is the teacher distance (:func:`teacher_distance`: a weighted sum of the stored metrics, by
default the mean of LPIPS-VGG and DISTS, so that the order learned is the one both agree on);
``anchor`` is the raw score of a clean photo (the stage-0 anchor of train_reward, 1.0) and ``slope``
the raw score per unit of teacher distance.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from training.data.versions import TEACHER_METRICS, read_manifest

#: the default teacher: the mean of LPIPS-VGG and DISTS (what the benchmark's targets are stated in)
DEFAULT_TEACHER = {"lpips_vgg": 0.5, "dists": 0.5}


def parse_teacher(text: str) -> dict[str, float]:
    """``"lpips_vgg"``, ``"lpips_vgg+dists"`` (equal weights) or ``"lpips_vgg:0.7,dists:0.3"`` -> weights."""
    parts = [p for p in text.replace("+", ",").split(",") if p.strip()]
    out: dict[str, float] = {}
    for p in parts:
        name, _, w = p.partition(":")
        name = name.strip()
        if name not in TEACHER_METRICS:
            raise ValueError(f"unknown teacher metric {name!r}; choose from {', '.join(TEACHER_METRICS)}")
        out[name] = float(w) if w else 1.0
    total = sum(out.values())
    if not out or total <= 0:
        raise ValueError(f"teacher {text!r} gives no positive weight")
    return {k: v / total for k, v in out.items()}


def teacher_distance(record: dict, weights: Optional[dict[str, float]] = None) -> np.ndarray:
    """The teacher distance of each version of a manifest record (lower = closer to the clean crop)."""
    weights = weights or DEFAULT_TEACHER
    return sum(w * np.asarray(record[k], dtype=np.float32) for k, w in weights.items())


@dataclass
class OrderConfig:
    slope: float = 1.5        # raw score per unit of teacher distance
    anchor: float = 1.0       # raw score of the clean crop
    min_gap: float = 0.01     # pairs closer than this in teacher distance are not ordered
    lambda_order: float = 1.0
    lambda_cal: float = 0.5


def order_loss(scores: torch.Tensor, teacher: torch.Tensor, cfg: OrderConfig,
               valid: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
    """``scores``, ``teacher``: ``[B, K]`` (the versions of B crops; ``valid`` masks padding).
    Returns ``order``, ``cal`` and their weighted sum ``loss``."""
    if valid is None:
        valid = torch.ones_like(scores, dtype=torch.bool)
    dt = teacher[:, None, :] - teacher[:, :, None]          # [B, i, j] = t_j - t_i
    ds = scores[:, :, None] - scores[:, None, :]            # S_i - S_j
    pair = (dt > cfg.min_gap) & valid[:, :, None] & valid[:, None, :]
    hinge = F.relu(cfg.slope * dt - ds)
    order = (hinge * pair).sum() / pair.sum().clamp_min(1)
    target = cfg.anchor - cfg.slope * teacher
    cal = (F.smooth_l1_loss(scores, target, reduction="none", beta=0.05) * valid).sum() / valid.sum().clamp_min(1)
    return {"order": order, "cal": cal, "loss": cfg.lambda_order * order + cfg.lambda_cal * cal}


def order_figures(scores: np.ndarray, teacher: np.ndarray) -> dict[str, float]:
    """Per crop (rows): share with the clean version (column 0) strictly on top, and the mean share
    of version pairs (teacher gap > 0) ordered as the teacher orders them."""
    top = np.mean([s[0] > np.max(s[1:]) for s in scores])
    agree = []
    for s, t in zip(scores, teacher):
        i, j = np.triu_indices(len(s), 1)
        keep = t[i] != t[j]
        agree.append(np.mean(np.sign(s[i] - s[j])[keep] == np.sign(t[j] - t[i])[keep]))
    return {"clean_top": float(top), "pair_agree": float(np.mean(agree))}


class VersionSets:
    """The items of one split of a version-set folder: ``images`` uint8 ``[K, H, W, 3]`` and the
    teacher distance ``[K]`` of each version."""

    def __init__(self, root: str | Path, split: str, teacher: Optional[dict[str, float]] = None,
                 limit: Optional[int] = None) -> None:
        self.root = Path(root)
        recs = sorted((r for r in read_manifest(self.root).values() if r["split"] == split), key=lambda r: r["index"])
        if limit is not None:
            recs = recs[:limit]
        if not recs:
            raise ValueError(f"{self.root} has no finished version sets in split {split!r} "
                             "(build them with python -m training.data.versions)")
        self.records, self.teacher = recs, teacher or DEFAULT_TEACHER

    def __len__(self) -> int:
        return len(self.records)

    def images(self, i: int) -> np.ndarray:
        rec = self.records[i]
        return np.load(self.root / rec["split"] / f"{rec['index']:06d}.npz")["images"]

    def distances(self, i: int) -> np.ndarray:
        return teacher_distance(self.records[i], self.teacher)

    def kinds(self, i: int) -> Sequence[str]:
        return self.records[i]["kinds"]
