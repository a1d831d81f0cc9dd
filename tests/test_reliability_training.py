"""Training faults (issue 6): SIGKILL at random points of both trainers then resume, crash-safe
folder and checkpoint writes, and Hub push retries against the local Hub test server.

Builds on tests/test_ccl_train.py (one fixed kill point of ccl_lora, push + load back) and
tests/test_fgr_and_training.py (train_reward resume after one SIGKILL mid-step), without repeating them.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch
from conftest import TINY_CONFIG, make_tiny_model
from hub_fixtures import local_hub  # noqa: F401
from safetensors.torch import load_file

from training import checkpointing
from training.checkpointing import (COMPLETE, atomic_write_dir, find_checkpoint, list_checkpoints, recover_dir,
                                    save_checkpoint)

ROOT = Path(__file__).resolve().parent.parent
CCL_SCRIPT = ["-m", "training.ccl_lora"]  # the installed packages, run as modules
RM_SCRIPT = ["-m", "training.train_reward"]
SCHEDULE = {"stages": [{"rm_stage": 0, "steps": 3},
                       {"rm_stage": 2, "lambda_pdm": 0.5, "plateau_window": 2, "plateau_threshold": 10.0},
                       {"rm_stage": 4, "lambda_pdm": 1.0}]}
MARKER = b"training steps "  # logged by both trainers just before their first step
KILL_SEED = 20261127  # the kill delays are drawn from this seed: the same draws on every run


# --------------------------------------------------------------------------------------- helpers
def tree_digest(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder`` (a byte-identity fingerprint)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def siblings(folder: Path) -> list[str]:
    """Leftovers of an interrupted atomic write next to ``folder``."""
    return sorted(p.name for p in folder.parent.glob(folder.name + ".*"))


def child_env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1",
           "PYTHONUNBUFFERED": "1"}
    env.pop("HF_ENDPOINT", None)
    return env


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny reward model, a CCL schedule and a tiny FGR dataset (shared by the kill tests)."""
    from training.data.build_fgr import build
    from training.data.sr_pool import ArtifactSR, ClassicalSR

    root = tmp_path_factory.mktemp("reliability_assets")
    make_tiny_model(seed=0).save_pretrained(root / "rm")
    (root / "sched.json").write_text(json.dumps(SCHEDULE))
    build(root / "fgr", {"train": 4, "val": 1}, hr_size=64, seed=3, feature="ssim", pixel_scale=0.1,
          feature_scale=0.3, pool=[(ClassicalSR("bicubic"), 1.0), (ArtifactSR(ClassicalSR("lanczos")), 1.0)],
          progress=False)
    return root


def ccl_argv(assets: Path, out: Path, steps: int) -> list[str]:
    return [*CCL_SCRIPT, "--reward_model", str(assets / "rm"), "--ccl_config", str(assets / "sched.json"),
            "--max_train_steps", str(steps), "--photo_sources", "skimage", "--hr_size", "64",
            "--train_batch_size", "1", "--validation_images", "1", "--validation_steps", "0",
            "--checkpointing_steps", "1", "--checkpoints_total_limit", "2", "--learning_rate", "1e-2",
            "--refl_loss", "neg", "--grad_scale", "1", "--report_to", "none", "--no_brisque", "--num_threads", "1",
            "--output_dir", str(out)]


def rm_argv(assets: Path, out: Path, steps: int) -> list[str]:
    return [*RM_SCRIPT, "--data", str(assets / "fgr"), "--stage", "0", "--output_dir", str(out),
            "--max_steps", str(steps), "--batch_size", "2", "--crop", "48", "--checkpointing_steps", "1",
            "--checkpoints_total_limit", "2", "--validation_steps", "1000", "--report_to", "none",
            "--backbone", "tiny", "--no_pretrained_backbone", "--num_threads", "1", "--warmup_steps", "2",
            "--model_config", json.dumps({k: v for k, v in TINY_CONFIG.items() if k != "backbone"})]


