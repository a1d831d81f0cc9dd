"""Reward fusion R = λ1·S + λ2·(1 - softmax(M)) and the soft spatial maximum."""
from __future__ import annotations

import pytest
import torch

from diffusers_ext.rewards import RewardConfig, compute_reward, fused_reward, lse_max, soft_spatial_max, topk_mean


def test_topk_mean_picks_the_worst_region():
    m = torch.zeros(2, 1, 10, 10)
    m[0, 0, :1, :1] = 1.0  # one defective pixel of 100
    assert topk_mean(m, 0.01).tolist() == [1.0, 0.0]
    assert torch.isclose(topk_mean(m, 0.02)[0], torch.tensor(0.5))


def test_lse_lies_between_mean_and_max():
    m = torch.rand(3, 1, 8, 8)
    v = lse_max(m, 0.05)
    assert torch.all(v <= m.flatten(1).amax(1) + 1e-6) and torch.all(v >= m.flatten(1).mean(1) - 1e-6)
    assert torch.allclose(lse_max(m, 1e-4), m.flatten(1).amax(1), atol=2e-3)


def test_fused_reward_terms():
    score = torch.tensor([0.8, 0.2])
    pdm = torch.zeros(2, 1, 4, 4)
    pdm[1] = 1.0
    r = fused_reward(score, pdm, RewardConfig(lambda_global=1.0, lambda_pdm=2.0, softmax="max"))
    assert torch.allclose(r.reward, torch.tensor([0.8 + 2.0, 0.2 + 0.0]))
    r0 = fused_reward(score, None, RewardConfig(lambda_pdm=5.0))
    assert torch.allclose(r0.pdm_penalty, torch.zeros(2))
    with pytest.raises(ValueError, match="unknown soft-max"):
        soft_spatial_max(pdm, "median")


def test_compute_reward_is_differentiable(tiny_model):
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    terms = compute_reward(tiny_model, x, RewardConfig(lambda_global=1.0, lambda_pdm=1.0), stage=4)
    terms.reward.sum().backward()
    assert x.grad.abs().sum() > 0
    t0 = compute_reward(tiny_model, x.detach(), RewardConfig(lambda_pdm=1.0), stage=0)
    assert torch.allclose(t0.pdm_penalty, torch.zeros(2))
