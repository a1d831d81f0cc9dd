"""The reward-hacking flag (training/ccl/hackflag.py): the rule, the monitor's ``hack`` column and its
warning line, the run's ``final_metrics.json``, and the experiment's tables."""
from __future__ import annotations

import json
import logging
import math

import pytest

from training import ccl_lora
from training.ccl import hacking
from training.ccl.hackflag import HackRule, parse_metrics, summary
from training.ccl.monitor import LABELS, Monitor

from test_ccl_train import assets, base_args  # noqa: F401  (the tiny reward model fixture)

START = {"step": 0.0, "reward_final": 1.0, "lpips_alex": 0.30, "dists": 0.20, "psnr": 24.0}
ALEX = ("lpips_alex", "dists")  # the rule's metrics until v6; these tests' records carry LPIPS-alex


def rec(step: float, reward: float, lpips: float, dists: float) -> dict[str, float]:
    return {"step": step, "reward_final": reward, "lpips_alex": lpips, "dists": dists}


def test_the_rule_needs_a_reward_rise_and_both_perceptual_distances_worse():
    rule = HackRule(reward_margin=0.05, perceptual_margin=0.01, metrics=ALEX)
    assert rule.check(START, rec(1, 1.10, 0.32, 0.22)) is True  # the hack
    assert rule.check(START, rec(1, 1.04, 0.40, 0.30)) is False  # reward up too little
    assert rule.check(START, rec(1, 1.10, 0.305, 0.30)) is False  # LPIPS worse by less than the margin
    assert rule.check(START, rec(1, 1.10, 0.40, 0.205)) is False  # DISTS worse by less than the margin
    assert rule.check(START, rec(1, 1.10, 0.25, 0.15)) is False  # a real improvement
    assert rule.check(START, rec(1, 0.90, 0.40, 0.30)) is False  # everything worse: no hack, a failure
    assert rule.check(START, {"step": 1, "reward_final": 2.0, "lpips_alex": 0.9}) is None  # no DISTS: undecided
    loose = HackRule(reward_margin=0.0, perceptual_margin=0.0, metrics=ALEX)
    assert loose.check(START, rec(1, 1.01, 0.301, 0.201)) is True and rule.check(START, rec(1, 1.01, 0.301, 0.201)) is False
    assert "lpips_alex" in rule.describe() and "0.05" in rule.describe()


def test_summary_counts_flagged_evaluations():
    hist = [{"step": 0, "hack": 0.0}, {"step": 50, "hack": 0.0}, {"step": 100, "hack": 1.0}, {"step": 150, "hack": 1.0}]
    assert summary(hist) == {"hack_evals": 2.0, "hack_first_step": 100.0}
    assert summary(hist[:2]) == {"hack_evals": 0.0, "hack_first_step": -1.0}
    assert summary([{"step": 0}]) == {}


def bare_monitor(rule) -> Monitor:
    """A Monitor without models: only its history and hack rule (what :meth:`Monitor.flag_hack` reads)."""
    mon = Monitor.__new__(Monitor)
    mon.history, mon.hack_rule = [], rule
    return mon


def test_the_monitor_flags_against_step_0_and_warns(caplog):
    mon = bare_monitor(HackRule(metrics=ALEX))
    seq = [rec(0, 1.0, 0.30, 0.20), rec(50, 1.10, 0.35, 0.25), rec(100, 1.20, 0.36, 0.26), rec(150, 1.20, 0.29, 0.19)]
    with caplog.at_level(logging.WARNING, logger="training.ccl.monitor"):
        for r in seq:
            mon.flag_hack(r)
            mon.history.append(r)
    assert [r["hack"] for r in mon.history] == [0.0, 1.0, 1.0, 0.0]
    warnings = [r.getMessage() for r in caplog.records if "reward hacking" in r.getMessage()]
    assert len(warnings) == 2 and "step 50" in warnings[0] and "lpips_alex +0.0500" in warnings[0]
    # against step 0, not the previous evaluation: a slow drift is caught
    mon = bare_monitor(HackRule(metrics=ALEX))
    for i in range(6):
        r = rec(i, 1.0 + 0.02 * i, 0.30 + 0.004 * i, 0.20 + 0.004 * i)
        mon.flag_hack(r)
        mon.history.append(r)
    assert [r["hack"] for r in mon.history] == [0, 0, 0, 1, 1, 1]
    # without the perceptual columns, or with the rule off: no column
    mon = bare_monitor(HackRule(metrics=ALEX))
    r = {"step": 0.0, "reward_final": 1.0}
    mon.flag_hack(r)
    assert "hack" not in r
    mon = bare_monitor(None)
    r = rec(0, 1, 0.3, 0.2)
    mon.flag_hack(r)
    assert "hack" not in r
    assert "hack" in LABELS  # drawn as a panel of monitor.png