def progress(ckpts: Path) -> tuple[int, set[str]]:
    """The highest step whose checkpoint write has begun (``checkpoint-<step>`` or its ``.tmp``), and
    the ``.tmp`` folders there now. Checkpoints are written every step, so this is the run's step."""
    step, tmp = 0, set()
    for name in os.listdir(ckpts) if ckpts.is_dir() else []:
        m = re.fullmatch(r"checkpoint-(\d+)(\.tmp)?", name)
        if m:
            step = max(step, int(m.group(1)))
            if m.group(2):
                tmp.add(name)
    return step, tmp


def run_segment(argv: list[str], log: Path, kill: dict | None = None, timeout: float = 240.0) -> dict:
    """Run a trainer as a subprocess. With ``kill={"step": s, "mode": m, "delay": d}``: once the run
    reaches step ``s`` (its checkpoint write began), SIGKILL it ``d`` seconds later (mode "now": anywhere
    in the next step, its checkpoint write included), or as soon as a new ``checkpoint-<step>.tmp``
    folder shows up (mode "in_checkpoint_write": a kill inside ``save_checkpoint``; a ``.tmp`` left by
    an earlier kill does not count; should the polling miss three writes in a row, it kills at once).
    Returns the exit status and where the kill landed."""
    out = Path(argv[argv.index("--output_dir") + 1])
    ckpts = out / "checkpoints"
    stale = progress(ckpts)[1]
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, *argv], stdout=fh, stderr=subprocess.STDOUT, env=child_env(),
                                cwd=str(ROOT))
        t_end = time.monotonic() + timeout
        killed_at = killed_in = None
        try:
            while kill is not None and proc.poll() is None:
                if time.monotonic() > t_end:
                    raise TimeoutError(f"{' '.join(argv[:2])} never reached step {kill['step']}:\n{log.read_text()[-3000:]}")
                step, tmp = progress(ckpts)
                stale &= tmp
                if MARKER not in log.read_bytes() or step < kill["step"]:  # the loop must have started
                    time.sleep(0.001)
                    continue
                if kill["mode"] == "in_checkpoint_write" and step < kill["step"] + 3 and not tmp - stale:
                    time.sleep(0.0005)
                    continue
                killed_in = sorted(tmp - stale)[0] if kill["mode"] == "in_checkpoint_write" and tmp - stale else None
                time.sleep(kill["delay"])
                killed_at = step
                proc.send_signal(signal.SIGKILL)
                break
            rc = proc.wait(timeout=max(1.0, t_end - time.monotonic()))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {"rc": rc, "kill": kill, "killed_at": killed_at, "killed_in": killed_in}


