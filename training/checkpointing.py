"""Crash-safe checkpoints and output folders, shared by the training scripts.

* :func:`save_checkpoint`: ``accelerator.save_state`` into ``checkpoint-<step>.tmp``, extra JSON
  files, a ``COMPLETE`` marker, then one rename. A crash (even SIGKILL) mid-write leaves the previous
  checkpoint the latest one; :func:`list_checkpoints` only lists complete ones. Old checkpoints are
  renamed to ``checkpoint-<step>.old`` before they are deleted (never listed half-deleted); the next
  :func:`save_checkpoint` sweeps ``.tmp`` / ``.old`` leftovers of a crash.
* :func:`atomic_write_dir`: write a folder (a model, a LoRA adapter) into ``<name>.tmp``, rename it
  to ``<name>.ready``, then swap it in for ``<name>``; :func:`recover_dir` repairs the one window in
  which ``<name>`` is briefly absent, so a finished folder is never lost.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

COMPLETE = "COMPLETE"
STEP_FILE = "step.json"


def recover_dir(folder: Path) -> None:
    """Finish or undo a swap that a crash interrupted: ``<name>.ready`` (fully written) or else
    ``<name>.old`` becomes ``<name>`` again when ``<name>`` is missing; stale pieces are removed."""
    folder = Path(folder)
    ready, old, tmp = (folder.with_name(folder.name + s) for s in (".ready", ".old", ".tmp"))
    if not folder.exists():
        if ready.is_dir():
            os.replace(ready, folder)
        elif old.is_dir():
            os.replace(old, folder)
    for stale in (tmp, old, ready):
        if stale.exists() and folder.exists():
            shutil.rmtree(stale, ignore_errors=True)


def atomic_write_dir(folder: Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_folder)``, then swap the result in for ``folder`` (never half-written)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(folder)
    tmp, ready, old = (folder.with_name(folder.name + s) for s in (".tmp", ".ready", ".old"))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # ``folder`` is untouched; a SIGKILL leaves tmp to recover_dir
        raise
    for path in [tmp, *tmp.rglob("*")]:  # some writers create 0600 files: a published folder is readable
        path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(ready, ignore_errors=True)
    os.replace(tmp, ready)
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(ready, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def atomic_save_model(model: Any, folder: Path) -> None:
    """``save_pretrained`` into a temporary sibling, then swap it in: never a half-written model."""
    atomic_write_dir(Path(folder), lambda tmp: model.save_pretrained(tmp))


def _discard(path: Path) -> None:
    """Delete a checkpoint folder so that no crash can leave it half-deleted under its listed name:
    rename it to ``<name>.old`` (never listed) first, then remove that."""
    path = Path(path)
    if not path.exists():
        return
    trash = path.with_name(path.name + ".old")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _sweep_stale(ckpt_root: Path) -> None:
    """Remove what a crashed writer left: ``checkpoint-<step>.tmp`` (half written) and ``.old`` (half deleted)."""
    for stale in list(ckpt_root.glob("checkpoint-*.tmp")) + list(ckpt_root.glob("checkpoint-*.old")):
        shutil.rmtree(stale, ignore_errors=True)


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints (``checkpoint-<step>`` with a ``COMPLETE`` marker), oldest first."""
    ckpt_root = Path(ckpt_root)
    done = [p for p in ckpt_root.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[1].isdigit()
            and (p / COMPLETE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def find_checkpoint(ckpt_root: Path, spec: Optional[str]) -> Optional[Path]:
    """The checkpoint to resume from: ``None``/``""`` -> none, ``"latest"`` -> the newest complete
    one (``None`` if there is none yet), else a path that must be a complete checkpoint."""
    if not spec:
        return None
    if spec == "latest":
        found = list_checkpoints(ckpt_root)
        return found[-1] if found else None
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {spec}: no such folder (use 'latest' or a "
                                f"checkpoint-<step> folder under {ckpt_root})")
    if not (path / COMPLETE).is_file():
        raise ValueError(f"--resume_from_checkpoint {spec}: the checkpoint is incomplete (no {COMPLETE} "
                         f"marker: its writer crashed); use 'latest' to take the newest complete one")
    return path


def checkpoint_step(path: Path) -> int:
    return int(json.loads((Path(path) / STEP_FILE).read_text())["step"])


def read_checkpoint_json(path: Path, name: str) -> Any:
    return json.loads((Path(path) / name).read_text())


def save_checkpoint(accelerator, ckpt_root: Path, step: int, limit: int,
                    extra_json: Optional[dict[str, Any]] = None) -> Path:
    """``accelerator.save_state`` into ``checkpoint-<step>.tmp``, write ``extra_json`` files
    (name -> JSON-serialisable object) and ``step.json``, mark it complete, rename: a crash mid-write
    leaves the previous checkpoint the latest one. Keeps the newest ``limit`` (0 = all)."""
    ckpt_root = Path(ckpt_root)
    final = ckpt_root / f"checkpoint-{step}"
    tmp = ckpt_root / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        _sweep_stale(ckpt_root)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for name, obj in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=1))
        (tmp / STEP_FILE).write_text(json.dumps({"step": step}))
        (tmp / COMPLETE).write_text("ok")
        _discard(final)
        os.replace(tmp, final)
        for old in list_checkpoints(ckpt_root)[:-limit] if limit else []:
            _discard(old)
    accelerator.wait_for_everyone()
    return final
