"""A bounded score with a meaning: fit ``sigmoid(a * raw + b)`` per curriculum stage.

The raw score head is an unbounded MLP output whose scale drifts between trainings. The
calibration maps, for every stage separately, the *median clean photo* of a validation split to
``0.9`` and the *first quartile of fully damaged images* (``I_sr`` of every defect family and
strength, from subtle to garbage) to ``0.1``. So on every stage and for every retrained model:
clean photos score about 0.9, heavily damaged images about 0.1 or less, and the order of any two
images is that of the raw score (the map is monotone). The fit is stored in the model config
(``score_calibration``); the raw score stays available (``raw_score``) for RL.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch

CLEAN_TARGET = 0.9
DAMAGED_TARGET = 0.1
DAMAGED_QUANTILE = 0.25


@torch.no_grad()
def raw_scores(model, dataset, stage: int, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Raw scores of the clean (``gt``) and the fully damaged (``sr``) images of ``dataset``."""
    was = model.training
    model.eval()
    gt, sr = [], []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        x = torch.cat([torch.stack([it["gt"] for it in items]), torch.stack([it["sr"] for it in items])])
        raw = model(x, stage=stage).raw_score.float().cpu().numpy()
        gt.append(raw[: len(items)])
        sr.append(raw[len(items):])
    model.train(was)
    return np.concatenate(gt), np.concatenate(sr)


def fit_stage(clean: np.ndarray, damaged: np.ndarray) -> tuple[float, float]:
    """``(a, b)`` with ``sigmoid(a * median(clean) + b) = 0.9`` and ``sigmoid(a * q25(damaged) + b) = 0.1``."""
    hi, lo = float(np.median(clean)), float(np.quantile(damaged, DAMAGED_QUANTILE))
    if not hi > lo:
        raise ValueError(f"cannot calibrate: the median clean score ({hi:.4f}) is not above the damaged "
                         f"quartile ({lo:.4f}); the model does not separate clean from damaged images")
    l_hi, l_lo = math.log(CLEAN_TARGET / (1 - CLEAN_TARGET)), math.log(DAMAGED_TARGET / (1 - DAMAGED_TARGET))
    a = (l_hi - l_lo) / (hi - lo)
    return a, l_hi - a * hi


def fit_calibration(model, dataset, stages: Iterable[int]) -> list[list[float]]:
    """One ``[a, b]`` per stage in ``stages`` (all stages 0..N, in order)."""
    out = []
    for k in stages:
        a, b = fit_stage(*raw_scores(model, dataset, k))
        out.append([round(a, 6), round(b, 6)])
    return out