def loop_seconds(log: Path, steps: int) -> float:
    """How long the training loop of a finished run took, from its log's timestamps: the loop start to
    the last checkpoint (step ``steps - 1``), scaled to ``steps`` (the evaluation, the final save and
    the interpreter's exit after the loop are left out)."""
    stamps = re.findall(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) [\w.]+: (training steps|\[RANK 0\] Saving "
                        r"current state)", log.read_text(errors="replace"))
    start = next(datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f") for t, what in stamps if what == "training steps")
    last = [datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f") for t, what in stamps if what != "training steps"][-1]
    return (last - start).total_seconds() * steps / (steps - 1)


def run_with_random_kills(argv: list[str], out: Path, kills: list[tuple[float, str, float]], step_seconds: float,
                          steps: int) -> list[dict]:
    """First run, then ``--resume_from_checkpoint latest`` reruns until one finishes; the i-th run is
    killed by ``kills[i] = (fraction, mode, offset)``: at the step ``fraction`` of the way through its
    remaining steps, ``offset`` of a step (``step_seconds``) later (see :func:`run_segment`). Checks
    after every kill that each listed checkpoint is whole."""
    segments = []
    for i in range(len(kills) + 1):
        resume = ["--resume_from_checkpoint", "latest"] if i else []
        latest = find_checkpoint(out / "checkpoints", "latest")
        done = int(latest.name.split("-")[1]) if latest else 0
        kill = None
        if i < len(kills):
            fraction, mode, offset = kills[i]
            target = min(steps - 1, done + max(1, round(fraction * (steps - done))))
            kill = {"step": target, "mode": mode, "delay": 0.0 if mode == "in_checkpoint_write" else
                    offset * step_seconds}
        seg = run_segment(argv + resume, out.parent / f"{out.name}-run{i}.log", kill)
        seg["latest"] = find_checkpoint(out / "checkpoints", "latest")
        seg["leftovers"] = sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*.*"))
        segments.append(seg)
        if seg["rc"] == 0:
            return segments
        assert seg["rc"] == -signal.SIGKILL, (out.parent / f"{out.name}-run{i}.log").read_text()[-3000:]
        for ckpt in list_checkpoints(out / "checkpoints"):  # whatever is listed is whole
            assert {"step.json", "optimizer.bin", COMPLETE} <= {p.name for p in ckpt.iterdir()}, ckpt
    raise AssertionError(f"the last rerun was not expected to be killed: {segments}")


def draw_kills(rng: random.Random) -> list[tuple[float, str, float]]:
    """Two kill points: in the first run, somewhere in a step 20-60 % of the way through (a random
    offset into that step, so possibly inside its checkpoint write); in the rerun, inside the first
    checkpoint write 10-60 % of the way through what is left. The second rerun then finishes."""
    return [(rng.uniform(0.2, 0.6), "now", rng.random()), (rng.uniform(0.1, 0.6), "in_checkpoint_write", 0.0)]


def describe(segments: list[dict]) -> str:
    return "; ".join(f"run {i}: kill={s['kill']} rc={s['rc']} killed_at={s['killed_at']} killed_in={s['killed_in']} "
                     f"latest={s['latest'] and s['latest'].name} leftovers={s['leftovers']}"
                     for i, s in enumerate(segments))


# --------------------------------------------------------------------------- 1. SIGKILL + resume
def test_ccl_lora_random_sigkills_then_resume_match_an_uninterrupted_run(assets, tmp_path):
    """ccl_lora killed twice at seeded random points (the second inside a checkpoint write), resumed
    with ``latest`` each time: the final LoRA, the train log (rewards, CCL stages, step by step) and the
    CCL switches equal an uninterrupted run's.

    Tolerance: the same as test_ccl_train's fixed-point kill test (atol 1e-7, i.e. in practice exact).
    Checkpoints hold the exact fp32 LoRA + AdamW state (safetensors / torch.save), the batches and the
    policy noise depend only on (seed, step), the CCL tracker state is saved with the checkpoint, and
    both runs use one CPU thread, so the resumed run recomputes the lost steps bit for bit; the atol
    only leaves room for a different float reduction order on another BLAS. No kill point breaks this:
    a kill before a checkpoint's rename loses at most the steps since the previous one (redone
    identically), a kill after the LoRA folder's swap leaves a finished run that the rerun redoes."""
    steps = 24
    ref = run_segment(ccl_argv(assets, tmp_path / "ref", steps), tmp_path / "ref.log")
    assert ref["rc"] == 0, (tmp_path / "ref.log").read_text()[-3000:]
    out = tmp_path / "crash"
    segments = run_with_random_kills(ccl_argv(assets, out, steps), out, draw_kills(random.Random(KILL_SEED)),
                                     loop_seconds(tmp_path / "ref.log", steps) / steps, steps)
    info = describe(segments)
    print(info)
    assert segments[0]["latest"] is not None, info  # the first kill landed mid-run, after a checkpoint
    assert [s["rc"] for s in segments] == [-signal.SIGKILL, -signal.SIGKILL, 0], info

    assert (out / "train_log.jsonl").read_text() == (tmp_path / "ref" / "train_log.jsonl").read_text(), info
    a = load_file(str(tmp_path / "ref" / "lora" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(out / "lora" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-7), (k, float((a[k] - b[k]).abs().max()), info)
    res, ref_res = (json.loads((d / "result.json").read_text()) for d in (out, tmp_path / "ref"))
    assert res["switches"] == ref_res["switches"] and ref_res["switches"], info
    assert not [p.name for p in out.glob("lora.*")] and not list((out / "checkpoints").glob("*.tmp")), info


def test_train_reward_random_sigkills_then_resume_match_an_uninterrupted_run(assets, tmp_path):
    """train_reward (stage 0: encoder, BatchNorm statistics, global head; AdamW + LR schedule) killed at
    seeded random points, one inside a checkpoint write, resumed with ``latest``: the final model equals
    an uninterrupted run's within test_fgr_and_training's resume tolerance (torch.testing.assert_close
    defaults; in practice exact for the reasons given in the ccl_lora test: exact fp32 state in the
    checkpoints, batches and crops that depend only on (seed, step), one CPU thread)."""
    from diffusers_ext.models.finpercep_rm import FinPercepRM

    steps = 40
    ref = run_segment(rm_argv(assets, tmp_path / "ref", steps), tmp_path / "ref.log")
    assert ref["rc"] == 0, (tmp_path / "ref.log").read_text()[-3000:]
    out = tmp_path / "crash"
    segments = run_with_random_kills(rm_argv(assets, out, steps), out, draw_kills(random.Random(KILL_SEED + 1)),
                                     loop_seconds(tmp_path / "ref.log", steps) / steps, steps)
    info = describe(segments)
    print(info)
    assert segments[0]["latest"] is not None, info
    assert [s["rc"] for s in segments] == [-signal.SIGKILL, -signal.SIGKILL, 0], info

    a = FinPercepRM.from_pretrained(tmp_path / "ref" / "model").state_dict()
    b = FinPercepRM.from_pretrained(out / "model").state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], msg=lambda m, k=k: f"{k}: {m} ({info})")
    assert not [p.name for p in out.glob("model.*")] and not list((out / "checkpoints").glob("*.tmp")), info


# --------------------------------------------------------------------------- 2. atomic writes
def _write_version(tag: str, fail_halfway: bool = False):
    def write(tmp: Path) -> None:
        (tmp / "weights.bin").write_bytes(hashlib.sha256(tag.encode()).digest() * 512)
        (tmp / "sub").mkdir()
        if fail_halfway:
            raise OSError("disk full (injected)")
        (tmp / "sub" / "config.json").write_text(json.dumps({"version": tag}))
    return write


def test_atomic_write_dir_failing_writer_keeps_the_previous_folder(tmp_path):
    folder = tmp_path / "model"
    atomic_write_dir(folder, _write_version("v1"))
    before = tree_digest(folder)
    with pytest.raises(OSError, match="injected"):
        atomic_write_dir(folder, _write_version("v2", fail_halfway=True))
    assert tree_digest(folder) == before
    assert siblings(folder) == []  # the half-written tmp folder is removed at once
    atomic_write_dir(folder, _write_version("v3"))
    assert json.loads((folder / "sub" / "config.json").read_text()) == {"version": "v3"}


CHILD_WRITER = textwrap.dedent("""
    import json, os, signal, sys, time
    from pathlib import Path
    from training import checkpointing

    folder, started, point = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    real_replace = os.replace

    def replace(src, dst):  # SIGKILL at a chosen point of the swap: no cleanup of any kind
        real_replace(src, dst)
        if (point == "after_ready" and str(dst).endswith(".ready")) or \\
                (point == "after_old" and str(dst).endswith(".old")) or \\
                (point == "after_swap" and str(dst) == str(folder)):
            os.kill(os.getpid(), signal.SIGKILL)

    checkpointing.os.replace = replace

    def write(tmp):
        (tmp / "weights.bin").write_bytes(b"v2" * 4096)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "config.json").write_text(json.dumps({{"version": "v2"}}))
        started.write_text("writing")
        if point == "in_write":
            time.sleep(60)  # the parent SIGKILLs us here

    checkpointing.atomic_write_dir(folder, write)
""")


@pytest.mark.parametrize("point, survivor", [("in_write", "v1"), ("after_ready", "v1"), ("after_old", "v2"),
                                             ("after_swap", "v2")])
def test_atomic_write_dir_sigkilled_writer_leaves_a_whole_folder(tmp_path, point, survivor):
    """A child process writing the folder is SIGKILLed: inside the write callback (by the parent, while
    it sleeps), or right after each rename of the swap. The folder that ``recover_dir`` (run by the next
    write, and by ``push_folder``) leaves is always a whole version: the previous one byte-identical, or
    the new one complete once it was fully written. Leftovers are cleaned."""
    folder = tmp_path / "lora"
    atomic_write_dir(folder, _write_version("v1"))
    v1 = tree_digest(folder)
    kill_child_writer(tmp_path, CHILD_WRITER, folder, point, kill_by_parent=point == "in_write")
    assert siblings(folder), "the kill left no trace: it did not land mid-write"
    if point in ("in_write", "after_ready"):  # before the swap: the previous folder is untouched
        assert tree_digest(folder) == v1
    recover_dir(folder)
    assert siblings(folder) == []
    got = tree_digest(folder)
    if survivor == "v1":
        assert got == v1
    else:
        assert json.loads((folder / "sub" / "config.json").read_text()) == {"version": "v2"}
        assert (folder / "weights.bin").read_bytes() == b"v2" * 4096 and set(got) == set(v1)
    atomic_write_dir(folder, _write_version("v3"))  # and the next write works as usual
    assert siblings(folder) == [] and json.loads((folder / "sub" / "config.json").read_text()) == {"version": "v3"}


class FakeAccelerator:
    """Single-process stand-in for accelerate: ``save_state`` writes two files (optionally failing or
    sleeping between them)."""

    is_main_process = True

    def __init__(self, payload: bytes, fail: bool = False):
        self.payload, self.fail = payload, fail

    def wait_for_everyone(self) -> None:
        pass

    def save_state(self, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.safetensors").write_bytes(self.payload * 1024)
        if self.fail:
            raise OSError("disk full (injected)")
        (Path(path) / "optimizer.bin").write_bytes(self.payload[::-1] * 1024)


def _checkpoints(root: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    listed = list_checkpoints(root)
    return [p.name for p in listed], {p.name: tree_digest(p) for p in listed}


def test_save_checkpoint_failing_write_keeps_the_latest_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2):
        save_checkpoint(FakeAccelerator(b"s%d" % step), root, step, limit=2, extra_json={"t.json": {"s": step}})
    names, digests = _checkpoints(root)
    with pytest.raises(OSError, match="injected"):
        save_checkpoint(FakeAccelerator(b"s3", fail=True), root, 3, limit=2)
    assert _checkpoints(root) == (names, digests)  # byte-identical, checkpoint-3 not listed
    assert find_checkpoint(root, "latest") == root / "checkpoint-2"
    with pytest.raises(ValueError, match="incomplete"):
        find_checkpoint(root, str(root / "checkpoint-3.tmp"))
    save_checkpoint(FakeAccelerator(b"s3"), root, 3, limit=2)
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-2", "checkpoint-3"]  # tmp swept, 1 pruned


CHILD_CKPT = textwrap.dedent("""
    import os, shutil, signal, sys, time
    from pathlib import Path
    from training import checkpointing

    root, started, point = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    real_replace, real_rmtree = os.replace, shutil.rmtree

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def replace(src, dst):
        if point == "before_rename" and Path(dst).name == "checkpoint-3":
            die()  # COMPLETE is written, the rename is not done
        real_replace(src, dst)

    def rmtree(path, *a, **k):  # a crash in the middle of deleting the oldest checkpoint
        p = Path(path)
        if point == "in_prune" and p.name.startswith("checkpoint-1") and p.is_dir():
            victim = next(f for f in sorted(p.iterdir()) if f.name != "COMPLETE")
            victim.unlink()
            die()
        real_rmtree(path, *a, **k)

    checkpointing.os.replace = replace
    checkpointing.shutil.rmtree = rmtree

    class Acc:
        is_main_process = True
        def wait_for_everyone(self):
            pass
        def save_state(self, path):
            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / "model.safetensors").write_bytes(b"s3" * 1024)
            started.write_text("writing")
            if point == "in_save_state":
                time.sleep(60)  # the parent SIGKILLs us here
            (Path(path) / "optimizer.bin").write_bytes(b"3s" * 1024)

    checkpointing.save_checkpoint(Acc(), root, 3, limit=2)
""")


def kill_child_writer(tmp_path: Path, template: str, target: Path, point: str, kill_by_parent: bool) -> None:
    """Run ``template`` (a writer script) in a child on ``target``; the child kills itself at ``point``,
    or (``kill_by_parent``) the parent SIGKILLs it once it signals that it is inside the write."""
    started = tmp_path / "started"
    script = tmp_path / "child.py"
    script.write_text(template.format(root=str(ROOT)))
    proc = subprocess.Popen([sys.executable, str(script), str(target), str(started), point], env=child_env())
    try:
        if kill_by_parent:
            t_end = time.monotonic() + 60
            while not started.exists() and proc.poll() is None and time.monotonic() < t_end:
                time.sleep(0.005)
            assert proc.poll() is None, "the writer ended before the kill"
            proc.send_signal(signal.SIGKILL)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == -signal.SIGKILL and started.exists()


@pytest.mark.parametrize("point", ["in_save_state", "before_rename", "in_prune"])
def test_save_checkpoint_sigkilled_writer_never_exposes_a_partial_checkpoint(tmp_path, point):
    """A child process in ``save_checkpoint`` is SIGKILLed while ``save_state`` writes (by the parent),
    after the COMPLETE marker but before the rename, or halfway through deleting the oldest checkpoint
    (limit 2). Every checkpoint ``list_checkpoints`` / ``find_checkpoint(latest)`` then returns is
    byte-identical to what was written, and the next save sweeps the leftovers."""
    root = tmp_path / "checkpoints"
    for step in (1, 2):
        save_checkpoint(FakeAccelerator(b"s%d" % step), root, step, limit=2)
    _, before = _checkpoints(root)
    kill_child_writer(tmp_path, CHILD_CKPT, root, point, kill_by_parent=point == "in_save_state")
    names, digests = _checkpoints(root)
    for name, digest in digests.items():  # whatever is listed is whole: as written, or the new one complete
        assert digest == before.get(name, digest) and {"model.safetensors", "optimizer.bin", COMPLETE,
                                                        "step.json"} <= set(digest), (name, digest)
    latest = find_checkpoint(root, "latest")
    assert latest.name == ("checkpoint-3" if point == "in_prune" else "checkpoint-2")
    assert checkpointing.checkpoint_step(latest) == int(latest.name.split("-")[1])
    assert [p.name for p in root.glob("checkpoint-*.*")], "the kill left no trace: it did not land mid-write"
    save_checkpoint(FakeAccelerator(b"s4"), root, 4, limit=2)  # the next write sweeps the leftovers
    assert sorted(p.name for p in root.iterdir()) == (["checkpoint-3", "checkpoint-4"] if point == "in_prune"
                                                      else ["checkpoint-2", "checkpoint-4"])


# --------------------------------------------------------------------------- 3. Hub push faults
@pytest.fixture
def adapter(tmp_path) -> Path:
    """A finished adapter folder (what write_lora_folder leaves): weights, model card, JSON."""
    folder = tmp_path / "run" / "lora"

    def write(tmp: Path) -> None:
        (tmp / "pytorch_lora_weights.safetensors").write_bytes(os.urandom(4096))
        (tmp / "README.md").write_text("---\nlibrary_name: peft\n---\n# adapter\n")
        (tmp / "ccl_schedule.json").write_text(json.dumps(SCHEDULE))

    return atomic_write_dir(folder, write)


class Waits:
    def __init__(self) -> None:
        self.ours: list[float] = []  # push_folder's own backoff
        self.hf: list[float] = []  # huggingface_hub's http_backoff

    def clock(self, record: list[float]):
        class Clock:  # stands in for the module's ``time``: records each wait, sleeps at most 0.01 s
            time, monotonic, perf_counter = staticmethod(time.time), staticmethod(time.monotonic), \
                staticmethod(time.perf_counter)

            @staticmethod
            def sleep(s: float) -> None:
                record.append(round(s, 6))
                time.sleep(min(s, 0.01))
        return Clock


@pytest.fixture
def fast_backoff(monkeypatch) -> Waits:
    """push_folder's backoff 0.01 s (then 0.02, 0.04 ...), huggingface_hub's waits (1 s, 2 s ...) cut to
    0.01 s; both recorded."""
    from huggingface_hub.utils import _http

    from training.ccl import export

    waits = Waits()
    monkeypatch.setattr(export, "PUSH_BACKOFF_S", 0.01, raising=False)
    monkeypatch.setattr(export, "time", waits.clock(waits.ours), raising=False)
    monkeypatch.setattr(_http, "time", waits.clock(waits.hf))
    return waits


@pytest.fixture(params=["xet", "legacy"])
def upload_path(request, monkeypatch) -> str:
    """Both commit paths of ``HfApi.upload_folder``: the hf_xet pipeline (its commit POST goes through
    huggingface_hub's http_backoff) and the legacy single commit (not retried by huggingface_hub)."""
    from huggingface_hub import hf_api

    if request.param == "legacy":
        monkeypatch.setattr(hf_api, "is_xet_available", lambda: False)
    elif not hf_api.is_xet_available():
        pytest.skip("hf_xet is not installed")
    return request.param


def _files_arrived(hub, repo: str, adapter: Path) -> None:
    assert set(hub.list_files(repo)) >= {p.name for p in adapter.iterdir()}
    for p in adapter.iterdir():
        assert hub.read_file(repo, p.name) == p.read_bytes(), p.name


def _backoff(n: int) -> list[float]:
    return [round(0.01 * 2 ** i, 6) for i in range(n)]


@pytest.mark.parametrize("route, fails", [("create_repo", 1), ("create_repo", 2), ("commit", 2)])
def test_push_retries_http_500_then_succeeds(adapter, local_hub, fast_backoff, upload_path,  # noqa: F811
                                             route, fails):
    from training.ccl.export import push_folder

    local_hub.fail_next(fails, status=500, route=route)
    before = tree_digest(adapter)
    url = push_folder(adapter, "user/lora-500")
    assert "user/lora-500" in url
    _files_arrived(local_hub, "user/lora-500", adapter)
    assert local_hub.count(route) == fails + 1  # every injected 500 was met, then one success
    # one wait per failure: retried once each, by push_folder (exponential) or by huggingface_hub, never both
    assert len(fast_backoff.ours) + len(fast_backoff.hf) == fails
    if route == "create_repo" or upload_path == "legacy":
        assert fast_backoff.ours == _backoff(fails)
    assert tree_digest(adapter) == before


@pytest.mark.parametrize("route", ["create_repo", "commit"])
def test_push_retries_a_dropped_connection(adapter, local_hub, fast_backoff, upload_path, route):  # noqa: F811
    from training.ccl.export import push_folder

    local_hub.drop_next(1, route=route)
    push_folder(adapter, "user/lora-drop")
    _files_arrived(local_hub, "user/lora-drop", adapter)
    assert [r.status for r in local_hub.requests if r.route == route] == [None, 200]  # dropped, then answered
    assert len(fast_backoff.ours) + len(fast_backoff.hf) == 1
    if route == "create_repo" or upload_path == "legacy":
        assert fast_backoff.ours == [0.01]


@pytest.mark.parametrize("route", ["create_repo", "commit"])
def test_push_persistent_5xx_gives_up_with_the_way_out_and_keeps_the_adapter(adapter, local_hub,  # noqa: F811
                                                                             fast_backoff, upload_path, route):
    """A Hub that keeps answering 503: push_folder stops after a bounded number of tries (its own 4,
    or huggingface_hub's 1 + 5 for a commit it already retries: not 4 x 6) and raises one line that
    names the local folder and the --push_only command; the adapter folder is byte-identical."""
    from training.ccl.export import push_folder

    local_hub.fail_next(1000, status=503, route=route)
    before = tree_digest(adapter)
    with pytest.raises(RuntimeError) as err:
        push_folder(adapter, "user/lora-down", attempts=4)
    msg = str(err.value)
    if route == "create_repo" or upload_path == "legacy":
        assert local_hub.count(route) == 4 and fast_backoff.ours == _backoff(3)  # bounded, exponential
        assert "after 4 tries" in msg
    else:
        assert local_hub.count(route) == 6 and fast_backoff.ours == [] and len(fast_backoff.hf) == 5
    assert local_hub.count("create_repo") == (4 if route == "create_repo" or upload_path == "legacy" else 1)
    assert str(adapter) in msg and "--push_only" in msg and "user/lora-down" in msg and "503" in msg
    assert "\n" not in msg  # one line
    assert tree_digest(adapter) == before


@pytest.mark.parametrize("status, route", [(401, "create_repo"), (403, "commit"), (404, "commit")])
def test_push_auth_and_not_found_errors_fail_at_once(adapter, local_hub, fast_backoff, status, route):  # noqa: F811
    from training.ccl.export import push_folder

    local_hub.fail_next(5, status=status, route=route)
    with pytest.raises(RuntimeError, match="--push_only") as err:
        push_folder(adapter, "user/lora-denied")
    assert local_hub.count(route) == 1 and fast_backoff.ours == [] and fast_backoff.hf == []  # no retry, no wait
    assert str(adapter) in str(err.value) and str(status) in str(err.value)


def test_push_does_not_retry_on_top_of_huggingface_hub_backoff(adapter, local_hub, fast_backoff):  # noqa: F811
    """preupload always goes through huggingface_hub's http_backoff (5 retries): a persistent 5xx there
    is not multiplied by push_folder's retries (6 requests, not 6 x 3)."""
    from training.ccl.export import push_folder

    local_hub.fail_next(1000, status=502, route="preupload")
    with pytest.raises(RuntimeError, match="--push_only"):
        push_folder(adapter, "user/lora-pre")
    assert len(fast_backoff.hf) == 5 and local_hub.count("preupload") == 6 and local_hub.count("create_repo") == 1
    assert fast_backoff.ours == []


def test_push_recovers_an_adapter_folder_left_mid_swap(adapter, local_hub):  # noqa: F811
    """A crash between the two renames of write_lora_folder leaves only ``lora.ready``: push_only
    finishes the swap instead of answering 'train first'."""
    before = tree_digest(adapter)
    os.replace(adapter, adapter.with_name("lora.ready"))
    from training.ccl.export import push_folder

    push_folder(adapter, "user/lora-ready")
    assert tree_digest(adapter) == before and siblings(adapter) == []
    _files_arrived(local_hub, "user/lora-ready", adapter)


def test_push_only_cli_retries_then_fails_with_a_clear_message(adapter, local_hub, fast_backoff):  # noqa: F811
    """Through ``ccl_lora.py --push_only``: in process, a 500 on the repo creation is retried and the adapter
    arrives; as a subprocess (a real CLI run), a 403 ends the run with exit status 1 and, as the last
    line, the RuntimeError naming the local folder and the --push_only command (the script lets the
    exception through: a traceback, whose last line is that message)."""
    from training import ccl_lora

    out = adapter.parent
    local_hub.fail_next(1, status=500, route="create_repo")
    res = ccl_lora.main(["--push_only", "--output_dir", str(out), "--hub_model_id", "user/cli-lora"])
    assert "user/cli-lora" in res["pushed"] and len(fast_backoff.ours) + len(fast_backoff.hf) == 1
    _files_arrived(local_hub, "user/cli-lora", adapter)

    local_hub.fail_next(1, status=403, route="commit")
    (adapter / "README.md").write_text((adapter / "README.md").read_text() + "\nv2\n")  # something to commit
    before = tree_digest(adapter)
    env = {**os.environ, "TQDM_DISABLE": "1"}  # HF_ENDPOINT/HF_TOKEN from local_hub
    proc = subprocess.run([sys.executable, *CCL_SCRIPT, "--push_only", "--output_dir", str(out),
                           "--hub_model_id", "user/cli-lora"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: pushing") and "403" in last, proc.stderr[-3000:]
    assert f"--push_only --output_dir {out} --hub_model_id user/cli-lora" in last and str(adapter) in last
    assert tree_digest(adapter) == before
    assert local_hub.count("commit") == 2  # 200, then the 403: not retried
