"""CCL schedule as data, the curriculum tracker, the ReFL loss, and crash-safe checkpoint helpers."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from diffusers_ext.rewards import RewardConfig, refl_loss
from training.ccl.schedule import CCLSchedule, CurriculumStage, CurriculumTracker
from training.checkpointing import atomic_write_dir, find_checkpoint, list_checkpoints, recover_dir

CONFIGS = Path(__file__).resolve().parent.parent / "training" / "configs"


def test_shipped_configs_parse_and_fit_a_six_stage_model():
    files = sorted(CONFIGS.glob("*.yaml")) + sorted(CONFIGS.glob("*.json"))
    assert {"ccl_default.yaml", "global_only.yaml", "full_no_ccl.yaml"} <= {f.name for f in files}
    for f in files:
        if f.name.startswith("experiment"):
            continue
        s = CCLSchedule.load(f)
        s.validate(num_rm_stages=5)
        assert s.stages[0].rm_stage == 0 or len(s.stages) == 1
    default = CCLSchedule.load(CONFIGS / "ccl_default.yaml")
    assert [st.rm_stage for st in default.stages] == sorted(st.rm_stage for st in default.stages)
    assert default.stages[0].lambda_pdm == 0.0 and default.stages[-1].lambda_pdm > 0


def test_yaml_and_json_give_the_same_schedule(tmp_path):
    d = {"reward": {"softmax": "lse", "temperature": 0.1},
         "stages": [{"rm_stage": 0, "steps": 5}, {"rm_stage": 3, "lambda_pdm": 0.5, "plateau_window": 4}]}
    (tmp_path / "s.json").write_text(json.dumps(d))
    import yaml

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(d))
    a, b = CCLSchedule.load(tmp_path / "s.json"), CCLSchedule.load(tmp_path / "s.yaml")
    assert a.to_dict() == b.to_dict()
    cfg = a.stages[1].reward_config(a.reward)
    assert (cfg.softmax, cfg.temperature, cfg.lambda_pdm) == ("lse", 0.1, 0.5)
    assert CCLSchedule.from_dict(a.to_dict()).to_dict() == a.to_dict()


@pytest.mark.parametrize("bad, match", [
    ({"stages": []}, "non-empty 'stages'"),
    ({"stages": [{"lambda_pdm": 1}]}, "rm_stage"),
    ({"stages": [{"rm_stage": 0, "stepz": 3}]}, "unknown keys"),
    ({"stages": [{"rm_stage": 0}, {"rm_stage": 2}]}, "never end"),
    ({"stages": [{"rm_stage": 0, "steps": 3, "plateau_window": 2}, {"rm_stage": 1}]}, "not both"),
    ({"stages": [{"rm_stage": 0, "lambda_pdm": 0.5}]}, "no map"),
    ({"stages": [{"rm_stage": 1, "softmax": "median"}]}, "unknown softmax"),
    ({"stages": [{"rm_stage": 0, "steps": 0}, {"rm_stage": 1}]}, "positive integer"),
    ({"reward": {"topk": 1}, "stages": [{"rm_stage": 0}]}, "unknown reward keys"),
])
def test_bad_schedules_are_refused_with_the_reason(bad, match):
    with pytest.raises(ValueError, match=match):
        CCLSchedule.from_dict(bad)


def test_schedule_checks_the_reward_model_stage_count():
    s = CCLSchedule.from_dict({"stages": [{"rm_stage": 0, "steps": 1}, {"rm_stage": 5, "lambda_pdm": 1}]})
    s.validate(num_rm_stages=5)
    with pytest.raises(ValueError, match="stages 0..4"):
        s.validate(num_rm_stages=4)


def test_tracker_fixed_steps_plateau_and_cap():
    s = CCLSchedule(stages=[CurriculumStage(0, steps=3),
                            CurriculumStage(2, lambda_pdm=0.5, plateau_window=2, plateau_threshold=0.01),
                            CurriculumStage(3, lambda_pdm=0.7, plateau_window=5, max_steps=4),
                            CurriculumStage(4, lambda_pdm=1.0)])
    t = CurriculumTracker(s)
    rewards = [0.1, 0.2, 0.3,              # stage 0: 3 fixed steps
               0.4, 0.5, 0.6, 0.6, 0.6, 0.6,  # stage 1: rising, then flat -> plateau at its 6th step
               1.0, 2.0, 3.0, 4.0,         # stage 2: rising but capped by max_steps = 4
               5.0, 5.0, 5.0]              # last stage never ends
    events = [t.update(i + 1, r) for i, r in enumerate(rewards)]
    switches = [(e["step"], e["reason"], e["to_rm_stage"]) for e in events if e]
    assert switches == [(3, "steps", 2), (9, "plateau", 3), (13, "max_steps", 4)]
    assert t.index == 3 and t.reward_config().lambda_pdm == 1.0


def test_plateau_needs_two_windows_and_min_steps():
    s = CCLSchedule(stages=[CurriculumStage(0, plateau_window=3, plateau_threshold=1.0, min_steps=10),
                            CurriculumStage(1)])
    t = CurriculumTracker(s)
    steps = [i + 1 for i in range(12) if t.update(i + 1, 0.0)]
    assert steps == [10]  # flat from the start, but not before min_steps (and 2 windows)


def test_tracker_state_roundtrip_and_schedule_mismatch():
    s = CCLSchedule(stages=[CurriculumStage(0, plateau_window=2, plateau_threshold=1e-6), CurriculumStage(1)])
    a = CurriculumTracker(s)
    for i, r in enumerate([0.1, 0.3, 0.4]):
        a.update(i + 1, r)
    b = CurriculumTracker(s)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    # both continue identically: 0.4, 0.4 after (0.3, 0.4) -> ma 0.4 vs 0.35: rising; then flat -> switch
    for step, r in [(4, 0.4), (5, 0.4), (6, 0.4)]:
        assert a.update(step, r) == b.update(step, r)
    assert a.index == b.index == 1
    other = CurriculumTracker(CCLSchedule(stages=[CurriculumStage(0, steps=9), CurriculumStage(1)]))
    with pytest.raises(ValueError, match="another CCL schedule"):
        other.load_state_dict(a.state_dict())


def test_refl_loss_forms():
    r = torch.tensor([1.0, 3.0], requires_grad=True)
    loss = refl_loss(r, "relu", margin=2.0, grad_scale=1e-3)
    assert torch.isclose(loss, torch.tensor(0.5e-3))
    loss.backward()
    assert r.grad.tolist() == pytest.approx([-0.5e-3, 0.0])  # no push once R >= margin
    assert torch.isclose(refl_loss(torch.tensor([1.0, 3.0]), "neg", grad_scale=2.0), torch.tensor(-4.0))
    with pytest.raises(ValueError, match="unknown ReFL loss"):
        refl_loss(r, "hinge")


def test_atomic_write_dir_never_leaves_a_half_folder(tmp_path):
    target = tmp_path / "lora"
    atomic_write_dir(target, lambda d: (d / "w.txt").write_text("v1"))
    assert (target / "w.txt").read_text() == "v1"

    def crash(d):
        (d / "w.txt").write_text("partial")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        atomic_write_dir(target, crash)
    assert (target / "w.txt").read_text() == "v1"
    # a crash between "old folder moved away" and "new folder moved in": both recoverable
    ready = tmp_path / "lora.ready"
    ready.mkdir()
    (ready / "w.txt").write_text("v2")
    os.replace(target, tmp_path / "lora.old")
    assert not target.exists()
    recover_dir(target)
    assert (target / "w.txt").read_text() == "v2" and not (tmp_path / "lora.old").exists()
    os.replace(target, tmp_path / "lora.old")
    recover_dir(target)  # no .ready: the old one comes back
    assert (target / "w.txt").read_text() == "v2"


def test_incomplete_checkpoints_are_never_resumed(tmp_path):
    root = tmp_path / "checkpoints"
    for step, complete in [(2, True), (4, True), (6, False)]:
        d = root / f"checkpoint-{step}"
        d.mkdir(parents=True)
        (d / "step.json").write_text(json.dumps({"step": step}))
        if complete:
            (d / "COMPLETE").write_text("ok")
    (root / "checkpoint-8.tmp").mkdir()
    assert [p.name for p in list_checkpoints(root)] == ["checkpoint-2", "checkpoint-4"]
    assert find_checkpoint(root, "latest").name == "checkpoint-4"
    assert find_checkpoint(root, None) is None
    assert find_checkpoint(tmp_path / "empty", "latest") is None
    with pytest.raises(ValueError, match="incomplete"):
        find_checkpoint(root, str(root / "checkpoint-6"))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        find_checkpoint(root, str(root / "checkpoint-99"))
