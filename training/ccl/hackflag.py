"""The reward-hacking flag: the reward rose while full-reference perceptual distances to HR got worse.

Rule (:class:`HackRule`), of an evaluation ``now`` against a reference ``start`` (the run's step-0
monitor record, or the untouched base network in the experiment's tables)::

    hack = reward_final(now) - reward_final(start) > reward_margin            (default 0.05)
           and m(now) - m(start) > perceptual_margin  for every m of metrics  (default 0.01;
                                                       metrics default lpips_vgg, dists)

``reward_final`` is the reward of the schedule's last stage: one yardstick for the whole run (the
current stage's reward changes meaning at each curriculum switch). The metrics are published
full-reference metrics of :mod:`diffusers_ext.perceptual` (lower = better); all must worsen, so a trade
that only one of them dislikes is no flag. They must be independent of the reward: the bundled v6's score
heads were taught by LPIPS-alex, and pure ReFL against it improves LPIPS-alex while LPIPS-VGG worsens
(EXPERIMENTS.md), so the default is LPIPS-VGG and DISTS (until v6: LPIPS-alex and DISTS, ``--hack_metrics
lpips_alex,dists``).
The margins are absolute (the calibrated reward: a clean photo scores about 0.9; LPIPS / DISTS of a
128 px SR crop are about 0.1-0.4). With a column missing (older runs, the perceptual metrics off) the
flag is undecided (``None``) and left out.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

REWARD_KEY = "reward_final"
PERCEPTUAL_KEYS = ("lpips_vgg", "dists")
KNOWN_METRICS = ("lpips_alex", "lpips_vgg", "dists")


def parse_metrics(text: str) -> tuple[str, ...]:
    """``"lpips_vgg,dists"`` -> the rule's metrics (checked)."""
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [n for n in names if n not in KNOWN_METRICS]
    if bad or not names:
        raise ValueError(f"--hack_metrics takes a comma-separated subset of {', '.join(KNOWN_METRICS)}, got {text!r}")
    return names


@dataclass(frozen=True)
class HackRule:
    """``reward_margin``: how far the reward must rise; ``perceptual_margin``: how far every one of
    ``metrics`` must worsen (absolute, against the reference record)."""

    reward_margin: float = 0.05
    perceptual_margin: float = 0.01
    metrics: tuple[str, ...] = PERCEPTUAL_KEYS

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "HackRule":
        """The rule of the flags :func:`add_arguments` added."""
        return cls(args.hack_reward_margin, args.hack_perceptual_margin, tuple(args.hack_metrics))

    def argv(self) -> list[str]:
        """The flags that give this rule to another command (:func:`add_arguments`)."""
        return ["--hack_reward_margin", str(self.reward_margin), "--hack_perceptual_margin",
                str(self.perceptual_margin), "--hack_metrics", ",".join(self.metrics)]

    def deltas(self, start: Mapping[str, float], now: Mapping[str, float]) -> Optional[dict[str, float]]:
        """``{key: now - start}`` of the rule's columns, or ``None`` when one is missing."""
        keys = (REWARD_KEY, *self.metrics)
        if not all(k in start and k in now for k in keys):
            return None
        return {k: float(now[k]) - float(start[k]) for k in keys}

    def check(self, start: Mapping[str, float], now: Mapping[str, float]) -> Optional[bool]:
        """Whether ``now`` is a hack against ``start``; ``None`` when a column is missing."""
        d = self.deltas(start, now)
        if d is None:
            return None
        return d[REWARD_KEY] > self.reward_margin and all(d[k] > self.perceptual_margin for k in self.metrics)

    def describe(self) -> str:
        return (f"{REWARD_KEY} > start + {self.reward_margin:g} while {' and '.join(self.metrics)} > start + "
                f"{self.perceptual_margin:g}")

    def label(self) -> str:
        """Short form for table headers: ``reward +0.05, lpips_vgg & dists +0.01``."""
        return f"reward +{self.reward_margin:g}, {' & '.join(self.metrics)} +{self.perceptual_margin:g}"

    def message(self, step: float, start: Mapping[str, float], now: Mapping[str, float]) -> str:
        """The warning line of a flagged evaluation."""
        d = self.deltas(start, now) or {}
        parts = ", ".join(f"{k} {d.get(k, float('nan')):+.4f}" for k in (REWARD_KEY, *self.metrics))
        return f"reward hacking at step {int(step)}: {parts} against step {int(start.get('step', 0))} (rule: {self.describe()})"


def add_arguments(parser: Any, against: str, metrics_note: str = "") -> None:
    """The rule's flags ``--hack_reward_margin``, ``--hack_perceptual_margin`` and ``--hack_metrics`` (the
    defaults of :class:`HackRule`) on ``parser`` (or an argument group); ``against``: what the reference
    record is, in words."""
    parser.add_argument("--hack_reward_margin", type=float, default=HackRule.reward_margin,
                        help=f"hack flag: reward_final above {against} by more than this ...")
    parser.add_argument("--hack_perceptual_margin", type=float, default=HackRule.perceptual_margin,
                        help=f"... while every --hack_metrics metric to HR is worse than {against} by more than this")
    parser.add_argument("--hack_metrics", type=parse_metrics, default=PERCEPTUAL_KEYS,
                        help="the full-reference metrics of the hack flag, comma-separated (default "
                             f"{','.join(PERCEPTUAL_KEYS)}){metrics_note}")


def summary(history: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The flag over a monitor history (records with a ``hack`` column): ``hack_evals`` (flagged
    evaluations) and ``hack_first_step`` (the first flagged step, -1 when none); empty when no
    record has the column."""
    flagged = [h for h in history if "hack" in h]
    if not flagged:
        return {}
    hits = [h["step"] for h in flagged if h["hack"] > 0.5]
    return {"hack_evals": float(len(hits)), "hack_first_step": float(hits[0]) if hits else -1.0}
