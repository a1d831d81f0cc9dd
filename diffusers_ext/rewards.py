"""Rewards built on FinPercep-RM (PAPER.md §4).

    R_k = λ1 · S_global + λ2 · (1 - softmax_k(M_pdm))

``softmax_k`` is a differentiable estimate of the map's spatial maximum, so the worst local defect
becomes the penalty. Two estimators (OURS; the paper does not define it): the mean of the top-p
fraction of values (``"topk"``), or a temperature LogSumExp (``"lse"``).

The curriculum that moves the reward from stage to stage during fine-tuning (PAPER.md §5: the CCL
schedule as data, its YAML/JSON files and the switch tracker) is a training concept and lives in
:mod:`training.ccl.schedule`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

SoftMaxKind = Literal["topk", "lse", "max", "mean"]


def topk_mean(m: torch.Tensor, fraction: float = 0.01) -> torch.Tensor:
    """Mean of the largest ``fraction`` of values of each map. ``m``: ``[B, ...]`` -> ``[B]``."""
    flat = m.flatten(1)
    k = max(1, int(math.ceil(flat.shape[1] * fraction)))
    return flat.topk(k, dim=1).values.mean(1)


def lse_max(m: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Smooth maximum ``τ·log(mean(exp(m/τ)))``: between the mean (τ→∞) and the max (τ→0)."""
    flat = m.flatten(1)
    return temperature * (torch.logsumexp(flat / temperature, dim=1) - math.log(flat.shape[1]))


def soft_spatial_max(m: torch.Tensor, kind: SoftMaxKind = "topk", fraction: float = 0.01,
                     temperature: float = 0.05) -> torch.Tensor:
    """The differentiable spatial maximum ``softmax_k(M)`` of each map in a batch."""
    if kind == "topk":
        return topk_mean(m, fraction)
    if kind == "lse":
        return lse_max(m, temperature)
    if kind == "max":
        return m.flatten(1).amax(1)
    if kind == "mean":
        return m.flatten(1).mean(1)
    raise ValueError(f"unknown soft-max kind {kind!r}; use 'topk', 'lse', 'max' or 'mean'")


@dataclass
class RewardConfig:
    """Weights of the decoupled reward fusion at one curriculum stage."""

    lambda_global: float = 1.0
    lambda_pdm: float = 0.0
    softmax: SoftMaxKind = "topk"
    top_fraction: float = 0.01
    temperature: float = 0.05


@dataclass
class RewardTerms:
    reward: torch.Tensor  # [B]
    score: torch.Tensor  # [B] S_global
    pdm_penalty: torch.Tensor  # [B] softmax_k(M)


def fused_reward(score: torch.Tensor, pdm: torch.Tensor | None, cfg: RewardConfig) -> RewardTerms:
    """``R = λ1·S + λ2·(1 - softmax(M))``; with no map (stage 0) the map term is 0 penalty."""
    if pdm is None:
        penalty = torch.zeros_like(score)
    else:
        penalty = soft_spatial_max(pdm, cfg.softmax, cfg.top_fraction, cfg.temperature)
    reward = cfg.lambda_global * score + cfg.lambda_pdm * (1.0 - penalty)
    return RewardTerms(reward=reward, score=score, pdm_penalty=penalty)


def compute_reward(model: Any, images: torch.Tensor, cfg: RewardConfig, stage: int | None = None) -> RewardTerms:
    """Differentiable reward of ``images`` (``Bx3xHxW`` in [0,1]) under a FinPercepRM at ``stage``."""
    out = model(images, stage=stage)
    use_map = out.pdm if (stage if stage is not None else model.stage) > 0 else None
    return fused_reward(out.score, use_map, cfg)


def refl_loss(reward: torch.Tensor, kind: str = "relu", margin: float = 2.0, grad_scale: float = 1e-3) -> torch.Tensor:
    """The ReFL generator loss of a batch of rewards (mean over the batch).

    ``"relu"``: ImageReward's ``relu(-R + margin) * grad_scale`` (no push once R >= margin);
    ``"neg"``: ``-R * grad_scale``."""
    if kind == "relu":
        per = torch.relu(margin - reward)
    elif kind == "neg":
        per = -reward
    else:
        raise ValueError(f"unknown ReFL loss {kind!r}; use 'relu' or 'neg'")
    return per.mean() * grad_scale
