"""Two real CPU processes (gloo) through `accelerate launch`: both ranks must end with identical LoRA
weights although each rank trains on different images (DDP all-reduces the LoRA gradients), and
both must switch the curriculum on the same steps, also where the switch is decided by the reward
plateau rule (the tracker is fed the reward all-reduced over the ranks; a rank deciding on its own
images' reward would switch on another step and then train against another reward-model stage).

DESIGN.md §4: `accelerate launch --num_processes 2 --cpu` silently runs ONE process, so this test
uses `ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2` and checks the world
size the script reports."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import run_launch
from fixture_models import make_detector_model

ROOT = Path(__file__).resolve().parent.parent


def launch_two(tmp_path: Path, out: Path, port: int, steps: int, checkpointing_steps: int) -> subprocess.CompletedProcess:
    """Run ccl_lora in two gloo processes with ``tmp_path``'s rm/ and sched.json; asserts it exits 0."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "MASTER_PORT": str(port)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
           str(ROOT / "training" / "ccl_lora.py"),
           "--reward_model", str(tmp_path / "rm"), "--ccl_config", str(tmp_path / "sched.json"),
           "--max_train_steps", str(steps), "--photo_sources", "skimage", "--hr_size", "64", "--train_batch_size", "1",
           "--validation_images", "1", "--validation_steps", "0", "--checkpointing_steps", str(checkpointing_steps),
           "--no_brisque", "--learning_rate", "1e-2", "--refl_loss", "neg", "--grad_scale", "1", "--report_to", "none",
           "--num_threads", "1", "--output_dir", str(out)]
    proc = run_launch(cmd, env, timeout=400, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_two_cpu_processes_end_with_identical_lora_and_switch_on_the_same_steps(tmp_path):
    # a reward whose map has structure (tests/fixture_models.py), so that the reward differs from image
    # to image, hence from rank to rank (the tiny random model scores every image alike to 1e-5)
    make_detector_model().save_pretrained(tmp_path / "rm")
    # a fixed-length stage, then a plateau stage: window 1, threshold 0 = switch at the first step
    # whose (all-reduced) reward is below the previous one, at the latest after 4 steps
    (tmp_path / "sched.json").write_text(json.dumps({"stages": [
        {"rm_stage": 0, "steps": 1},
        {"rm_stage": 2, "lambda_pdm": 0.5, "plateau_window": 1, "plateau_threshold": 0.0, "max_steps": 4},
        {"rm_stage": 4, "lambda_pdm": 1.0}]}))
    out = tmp_path / "run"
    proc = launch_two(tmp_path, out, 29617, steps=6, checkpointing_steps=2)
    res = json.loads((out / "result.json").read_text())
    assert res["world_size"] == 2, "accelerate ran a single process: the launch line is wrong"
    assert "process 1 of 2" in proc.stderr
    assert res["rank_max_abs_diff"] == 0.0, "ranks diverged: LoRA gradients were not synchronised"
    # a checkpoint written by two processes has both ranks' RNG states and resumes
    ckpt = out / "checkpoints" / "checkpoint-2"
    assert (ckpt / "COMPLETE").is_file() and (ckpt / "random_states_1.pkl").is_file()
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    switches = res["switches"]
    assert [s["reason"] for s in switches] == ["steps", "plateau"] and switches[0]["step"] == 1
    # the plateau switch really followed the (all-reduced, logged) reward: the first drop after 2 steps
    rewards = {r["step"]: r["reward"] for r in log}
    drop = next(t for t in range(3, 7) if rewards[t] < rewards[t - 1])
    assert switches[1]["step"] == drop
    # ... and both ranks switched on exactly those steps
    assert res["rank_switch_steps"] == [[1, drop, -1]] * 2, res["rank_switch_steps"]
    assert [r["rm_stage"] for r in log] == [0] + [2] * (drop - 1) + [4] * (6 - drop)


def test_two_cpu_processes_coevolve_the_same_reward_model(tmp_path):
    from training.data.build_fgr import build
    from training.data.sr_pool import ClassicalSR

    make_detector_model().save_pretrained(tmp_path / "rm")
    build(tmp_path / "fgr", {"train": 4, "val": 3}, hr_size=64, seed=2, feature="ssim", pixel_scale=0.1,
          feature_scale=0.3, pool=[(ClassicalSR("bicubic"), 1.0)], progress=False)
    (tmp_path / "sched.json").write_text(json.dumps({
        "stages": [{"rm_stage": 0, "steps": 1}, {"rm_stage": 3, "lambda_pdm": 1.0}],
        "coevolve": {"data": str(tmp_path / "fgr"), "every": 2, "items": 2, "steps": 2, "batch_size": 2,
                     "learning_rate": 1e-2, "max_update": 1.0, "max_drop": 1.0, "hr_band": 10.0, "val_items": 3}}))
    out = tmp_path / "run"
    launch_two(tmp_path, out, 29619, steps=3, checkpointing_steps=100)
    res = json.loads((out / "result.json").read_text())
    assert res["world_size"] == 2 and res["coevolve"]["accepted"] == 1
    assert res["reward_rank_max_abs_diff"] == 0.0 and res["rank_max_abs_diff"] == 0.0
