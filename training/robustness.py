"""Robustness of the reward by training (reward model v3): imperceptible perturbations, gradient
attacks on the reward model itself, and garbage images, as batch tensors for ``train_reward``.

- :func:`imperceptible` gives copies that a person cannot tell from the input (Gaussian noise of
  0-2/255, a 1-px shift, a +-1/255 brightness offset): the score and the map must not move.
- :func:`attack_score` is an L-inf PGD attack that *raises* the model's score inside ``eps``: the
  direction an RL policy follows. Its results are training negatives, labelled with the map of the
  image they came from (the perturbation is invisible, so the defects are where they were).
- :func:`garbage_batch` draws images that are no photograph (noise, flat, stripes, blocks...):
  they must score below every damaged photo and be flagged everywhere.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .data.families import garbage_image


def _global_draw(draw: Callable[[tuple[int, ...]], torch.Tensor], shape: tuple[int, ...], rank: int,
                 world: int) -> torch.Tensor:
    """Draw for the global batch (``world`` x the local one) and keep this rank's rows: every
    process count sees the same random numbers per image."""
    b = shape[0]
    return draw((b * world, *shape[1:]))[rank * b:(rank + 1) * b]


def imperceptible(x: torch.Tensor, generator: torch.Generator, max_sigma: float = 2.0 / 255, rank: int = 0,
                  world: int = 1) -> torch.Tensor:
    """A copy of ``x`` (``Bx3xHxW`` in [0, 1]) under a random invisible change per image."""
    b = x.shape[0]
    sigma = _global_draw(lambda s: torch.rand(s, generator=generator), (b, 1, 1, 1), rank, world) * max_sigma
    noise = _global_draw(lambda s: torch.randn(s, generator=generator), tuple(x.shape), rank, world) * sigma
    offset = _global_draw(lambda s: torch.randint(-1, 2, s, generator=generator), (b, 1, 1, 1), rank, world) / 255.0
    out = x + noise.to(x) + offset.to(x)
    shifts = _global_draw(lambda s: torch.randint(-1, 2, s, generator=generator), (b, 2), rank, world)
    out = torch.stack([torch.roll(o, (int(s[0]), int(s[1])), dims=(1, 2)) for o, s in zip(out, shifts)])
    return out.clamp(0, 1)


def attack_score(score_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float, steps: int,
                 generator: torch.Generator, rank: int = 0, world: int = 1) -> torch.Tensor:
    """L-inf PGD from a random start that maximizes ``score_fn`` within ``eps`` of ``x``; the
    result is detached (a data point, not part of the graph)."""
    x = x.detach()
    step = 2.5 * eps / max(steps, 1)
    start = _global_draw(lambda s: torch.rand(s, generator=generator), tuple(x.shape), rank, world)
    delta = (start.to(x) * 2 - 1) * eps
    for _ in range(steps):
        delta.requires_grad_(True)
        s = score_fn((x + delta).clamp(0, 1)).sum()
        (grad,) = torch.autograd.grad(s, delta)
        delta = (delta.detach() + step * grad.sign()).clamp(-eps, eps)
    return (x + delta).clamp(0, 1).detach()


def garbage_batch(n: int, size: int, seed: int) -> torch.Tensor:
    """``n`` garbage images of ``size`` px (a pure function of ``seed``, for exact resume)."""
    rng = np.random.default_rng([seed, 7])
    imgs = [garbage_image(size, size, rng)[0] for _ in range(n)]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
