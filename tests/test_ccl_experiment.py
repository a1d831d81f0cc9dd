"""training/ccl/experiment.py end to end at toy scale (real pretrained feed-forward net, tiny reward
model and an independent tiny judge): all three arms (global, full, ccl) train with their own reward
schedules and are scored on the test crops; an arm runs once per seed and the seeds are aggregated;
the curves are drawn; a rerun resumes instead of retraining. To stay cheap, the three arms run for
seed 0, then the ccl arm for seeds 0 and 1 in the same folder (seed 0 is reused, not retrained)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import make_tiny_model
from PIL import Image

from training.ccl import experiment


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    make_tiny_model(seed=0).save_pretrained(root / "rm")
    make_tiny_model(seed=5).save_pretrained(root / "judge")
    common = ["--out", str(root / "out"), "--reward_model", str(root / "rm"), "--judge_model", str(root / "judge"),
              "--steps", "4", "--batch", "1", "--hr_size", "64", "--validation_steps", "2", "--validation_images", "2",
              "--test_images", "2", "--photo_sources", "skimage", "--num_threads", "1"]
    all_arms = experiment.main([*common, "--arms", "global,full,ccl", "--seeds", "0"])
    argv = [*common, "--arms", "ccl", "--seeds", "0,1"]
    return root, argv, experiment.main(argv), all_arms


def test_all_three_arms_train_with_their_schedules_and_are_scored(run):
    from safetensors.torch import load_file

    root, _, _, res = run
    out = root / "out" / "seed0"
    stages = {arm: [json.loads(x)["rm_stage"] for x in (out / arm / "train_log.jsonl").read_text().splitlines()]
              for arm in ("global", "full", "ccl")}
    n = make_tiny_model().num_stages
    assert stages == {"global": [0] * 4, "full": [n] * 4, "ccl": [0, 2, 3, 4]}  # RM_0 / RM_N / the curriculum
    assert list(res["mean_over_seeds"]) == ["base", "global", "full", "ccl", "hr (reference)"]
    rows = res["per_seed"][0]["rows"]
    assert all(np.isfinite(rows[arm]["reward_final"]) and np.isfinite(rows[arm]["psnr"]) for arm in stages)
    # the reward schedule is all that differs between the arms, and it changes what they learn
    weights = {arm: load_file(str(out / arm / "lora" / "pytorch_lora_weights.safetensors")) for arm in stages}
    for a, b in (("global", "full"), ("global", "ccl"), ("full", "ccl")):
        assert any(not torch.equal(weights[a][k], weights[b][k]) for k in weights[a]), (a, b)
    assert [s["to_rm_stage"] for s in res["switches"]["ccl/seed0"]] == [2, 3, 4]
    assert res["switches"]["global/seed0"] == res["switches"]["full/seed0"] == []
    table = (out.parent / "results.md").read_text()
    assert "| ccl |" in table  # results.md is rewritten by the later ccl-only call


def test_an_arm_runs_once_per_seed_and_the_seeds_are_aggregated(run):
    root, _, res, _ = run
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
    for key in ("lpips_alex", "lpips_vgg", "dists"):
        assert res["per_seed"][0]["rows"]["hr (reference)"][key] == pytest.approx(0.0, abs=1e-6)
        assert res["per_seed"][0]["rows"]["base"][key] > 0.0
    table = (out / "results.md").read_text()
    assert "judge_flagged" in table and "lpips_vgg" in table and "dists" in table and "| ccl |" in table
    assert "percep" not in table
    for png in ("curves.png", "examples.png"):
        assert Image.open(out / png).size[0] > 100
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["switches"]) == {"ccl/seed0", "ccl/seed1"}


def test_rerun_resumes_finished_runs(run):
    root, argv, res, _ = run
    stamp = {p: p.stat().st_mtime_ns for p in (root / "out").glob("seed*/*/lora/pytorch_lora_weights.safetensors")}
    again = experiment.main(argv)
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp  # nothing retrained
    assert again["mean_over_seeds"]["ccl"]["psnr"]["mean"] == pytest.approx(res["mean_over_seeds"]["ccl"]["psnr"]["mean"])


def test_the_coevolving_arm_is_the_curriculum_plus_the_coevolve_block():
    sch = experiment.schedules(5, 300, {"data": "data/fgr_v3", "every": 50})
    assert sch["coevo"]["stages"] == sch["ccl"]["stages"] and sch["coevo"]["coevolve"]["every"] == 50
    assert "coevo" not in experiment.schedules(5, 300)
    from training.ccl.schedule import CCLSchedule

    assert CCLSchedule.from_dict(sch["coevo"]).coevolve.every == 50


def test_the_hacking_benchmark_reads_the_experiment(run, tmp_path):
    from training.ccl import hacking

    root, _, res, _ = run
    text = hacking.main([str(root / "out")])
    saved = json.loads((root / "out" / "results.json").read_text())
    rows = saved["per_seed"]["0"]["rows"]
    excess = rows["ccl"]["reward_final"] - rows["hr (reference)"]["reward_final"]
    d_psnr = [r["rows"]["ccl"]["psnr"] - r["rows"]["base"]["psnr"] for r in saved["per_seed"].values()]
    d_dists = [r["rows"]["ccl"]["dists"] - r["rows"]["base"]["dists"] for r in saved["per_seed"].values()]
    line = next(x for x in text.splitlines() if "| ccl |" in x)
    assert f"{np.mean(d_psnr):+.3f}" in line and f"{np.mean(d_dists):+.3f}" in line
    head = text.splitlines()[0]
    assert "LPIPS-alex - base" in head and "LPIPS-vgg - base" in head and "DISTS - base" in head
    assert "hack flag seeds" in head and "hack" in (root / "out" / "results.md").read_text().splitlines()[0]
    # the hack flag against the base network: 0 or 1 per arm and seed, 0 for the base itself
    assert rows["base"]["hack"] == 0.0 and rows["ccl"]["hack"] in (0.0, 1.0)
    # the runs' monitors carry LPIPS-VGG (the curves draw it) and the flag against their step 0
    mon = [json.loads(x) for x in (root / "out" / "seed0" / "ccl" / "monitor.jsonl").read_text().splitlines()]
    assert all("lpips_vgg" in m and m["hack"] in (0.0, 1.0) for m in mon)
    # an experiment of an older version (percep, no LPIPS/DISTS) still reads: n/a in the new columns
    old = json.loads(json.dumps(saved))
    for r in old["per_seed"].values():
        for row in r["rows"].values():
            row["percep"] = row.pop("dists")
            del row["lpips_alex"], row["lpips_vgg"]
    cells = hacking.arm_rows(old)["ccl"]
    assert cells["d_percep"] == pytest.approx(d_dists) and all(math.isnan(v) for v in cells["d_lpips_alex"])
    assert hacking.arm_rows(saved)["ccl"]["reward_excess"][0] == pytest.approx(excess)
    # an arm whose reward ends above HR's while PSNR falls more than 1 dB counts as hacked
    fake = json.loads(json.dumps(saved))
    for r in fake["per_seed"].values():
        r["rows"]["ccl"]["reward_final"] = r["rows"]["hr (reference)"]["reward_final"] + 0.1
        r["rows"]["ccl"]["psnr"] = r["rows"]["base"]["psnr"] - 3.0
    (tmp_path / "results.json").write_text(json.dumps(fake))
    assert hacking.arm_rows(fake)["ccl"]["hacked"] == len(fake["per_seed"])
    assert f"| {len(fake['per_seed'])}/{len(fake['per_seed'])} |" in hacking.table([tmp_path])
    with pytest.raises(FileNotFoundError, match="training.ccl.experiment"):
        hacking.table([tmp_path / "missing"])