@pytest.mark.parametrize("margin,expect_flags", [("-100", True), ("100", False)])
def test_the_run_records_the_flag_in_its_monitor_and_final_metrics(margin, expect_flags, assets, tmp_path,  # noqa: F811
                                                                    caplog):
    """A margin of -100 flags every evaluation after step 0, +100 none: the columns, the warning line
    and final_metrics.json follow."""
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        res = ccl_lora.main(base_args(assets, out, steps=4, extra=[
            "--no_brisque", "--hack_reward_margin", margin, "--hack_perceptual_margin", margin]))
    mon = [json.loads(x) for x in (out / "monitor.jsonl").read_text().splitlines()]
    assert [m["hack"] for m in mon] == [0.0] + [float(expect_flags)] * 2
    final = json.loads((out / "lora" / "final_metrics.json").read_text())
    assert final == res["final"]
    assert final["hack"] == float(expect_flags)
    assert final["hack_evals"] == (2.0 if expect_flags else 0.0)
    assert final["hack_first_step"] == (2.0 if expect_flags else -1.0)
    assert ("reward hacking at step 2" in caplog.text) == expect_flags


def _fake_results(arm_row: dict) -> dict:
    base = {"reward_final": 1.0, "psnr": 24.0, "ssim": 0.6, "brisque": 50.0, "judge_score": 0.8,
            "lpips_alex": 0.30, "lpips_vgg": 0.35, "dists": 0.20}
    hr = {**base, "reward_final": 1.3, "psnr": math.inf, "ssim": 1.0, "lpips_alex": 0.0, "lpips_vgg": 0.0, "dists": 0.0}
    return {"per_seed": {"0": {"rows": {"base": base, "ccl": {**base, **arm_row}, "hr (reference)": hr}}}}


def test_the_hacking_table_has_the_flag_column():
    hacked = _fake_results({"reward_final": 1.2, "lpips_alex": 0.36, "dists": 0.25})
    fine = _fake_results({"reward_final": 1.2, "lpips_alex": 0.28, "dists": 0.25})
    rule = HackRule(metrics=ALEX)
    assert hacking.arm_rows(hacked, rule=rule)["ccl"]["hack_flag"] == [True]
    assert hacking.arm_rows(fine, rule=rule)["ccl"]["hack_flag"] == [False]
    assert hacking.arm_rows(hacked, rule=HackRule(reward_margin=0.5, metrics=ALEX))["ccl"]["hack_flag"] == [False]
    # the default rule reads LPIPS-VGG: LPIPS-alex taught v6, and a policy can please it while VGG worsens
    assert hacking.arm_rows(hacked)["ccl"]["hack_flag"] == [False]  # VGG unchanged
    vgg = _fake_results({"reward_final": 1.2, "lpips_alex": 0.28, "lpips_vgg": 0.40, "dists": 0.25})
    assert hacking.arm_rows(vgg)["ccl"]["hack_flag"] == [True] and hacking.arm_rows(vgg, rule=rule)["ccl"]["hack_flag"] == [False]
    old = _fake_results({"reward_final": 1.2})
    for row in old["per_seed"]["0"]["rows"].values():
        del row["lpips_alex"], row["dists"]
    assert hacking.arm_rows(old, rule=rule)["ccl"]["hack_flag"] == [None]
    assert hacking._flag_cell([True, False, None]) == "1/2" and hacking._flag_cell([None]) == "n/a"


def test_hack_metrics_parse_and_default():
    assert HackRule().metrics == ("lpips_vgg", "dists")
    assert parse_metrics("lpips_alex, dists") == ("lpips_alex", "dists")
    with pytest.raises(ValueError, match="subset of lpips_alex, lpips_vgg, dists"):
        parse_metrics("psnr")
    assert "lpips_vgg & dists" in HackRule().label()


def test_every_command_reads_the_rule_from_the_same_flags():
    """The rule a command was given (add_arguments) reaches another command whole (HackRule.argv), and
    ccl_lora, the experiment and the hacking table parse the same flags."""
    import argparse

    from training.ccl import experiment
    from training.ccl.hackflag import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p, "the base network's")
    assert HackRule.from_args(p.parse_args([])) == HackRule()
    rule = HackRule(0.2, 0.03, ("lpips_alex", "dists"))
    assert HackRule.from_args(p.parse_args(rule.argv())) == rule
    for parse in (lambda a: ccl_lora.parse_args(["--output_dir", "x", *a]),
                  lambda a: experiment.parse_args(a)):
        assert HackRule.from_args(parse(rule.argv())) == rule
