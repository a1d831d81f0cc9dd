"""The co-evolving reward (training/ccl/coevolve.py) on tiny models: the schedule block, what an
update changes, the bounded update, the guard that undoes an update, and ccl_lora end to end with
the adapted reward model saved next to the adapter and a SIGKILL resume that repeats the run."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model
from fixture_models import make_detector_model
from safetensors.torch import load_file

from diffusers_ext.models.finpercep_rm import FinPercepRM
from diffusers_ext.policies import FeedForwardSRPolicy
from training import ccl_lora
from training.ccl.coevolve import CoevolveConfig, RewardCoevolver
from training.ccl.data import load_photos
from training.ccl.schedule import CCLSchedule
from training.data.build_fgr import build
from training.data.sr_pool import ArtifactSR, ClassicalSR

ROOT = Path(__file__).resolve().parent.parent
KILL_AFTER = ROOT / "tests" / "ccl_kill_after.py"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("coevolve")
    build(root / "fgr", {"train": 6, "val": 4}, hr_size=64, seed=5, feature="ssim", pixel_scale=0.1,
          feature_scale=0.3, pool=[(ClassicalSR("bicubic"), 1.0), (ArtifactSR(ClassicalSR("lanczos")), 1.0)],
          progress=False)
    make_detector_model().save_pretrained(root / "rm")  # a score that reacts to detail, not a constant
    return root


def coevolver(assets, **cfg) -> RewardCoevolver:
    rm = FinPercepRM.from_pretrained(str(assets / "rm")).eval().requires_grad_(False)
    photos = load_photos("train", ["skimage"], min_side=64)
    conf = CoevolveConfig.from_dict({"data": str(assets / "fgr"), "items": 4, "steps": 6, "batch_size": 4,
                                     "learning_rate": 1e-2, "max_update": 1.0, "max_drop": 1.0, "hr_band": 10.0,
                                     "val_items": 4, **cfg})
    return RewardCoevolver(rm, conf, photos, 64, 4, "light", seed=0)


@pytest.fixture(scope="module")
def policy():
    return FeedForwardSRPolicy.from_pretrained("realesr-animevideov3-x4").eval()


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(a: dict, b: dict) -> set[str]:
    return {k for k in a if not torch.equal(a[k], b[k])}


def test_schedule_block_round_trips_and_bad_values_name_the_key(tmp_path):
    d = {"stages": [{"rm_stage": 0, "steps": 2}, {"rm_stage": 3, "lambda_pdm": 1.0}],
         "coevolve": {"data": "data/fgr_v3", "every": 25, "update": "level"}}
    s = CCLSchedule.from_dict(d)
    assert s.coevolve.every == 25 and s.coevolve.update == "level"
    assert CCLSchedule.from_dict(s.to_dict()).coevolve == s.coevolve
    assert CCLSchedule.from_dict({"stages": d["stages"]}).coevolve is None  # off by default
    for bad, msg in (({"every": 5}, "needs 'data'"), ({"data": "x", "update": "encoder"}, "update must be one of"),
                     ({"data": "x", "replay": 1.0}, "replay"), ({"data": "x", "every": 0}, "every"),
                     ({"data": "x", "evry": 3}, "unknown keys"), ({"data": "x", "labels": "lpips"}, "labels"),
                     ({"data": "x", "labels": "teacher", "teacher": "psnr"}, "teacher"),
                     ({"data": "x", "lambda_order": -1}, "lambda_order")):
        with pytest.raises(ValueError, match=msg):
            CCLSchedule.from_dict({**d, "coevolve": bad})
    with pytest.raises(FileNotFoundError, match="build_fgr"):
        RewardCoevolver(make_tiny_model(), CoevolveConfig(data=str(tmp_path)), [], 64, 4, "light", 0)


def test_policy_items_are_region_swaps_of_the_policy_output(assets, policy):
    co = coevolver(assets)
    items = co.policy_items(policy, step=10)
    lr, hr = co.sampler.batch(4, 10)
    with torch.no_grad():
        sr = policy(lr)["images"].clamp(0, 1)
    assert torch.allclose(items["gt"], hr) and torch.allclose(items["sr"], sr, atol=1e-6)
    m = items["mask"]
    assert torch.allclose(items["syn"], m * items["sr"] + (1 - m) * items["gt"], atol=1e-5)
    assert float(items["mgt"][m == 0].abs().max()) == 0.0 and float(items["mgt"].max()) > 0.0
    again = co.policy_items(policy, step=10)
    assert all(torch.equal(items[k], again[k]) for k in items)  # a pure function of (seed, step)


@pytest.mark.parametrize("update,stage", [("score", 2), ("heads", 2), ("level", 2), ("heads", 0)])
def test_an_update_changes_only_its_parameters_and_learns_the_policy_outputs(assets, policy, update, stage):
    co = coevolver(assets, update=update)
    before = snapshot(co.rm)
    rec = co.update(policy, step=4, stage=stage)
    diff = changed(before, snapshot(co.rm))
    allowed = {f"score_heads.{stage}."} | ({f"decoder.{stage - 1}.head."} if update == "heads" and stage else set()) \
        | ({f"decoder.{stage - 1}."} if update == "level" and stage else set())
    assert diff and all(any(k.startswith(a) for a in allowed) for k in diff), diff
    if update == "heads" and stage:
        assert any(k.startswith(f"decoder.{stage - 1}.head.") for k in diff)
    assert rec["accepted"]
    assert not any(p.requires_grad for p in co.rm.parameters())
    # trained to rank HR above the policy's outputs on them: the score gap output - HR falls
    assert rec["policy_gap_after"] < rec["policy_gap_before"], rec


def test_teacher_versions_are_hr_output_and_bicubic_with_the_teachers_distance(assets, policy):
    from diffusers_ext.perceptual import get_model

    co = coevolver(assets, labels="teacher")
    lr, hr, sr = co.policy_outputs(policy, step=10)
    versions = co.teacher_versions(lr, hr, sr)
    images, dist = versions.images, versions.distance
    assert images.shape == (4, 3, *hr.shape[1:]) and torch.equal(images[:, 0], hr) and torch.equal(images[:, 1], sr)
    lpips = get_model("lpips_alex")
    with torch.no_grad():
        expect = torch.stack([torch.zeros(4), lpips(sr, hr), lpips(images[:, 2], hr)], 1)
    assert torch.allclose(dist, expect, atol=1e-5) and float(dist[:, 1:].min()) > 0


def test_teacher_labels_teach_the_update_the_teachers_order(assets, policy):
    """The same update with and without the teacher term, from the same start: only the teacher's
    update lowers the order loss of the versions (HR, output, bicubic), and it records the term."""
    teach, plain = coevolver(assets, labels="teacher", lambda_order=5.0), coevolver(assets)
    lr, hr, sr = teach.policy_outputs(policy, step=4)
    versions = teach.teacher_versions(lr, hr, sr)
    with torch.no_grad():
        start = float(teach.order_term(versions, 3))
    rec = teach.update(policy, step=4, stage=3)
    plain.update(policy, step=4, stage=3)
    with torch.no_grad():
        after_teacher, after_plain = float(teach.order_term(versions, 3)), float(plain.order_term(versions, 3))
    assert rec["accepted"] and rec["order_first"] == pytest.approx(start, rel=1e-4)
    assert after_teacher < start and after_teacher < after_plain, (start, after_teacher, after_plain)
    assert rec["teacher_sr"] > 0 and "order_first" not in plain.history[-1]


def test_the_update_is_bounded(assets, policy):
    co = coevolver(assets, update="heads", max_update=1e-3)
    start = [p.detach().clone() for p in co.parameters(3)]
    rec = co.update(policy, step=4, stage=3)
    delta = torch.sqrt(sum(((p - s) ** 2).sum() for p, s in zip(co.parameters(3), start)))
    norm = torch.sqrt(sum((s ** 2).sum() for s in start))
    assert rec["scaled"] and float(delta / norm) == pytest.approx(1e-3, rel=1e-3)


def test_a_broken_guard_undoes_the_update(assets, policy):
    co = coevolver(assets, hr_band=1e-9)
    before = snapshot(co.rm)
    rec = co.update(policy, step=4, stage=3)
    assert not rec["accepted"] and "HR score" in rec["rejected_because"][0]
    assert not changed(before, snapshot(co.rm))
    assert co.summary()["accepted"] == 0 and co.summary()["updates"] == 1


def test_the_memory_keeps_past_policy_items_up_to_its_size_and_replays_them(assets, policy):
    co, plain = coevolver(assets, memory=6), coevolver(assets)
    first = co.update(policy, step=4, stage=3)
    plain.update(policy, step=4, stage=3)
    assert first["memory_items"] == 0 and co.memory["gt"].shape[0] == 4 and not plain.memory
    assert not changed(snapshot(plain.rm), snapshot(co.rm))  # nothing to replay yet: the same update
    second = co.update(policy, step=6, stage=3)
    plain.update(policy, step=6, stage=3)
    assert second["memory_items"] == 4 and co.memory["gt"].shape[0] == 6  # 4 + 4 items, capped at 6
    assert changed(snapshot(plain.rm), snapshot(co.rm))  # the replayed step-4 items changed the update
    fresh = co.encode_items(co.policy_items(policy, step=6))
    assert all(torch.equal(co.memory[k][-4:], fresh[k]) for k in fresh)  # newest last, oldest dropped
    dec = co.decode_items(fresh)
    raw = co.policy_items(policy, step=6)
    assert all(float((dec[k] - raw[k]).abs().max()) <= (1e-3 if k == "mgt" else 0.5 / 255 + 1e-6) for k in raw)
    with pytest.raises(ValueError, match="memory"):
        CoevolveConfig.from_dict({"data": "x", "memory": -1})


def run_args(assets, out: Path, steps: int = 5, memory: int = 0) -> list[str]:
    sched = {"stages": [{"rm_stage": 0, "steps": 2}, {"rm_stage": 3, "lambda_pdm": 1.0}],
             "coevolve": {"data": str(assets / "fgr"), "every": 2, "items": 2, "steps": 3, "batch_size": 2,
                          "learning_rate": 1e-2, "max_update": 1.0, "max_drop": 1.0, "hr_band": 10.0,
                          "val_items": 4, "memory": memory}}
    (assets / "coevolve_sched.json").write_text(json.dumps(sched))
    return ["--reward_model", str(assets / "rm"), "--ccl_config", str(assets / "coevolve_sched.json"),
            "--max_train_steps", str(steps), "--photo_sources", "skimage", "--hr_size", "64",
            "--train_batch_size", "1", "--validation_images", "2", "--validation_steps", "0",
            "--checkpointing_steps", "2", "--learning_rate", "1e-2", "--refl_loss", "neg", "--grad_scale", "1",
            "--report_to", "none", "--brisque", "off", "--output_dir", str(out)]


@pytest.mark.parametrize("memory", [0, 3])
def test_ccl_lora_coevolves_saves_the_reward_model_and_resumes_exactly(assets, tmp_path, memory):
    ref, out = tmp_path / "ref", tmp_path / "crash"
    res = ccl_lora.main(run_args(assets, ref, memory=memory))
    assert res["coevolve"]["updates"] == 2 and res["coevolve"]["accepted"] == 2  # steps 2 and 4 of 5
    hist = [json.loads(x) for x in (ref / "coevolve.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [2, 4] and [h["rm_stage"] for h in hist] == [3, 3]
    adapted = FinPercepRM.from_pretrained(str(ref / "lora" / "reward_model"))
    original = FinPercepRM.from_pretrained(str(assets / "rm"))
    assert changed(snapshot(original), snapshot(adapted))
    assert "Co-evolving reward" in (ref / "lora" / "README.md").read_text()
    assert json.loads((ref / "lora" / "coevolve.json").read_text()) == hist
    # SIGKILL after step 3: the checkpoint of step 2 holds the reward model as adapted at step 2
    assert [h["memory_items"] for h in hist] == [0, 2 if memory else 0]
    proc = subprocess.run([sys.executable, str(KILL_AFTER), "3", *run_args(assets, out, memory=memory)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (out / "checkpoints" / "checkpoint-2" / "reward_model.safetensors").is_file()
    assert (out / "checkpoints" / "checkpoint-2" / "coevolve_memory.safetensors").is_file() == bool(memory)
    ccl_lora.main(run_args(assets, out, memory=memory) + ["--resume_from_checkpoint", "latest"])
    assert (out / "train_log.jsonl").read_text() == (ref / "train_log.jsonl").read_text()
    assert (out / "coevolve.jsonl").read_text() == (ref / "coevolve.jsonl").read_text()
    a = load_file(str(ref / "lora" / "reward_model" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(out / "lora" / "reward_model" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_a_run_without_coevolution_under_a_coevolving_schedule_is_refused(assets, tmp_path):
    out = tmp_path / "plain"
    args = run_args(assets, out, steps=2)
    plain = json.loads((assets / "coevolve_sched.json").read_text())
    del plain["coevolve"]
    (assets / "plain_sched.json").write_text(json.dumps(plain))
    i = args.index("--ccl_config") + 1
    ccl_lora.main(args[:i] + [str(assets / "plain_sched.json")] + args[i + 1:] + ["--max_train_steps", "3"])
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    with pytest.raises(SystemExit, match="without the co-evolving reward"):
        ccl_lora.main(run_args(assets, out, steps=4) + ["--resume_from_checkpoint", "latest"])


def test_the_one_step_diffusion_policy_runs_the_coevolving_schedule(assets, tmp_path):
    from tiny_sd import save_tiny_sd

    sd = save_tiny_sd(tmp_path / "tiny-sd", "onestep")
    out = tmp_path / "onestep"
    args = run_args(assets, out, steps=3) + ["--policy", "onestep", "--pretrained_model", str(sd), "--lora_rank", "4",
                                             "--validation_images", "1"]
    i = args.index("--checkpointing_steps") + 1
    args[i] = "100"
    before = snapshot(FinPercepRM.from_pretrained(str(assets / "rm")))
    res = ccl_lora.main(args)
    assert res["coevolve"]["updates"] == 1 and res["coevolve"]["accepted"] == 1  # at step 2 of 3
    assert changed(before, snapshot(FinPercepRM.from_pretrained(str(out / "lora" / "reward_model"))))
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
