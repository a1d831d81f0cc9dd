"""training/ccl/experiment.py end to end at toy scale: an arm trains once per seed (real pretrained
feed-forward net, tiny reward model and an independent tiny judge), the test crops are scored, the
seeds are aggregated, the curves are drawn, and a rerun resumes instead of retraining."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_tiny_model
from PIL import Image

from training.ccl import experiment


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    make_tiny_model(seed=0).save_pretrained(root / "rm")
    make_tiny_model(seed=5).save_pretrained(root / "judge")
    argv = ["--out", str(root / "out"), "--reward_model", str(root / "rm"), "--judge_model", str(root / "judge"),
            "--arms", "ccl", "--seeds", "0,1", "--steps", "2", "--batch", "1", "--hr_size", "64",
            "--validation_steps", "1", "--validation_images", "2", "--test_images", "2", "--photo_sources", "skimage",
            "--num_threads", "1"]
    return root, argv, experiment.main(argv)


def test_every_arm_and_seed_is_trained_scored_and_aggregated(run):
    root, _, res = run
    out = root / "out"
    for seed in (0, 1):
        for arm in ("ccl",):
            assert (out / f"seed{seed}" / arm / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert set(res["per_seed"]) == {0, 1}
    agg = res["mean_over_seeds"]
    assert list(agg) == ["base", "ccl", "hr (reference)"]
    for arm in ("ccl",):
        vals = [res["per_seed"][s]["rows"][arm]["reward_final"] for s in (0, 1)]
        assert agg[arm]["reward_final"]["mean"] == pytest.approx(np.mean(vals))
        assert agg[arm]["reward_final"]["min"] == min(vals) and agg[arm]["reward_final"]["max"] == max(vals)
    # the untouched base network and HR are the same for both seeds: same test crops
    assert res["per_seed"][0]["rows"]["base"]["psnr"] == pytest.approx(res["per_seed"][1]["rows"]["base"]["psnr"])
    # the judge is the independent model, not the reward model: its score differs from s_globalN
    base = res["per_seed"][0]["rows"]["base"]
    assert base["judge_score"] != pytest.approx(base["s_globalN"], abs=1e-6)
    # flagged = above the judge's 99th percentile on HR pixels: about 1 % of HR by construction
    assert res["per_seed"][0]["rows"]["hr (reference)"]["judge_flagged"] == pytest.approx(0.01, abs=0.005)
    table = (out / "results.md").read_text()
    assert "judge_flagged" in table and "| ccl |" in table
    for png in ("curves.png", "examples.png"):
        assert Image.open(out / png).size[0] > 100
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["switches"]) == {"ccl/seed0", "ccl/seed1"}


def test_rerun_resumes_finished_runs(run):
    root, argv, res = run
    stamp = {p: p.stat().st_mtime_ns for p in (root / "out").glob("seed*/*/lora/pytorch_lora_weights.safetensors")}
    again = experiment.main(argv)
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp  # nothing retrained
    assert again["mean_over_seeds"]["ccl"]["psnr"]["mean"] == pytest.approx(res["mean_over_seeds"]["ccl"]["psnr"]["mean"])
