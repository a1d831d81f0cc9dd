"""training.distributed.end_run: the process-group teardown is bounded. A real one-rank gloo group in
a subprocess; when ``destroy_process_group`` hangs (pytorch/pytorch#75097, seen once in our CI), the
process must still exit, with status 0 and a warning, instead of keeping the launcher waiting."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import logging, sys, time
import torch.distributed as dist
from training import distributed

class Accelerator:  # what end_run calls of accelerate's Accelerator
    def wait_for_everyone(self): pass
    def end_training(self): pass

logging.basicConfig(level=logging.INFO)
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=0, world_size=1)
if sys.argv[1] == "hang":
    dist.destroy_process_group = lambda *a, **k: time.sleep(3600)
distributed.end_run(Accelerator(), timeout_s=2.0)
print("returned; group still initialized:", dist.is_initialized())
sys.exit(3)
"""


def _run(mode: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", SCRIPT, mode, str(tmp_path / f"store_{mode}")], env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_teardown_that_works_destroys_the_group_and_returns(tmp_path):
    proc = _run("ok", tmp_path)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "group still initialized: False" in proc.stdout
    assert "hung" not in proc.stderr


def test_a_hung_teardown_exits_the_process_with_status_0_and_says_why(tmp_path):
    proc = _run("hang", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "returned" not in proc.stdout, "end_run returned although the teardown was still hanging"
    assert "teardown hung for 2 s" in proc.stderr and "75097" in proc.stderr
