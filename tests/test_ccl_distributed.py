"""Two real CPU processes (gloo) through `accelerate launch`: both ranks must end with identical LoRA
weights although each rank trains on different images (DDP all-reduces the LoRA gradients).

DESIGN.md §4: `accelerate launch --num_processes 2 --cpu` silently runs ONE process, so this test
uses `ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2` and checks the world
size the script reports."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import make_tiny_model

ROOT = Path(__file__).resolve().parent.parent


def test_two_cpu_processes_end_with_identical_lora(tmp_path):
    make_tiny_model(seed=0).save_pretrained(tmp_path / "rm")
    (tmp_path / "sched.json").write_text(json.dumps({"stages": [
        {"rm_stage": 0, "steps": 1}, {"rm_stage": 4, "lambda_pdm": 1.0}]}))
    out = tmp_path / "run"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "MASTER_PORT": "29617"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29617",
           str(ROOT / "training" / "ccl_lora.py"),
           "--reward_model", str(tmp_path / "rm"), "--ccl_config", str(tmp_path / "sched.json"),
           "--max_train_steps", "3", "--photo_sources", "skimage", "--hr_size", "64", "--train_batch_size", "1",
           "--validation_images", "1", "--validation_steps", "0", "--checkpointing_steps", "2", "--no_brisque",
           "--learning_rate", "1e-2", "--refl_loss", "neg", "--grad_scale", "1", "--report_to", "none",
           "--num_threads", "1", "--output_dir", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads((out / "result.json").read_text())
    assert res["world_size"] == 2, "accelerate ran a single process: the launch line is wrong"
    assert "process 1 of 2" in proc.stderr
    assert res["rank_max_abs_diff"] == 0.0, "ranks diverged: LoRA gradients were not synchronised"
    # a checkpoint written by two processes has both ranks' RNG states and resumes
    ckpt = out / "checkpoints" / "checkpoint-2"
    assert (ckpt / "COMPLETE").is_file() and (ckpt / "random_states_1.pkl").is_file()
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["rm_stage"] for r in log] == [0, 4, 4]
