"""Per-term normalization of the ReFL objective (OURS): every term divided by a running scale before
fusion, so that ``--lambda_global``, ``--lambda_pdm`` (the schedule's λ1, λ2) and ``--lambda_fidelity``
weigh terms of comparable size.

Terms: the global score ``S`` and the PDM penalty ``P`` of the active reward-model stage (one scale per
stage: each stage has its own heads, and stage 0 has no map), and the fidelity term ``F``. The
normalized objective (``--term_norm abs`` or ``std``) is::

    R_n    = λ1·S/σ_S + λ2·(1 - P/σ_P)                    (P = 0 at stage 0)
    margin = 0.9·λ1/σ_S + λ2                              (a clean photo's R_n: S = 0.9, P = 0; or --refl_margin)
    loss   = grad_scale · (ReFL(R_n, margin) + λ_fid·F/σ_F)

so ``relu(margin - R_n) = relu(λ1·(0.9 - S)/σ_S + λ2·P/σ_P)``: each term's shortfall from a clean
photo in units of its own scale. ``--grad_scale`` then scales the whole loss, fidelity included.

Scales (``σ``), from the detached values of every micro-batch, averaged over the processes (so every
process uses the same scales), as exponential moving averages with momentum ``--term_norm_momentum``,
bias-corrected as in Adam (the first batch alone sets the first scale):

* ``abs``: the EMA of the mean absolute value ``E|x|``;
* ``std``: the standard deviation of the values over batches and time, ``sqrt(EMA[x²] - EMA[x]²)``,
  but at least a tenth of the ``abs`` scale (``STD_MIN_REL``): a term seen once, or on a batch of one
  image, has no spread yet, and its scale must not fall to the floor and multiply it a thousandfold.

Every scale is at least ``floor`` (1e-3). The running state is part of the trainer state of each
checkpoint, so a resumed run continues with exactly the scales an uninterrupted one would use.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch

from training.calibration import CLEAN_TARGET

NORM_MODES = ("off", "abs", "std")
STD_MIN_REL = 0.1  # std mode: the scale is at least this fraction of the abs scale


def batch_stats(x: torch.Tensor) -> torch.Tensor:
    """``[mean, mean of squares, mean of abs]`` of a detached batch of values (float64, for the reduce)."""
    v = x.detach().double().flatten()
    return torch.stack([v.mean(), (v * v).mean(), v.abs().mean()])


class TermScales:
    """Running scales of named terms (see the module docstring); ``mode`` ``off`` keeps every scale 1."""

    def __init__(self, mode: str = "off", momentum: float = 0.99, floor: float = 1e-3) -> None:
        if mode not in NORM_MODES:
            raise ValueError(f"--term_norm must be one of {NORM_MODES}, got {mode!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"--term_norm_momentum must be in [0, 1), got {momentum}")
        if not floor > 0:
            raise ValueError(f"the scale floor must be > 0, got {floor}")
        self.mode, self.momentum, self.floor = mode, float(momentum), float(floor)
        self.terms: dict[str, dict[str, float]] = {}

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def observe(self, key: str, stats: torch.Tensor) -> None:
        """Fold one batch's ``[mean, mean sq, mean abs]`` (:func:`batch_stats`, already averaged over
        the processes) into the term ``key``."""
        m1, m2, ma = (float(v) for v in stats)
        s = self.terms.setdefault(key, {"m1": 0.0, "m2": 0.0, "ma": 0.0, "t": 0})
        b = self.momentum
        s["m1"] = b * s["m1"] + (1 - b) * m1
        s["m2"] = b * s["m2"] + (1 - b) * m2
        s["ma"] = b * s["ma"] + (1 - b) * ma
        s["t"] += 1

    def scale(self, key: str) -> float:
        """The current scale of ``key`` (1 when off or never observed)."""
        s = self.terms.get(key)
        if not self.enabled or s is None or s["t"] == 0:
            return 1.0
        corr = 1 - self.momentum ** s["t"]
        value = s["ma"] / corr
        if self.mode == "std":
            m1, m2 = s["m1"] / corr, s["m2"] / corr
            value = max(math.sqrt(max(0.0, m2 - m1 * m1)), STD_MIN_REL * value)
        return max(self.floor, value)

    def scales(self) -> dict[str, float]:
        return {k: self.scale(k) for k in sorted(self.terms)}

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "momentum": self.momentum, "floor": self.floor,
                "terms": {k: dict(v) for k, v in self.terms.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            if self.enabled:
                raise ValueError("the checkpoint has no term-normalization state, but --term_norm is "
                                 f"{self.mode}: resume with the flags the run was started with")
            return
        if (state["mode"], float(state["momentum"])) != (self.mode, self.momentum):
            raise ValueError(f"the checkpoint was written with --term_norm {state['mode']} --term_norm_momentum "
                             f"{state['momentum']}, this run has {self.mode} {self.momentum}: resume with the "
                             "flags the run was started with")
        self.floor = float(state["floor"])
        self.terms = {k: {"m1": float(v["m1"]), "m2": float(v["m2"]), "ma": float(v["ma"]), "t": int(v["t"])}
                      for k, v in state["terms"].items()}


def normalized_loss(score: torch.Tensor, penalty: torch.Tensor, rm_stage: int, cfg: Any, fid: Optional[torch.Tensor],
                    lambda_fidelity: float, scales: TermScales, reduce: Callable[[torch.Tensor], torch.Tensor],
                    kind: str, grad_scale: float, margin: Optional[float] = None) -> torch.Tensor:
    """The normalized ReFL loss of one micro-batch (module docstring); observes the batch's terms
    first (``reduce`` averages a stats tensor over the processes). ``cfg``: the stage's
    :class:`~diffusers_ext.rewards.RewardConfig`; ``fid``: the fidelity term or ``None``."""
    from diffusers_ext.rewards import refl_loss

    k_s, k_p = f"score@rm{rm_stage}", f"pdm_penalty@rm{rm_stage}"
    scales.observe(k_s, reduce(batch_stats(score)))
    if rm_stage > 0:
        scales.observe(k_p, reduce(batch_stats(penalty)))
    s_s, s_p = scales.scale(k_s), scales.scale(k_p)
    pen = penalty / s_p if rm_stage > 0 else torch.zeros_like(penalty)
    reward_n = cfg.lambda_global * score / s_s + cfg.lambda_pdm * (1.0 - pen)
    m = margin if margin is not None else CLEAN_TARGET * cfg.lambda_global / s_s + cfg.lambda_pdm
    loss = refl_loss(reward_n, kind, m, 1.0)
    if fid is not None:
        scales.observe("fidelity", reduce(batch_stats(fid)))
        loss = loss + lambda_fidelity * fid / scales.scale("fidelity")
    return loss * grad_scale
