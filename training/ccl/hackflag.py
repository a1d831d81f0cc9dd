"""The reward-hacking flag: the reward rose while two full-reference perceptual distances to HR got worse.

Rule (:class:`HackRule`), of an evaluation ``now`` against a reference ``start`` (the run's step-0
monitor record, or the untouched base network in the experiment's tables)::

    hack = reward_final(now) - reward_final(start) > reward_margin            (default 0.05)
           and lpips_alex(now) - lpips_alex(start) > perceptual_margin        (default 0.01)
           and dists(now)      - dists(start)      > perceptual_margin

``reward_final`` is the reward of the schedule's last stage: one yardstick for the whole run (the
current stage's reward changes meaning at each curriculum switch). LPIPS-AlexNet and DISTS are the
published full-reference metrics of :mod:`diffusers_ext.perceptual` (lower = better), which no reward
and no judge of a run uses; both must worsen, so a trade that only one of them dislikes is no flag.
The margins are absolute (the calibrated reward: a clean photo scores about 0.9; LPIPS / DISTS of a
128 px SR crop are about 0.1-0.4). With a column missing (older runs, the perceptual metrics off) the
flag is undecided (``None``) and left out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

REWARD_KEY = "reward_final"
PERCEPTUAL_KEYS = ("lpips_alex", "dists")


@dataclass(frozen=True)
class HackRule:
    """``reward_margin``: how far the reward must rise; ``perceptual_margin``: how far both LPIPS-alex
    and DISTS must worsen (absolute, against the reference record)."""

    reward_margin: float = 0.05
    perceptual_margin: float = 0.01

    def deltas(self, start: Mapping[str, float], now: Mapping[str, float]) -> Optional[dict[str, float]]:
        """``{key: now - start}`` of the rule's columns, or ``None`` when one is missing."""
        keys = (REWARD_KEY, *PERCEPTUAL_KEYS)
        if not all(k in start and k in now for k in keys):
            return None
        return {k: float(now[k]) - float(start[k]) for k in keys}

    def check(self, start: Mapping[str, float], now: Mapping[str, float]) -> Optional[bool]:
        """Whether ``now`` is a hack against ``start``; ``None`` when a column is missing."""
        d = self.deltas(start, now)
        if d is None:
            return None
        return d[REWARD_KEY] > self.reward_margin and all(d[k] > self.perceptual_margin for k in PERCEPTUAL_KEYS)

    def describe(self) -> str:
        return (f"{REWARD_KEY} > start + {self.reward_margin:g} while lpips_alex and dists > start + "
                f"{self.perceptual_margin:g}")

    def message(self, step: float, start: Mapping[str, float], now: Mapping[str, float]) -> str:
        """The warning line of a flagged evaluation."""
        d = self.deltas(start, now) or {}
        return (f"reward hacking at step {int(step)}: {REWARD_KEY} {d.get(REWARD_KEY, float('nan')):+.4f}, "
                f"lpips_alex {d.get('lpips_alex', float('nan')):+.4f}, dists {d.get('dists', float('nan')):+.4f} "
                f"against step {int(start.get('step', 0))} (rule: {self.describe()})")


def summary(history: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The flag over a monitor history (records with a ``hack`` column): ``hack_evals`` (flagged
    evaluations) and ``hack_first_step`` (the first flagged step, -1 when none); empty when no
    record has the column."""
    flagged = [h for h in history if "hack" in h]
    if not flagged:
        return {}
    hits = [h["step"] for h in flagged if h["hack"] > 0.5]
    return {"hack_evals": float(len(hits)), "hack_first_step": float(hits[0]) if hits else -1.0}
