"""Validation figures of a reward-model stage on an FGR split (issue: reward model, §4).

- ``pdm_auroc``: pixel AUROC of the predicted map on ``I_syn``: swapped pixels that really changed
  (inside the mask and ``M_gt`` above the dataset's threshold) against pixels outside the mask
  (mask below ``OUTSIDE``: the feathered edge of a swap is neither).
- ``map_l1``: mean ``|M_pdm(I_syn) - M_gt|``.
- ``triplet_acc``: share of triplets ranked ``S_gt > S_syn > S_sr``.
- ``pair_acc``: share with ``S_gt > S_syn`` (does the score see a local defect at all?).
Stage 0 has no map: its AUROC is that of a constant map (0.5) and is reported as such.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

OUTSIDE = 0.01


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney U) formula, ties counted half."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    scores = np.concatenate([pos, neg]).astype(np.float64)
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    r_pos = ranks[: len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


@torch.no_grad()
def evaluate_stage(model, dataset, stage: int, batch_size: int = 8, device: str | torch.device = "cpu",
                   pixels_per_image: int = 4096, seed: int = 0, progress: bool = False) -> dict[str, float]:
    """All figures above for ``model`` at ``stage`` on every item of ``dataset`` (full, uncropped)."""
    was_training = model.training
    model.eval()
    rng = np.random.default_rng(seed)
    s = {k: [] for k in ("gt", "syn", "sr")}
    pos, neg, l1 = [], [], []
    thr = dataset.changed_threshold
    for start in tqdm(range(0, len(dataset), batch_size), disable=not progress, desc=f"eval stage {stage}"):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}
        x = torch.cat([batch["gt"], batch["syn"], batch["sr"]])
        out = model(x, stage=stage)
        n = len(items)
        for j, k in enumerate(("gt", "syn", "sr")):
            s[k].append(out.score[j * n:(j + 1) * n].float().cpu().numpy())
        pdm_syn = out.pdm[n:2 * n, 0].float().cpu().numpy()
        mask = batch["mask"][:, 0].cpu().numpy()
        mgt = batch["mgt"][:, 0].cpu().numpy()
        l1.append(np.abs(pdm_syn - mgt).mean(axis=(1, 2)))
        for p, m, g in zip(pdm_syn, mask, mgt):
            pi, ni = p[(m > 0.5) & (g > thr)], p[m < OUTSIDE]
            if len(pi):
                pos.append(rng.choice(pi, min(len(pi), pixels_per_image), replace=False))
            if len(ni):
                neg.append(rng.choice(ni, min(len(ni), pixels_per_image), replace=False))
    gt, syn, sr = (np.concatenate(s[k]) for k in ("gt", "syn", "sr"))
    model.train(was_training)
    res = {
        "pdm_auroc": 0.5 if stage == 0 else auroc(np.concatenate(pos), np.concatenate(neg)),
        "map_l1": float(np.concatenate(l1).mean()),
        "triplet_acc": float(np.mean((gt > syn) & (syn > sr))),
        "pair_acc": float(np.mean(gt > syn)),
        "score_gt": float(gt.mean()),
        "score_syn": float(syn.mean()),
        "score_sr": float(sr.mean()),
        "n_items": int(len(gt)),
    }
    return res


def evaluate_stages(model, dataset, stages, progress: bool = True) -> dict[str, dict[str, float]]:
    """:func:`evaluate_stage` for each of ``stages``, keyed by the stage number as a string."""
    return {str(k): evaluate_stage(model, dataset, k, progress=progress) for k in stages}


def format_table(rows: dict[str, dict[str, float]], split: Optional[str] = None) -> str:
    """A markdown table of ``{name: figures}``."""
    cols = ["pdm_auroc", "map_l1", "triplet_acc", "pair_acc", "score_gt", "score_syn", "score_sr"]
    head = "| stage | " + " | ".join(cols) + " | items |\n|" + "---|" * (len(cols) + 2) + "\n"
    body = "".join(
        f"| {name} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + f" | {r['n_items']} |\n" for name, r in rows.items()
    )
    return (f"Split: {split}\n\n" if split else "") + head + body
