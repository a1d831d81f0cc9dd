"""Reward-model training (training/train_reward.py) on two real CPU processes (gloo) through
`accelerate launch`: both ranks end with identical weights, and those weights equal (to float
rounding) a one-process run on the same global batch (2 processes x 4 triplets vs 1 x 8).

Why this can hold exactly: the loss runs through the prepared (DDP) module, so the gradients are
all-reduced; ``step_batches`` draws one global batch per step and gives each rank its slice; the
robustness inputs (invisible copies, PGD attacks, garbage images) draw their random numbers for the
global batch and take evenly spread rows (``term_rows``), so 2 x 4 rows are the rows 1 x 8 takes; the
scheduler counts process-steps. What would break it is BatchNorm in training mode: its statistics are
per process (DDP does not sync them), so a stage-0 run of a BatchNorm encoder (EfficientNet-Lite0)
cannot match a one-process run. This test therefore trains stage 1 (the encoder is frozen and in eval
mode) of a model whose tiny encoder has no BatchNorm at all.

DESIGN.md §4: `accelerate launch --num_processes 2 --cpu` silently runs ONE process, so the launch
line is `ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2`, and the test checks
the world size the script reports."""
from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_model, run_launch
from training.data.build_fgr import build
from training.data.sr_pool import ArtifactSR, ClassicalSR

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "training" / "train_reward.py"
WEIGHTS = "diffusion_pytorch_model.safetensors"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist_rm")
    build(root / "fgr", {"train": 6, "val": 2}, hr_size=64, seed=3, feature="ssim", pixel_scale=0.1,
          feature_scale=0.3, pool=[(ClassicalSR("bicubic"), 1.0), (ArtifactSR(ClassicalSR("lanczos")), 1.0)],
          progress=False)
    make_tiny_model(seed=0).save_pretrained(root / "init")
    return root


def _run(root: Path, out: Path, processes: int, batch: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    args = [str(SCRIPT), "--data", str(root / "fgr"), "--stage", "1", "--init", str(root / "init"),
            "--output_dir", str(out), "--max_steps", "3", "--batch_size", str(batch), "--crop", "48",
            "--learning_rate", "1e-2", "--warmup_steps", "1", "--checkpointing_steps", "100",
            "--validation_steps", "100", "--validation_items", "2", "--report_to", "none", "--num_threads", "1"]
    if processes == 1:
        cmd = [sys.executable, *args]
    else:
        port = str(_free_port())
        env.update(ACCELERATE_USE_CPU="true", MASTER_PORT=port)
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", port, *args]
    proc = run_launch(cmd, env, timeout=300, cwd=str(root))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "result.json").read_text())


def test_two_processes_end_identical_and_equal_to_one_process_on_the_global_batch(setup):
    two = _run(setup, setup / "two", processes=2, batch=4)
    assert two["world_size"] == 2, "accelerate ran a single process: the launch line is wrong"
    assert two["rank_max_abs_diff"] == 0.0, "ranks diverged: the gradients were not all-reduced"
    one = _run(setup, setup / "one", processes=1, batch=8)
    assert one["world_size"] == 1 and one["rank_max_abs_diff"] == 0.0

    init = load_file(str(setup / "init" / WEIGHTS))
    a, b = load_file(str(setup / "two" / "model" / WEIGHTS)), load_file(str(setup / "one" / "model" / WEIGHTS))
    assert a.keys() == b.keys() == init.keys()
    moved = max(float((b[k] - init[k]).abs().max()) for k in b)
    assert moved > 1e-3, "the one-process run hardly trained: the comparison would prove nothing"
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    # stage 1 trained only what stage 1 adds: the encoder (and stage 0) is untouched in both runs
    assert all(torch.equal(a[k], init[k]) for k in a if k.startswith("encoder."))


@pytest.mark.parametrize("fraction", [0.25, 0.5, 1.0, 0.3])
def test_robustness_rows_of_the_ranks_together_are_the_rows_of_the_global_batch(fraction):
    from training.train_reward import term_rows

    n, world = 10 if fraction == 0.3 else 4, 2
    together = torch.cat([term_rows(n, fraction) + r * n for r in range(world)])
    assert together.tolist() == term_rows(n * world, fraction).tolist()
    assert len(term_rows(n, fraction)) == round(n * fraction)
