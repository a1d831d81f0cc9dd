"""The trainer benchmark's curriculum estimate (benchmarks/bench_train_reward.py)."""
from __future__ import annotations

from benchmarks.bench_train_reward import CONFIGS, recipe_table, render


def _rows(s0: float, s3: float, joint: float) -> dict:
    return {"rows": {name: {"s_per_step": s, "triplets_per_s": 8 / s}
                     for name, s in zip(CONFIGS, (s0, s3, joint))}}


def test_the_curriculum_estimate_weights_each_row_by_train_defaults_steps():
    from training.train_default import parse_args

    d = parse_args([])
    steps = [int(n) for n in d.steps.split(",")]
    report = {"before": _rows(1.0, 0.5, 2.0), "after": _rows(0.5, 0.25, 1.0), "partial": {"rows": {}}}
    table = recipe_table(report)
    before = steps[0] * 1.0 + sum(steps[1:]) * 0.5 + d.joint_steps * 2.0
    assert f"| before | {before:.0f} | 1.00x |" in table
    assert f"| after | {before / 2:.0f} | 2.00x |" in table
    assert "partial" not in table  # a variant without every configuration is not estimated
    assert "| before | " + list(CONFIGS)[0] + " | 8.00 | 1.000 |" in render(report)
