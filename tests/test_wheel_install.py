"""The wheel, installed into a fresh venv outside the repository (issue 11 §2).

Builds the wheel from a copy of the sources (so the checkout gets no build/ or *.egg-info), installs
it with ``--no-deps`` into a new venv in a temporary folder, and runs the installed commands from a
temporary working directory: ``finpercep score`` on an example photo (the bundled default model
comes inside the wheel), ``finpercep view --help`` (the demo package's entry point), and the
trainer's ``--help`` through ``accelerate launch``. The heavy dependencies (torch, diffusers, ...)
come from this test's own environment through a ``.pth`` line added after the install, so nothing
is downloaded and only the wheel is new; the editable install of the checkout is not visible there
(its ``.pth`` hooks are not processed), and each run checks that the modules come from the new venv.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("diffusers_ext", "comfyui_finpercep", "training", "demo", "benchmarks")
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "results", "*.egg-info")


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv folder, a working directory outside the repository, the environment for the commands)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, src / pkg, ignore=IGNORE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TQDM_DISABLE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1")
    dist = tmp / "dist"
    # this environment's setuptools builds it: no download, no build isolation
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(dist),
         str(src)], cwd=tmp, env=env)
    (wheel,) = dist.glob("finpercep-*.whl")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp, env=env)
    py = venv / "bin" / "python"
    run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=tmp, env=env)
    # now, and only now (pip above must not see the checkout's editable install): the dependencies
    site = Path(run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    cwd=tmp, env=env).stdout.strip())
    (site / "finpercep_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp / "work"
    work.mkdir()
    return {"venv": venv, "py": py, "work": work, "env": {**env, "VIRTUAL_ENV": str(venv)}, "wheel": wheel}


def test_the_wheel_holds_the_packages_the_model_and_the_configs(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for pkg in PACKAGES:
        assert f"{pkg}/__init__.py" in names, pkg
    for f in ("diffusers_ext/default/config.json", "diffusers_ext/default/diffusion_pytorch_model.safetensors",
              "training/configs/ccl_default.yaml", "demo/cli.py", "training/cli.py",
              "training/judge/config.json", "training/judge/diffusion_pytorch_model.safetensors"):
        assert f in names, f
    assert not [n for n in names if n.startswith("tests/")]


def test_the_installed_packages_are_imported_not_the_checkout(installed):
    code = ("import json, diffusers_ext, training, demo, comfyui_finpercep, benchmarks; "
            "print(json.dumps({m.__name__: m.__file__ for m in (diffusers_ext, training, demo, comfyui_finpercep, benchmarks)}))")
    files = json.loads(run([str(installed["py"]), "-c", code], installed["work"], installed["env"]).stdout)
    venv = installed["venv"].resolve()
    for name, file in files.items():
        assert venv in Path(file).resolve().parents, f"{name} imported from {file}, not from the new venv"


def test_finpercep_score_with_the_bundled_model(installed):
    work = installed["work"]
    image = shutil.copy(ROOT / "examples" / "astronaut_clean.jpg", work / "photo.jpg")
    proc = run([str(installed["venv"] / "bin" / "finpercep"), "score", str(image), "--pdm-dir", "out"], work,
               installed["env"])
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rec["image"] == str(image) and 0.0 < rec["pdm_max"] <= 1.0 and isinstance(rec["score"], float)
    assert (work / "out" / "photo.pdm.npy").is_file() and (work / "out" / "photo.overlay.png").is_file()


def test_finpercep_view_help_from_the_demo_entry_point(installed):
    text = run([str(installed["venv"] / "bin" / "finpercep"), "view", "--help"], installed["work"],
               installed["env"]).stdout
    for flag in ("--host", "--port", "--model", "--device", "--max-file-size", "--max-pixels", "--concurrency",
                 "--queue-size", "--max-batch", "--examples"):
        assert flag in text, flag


def test_trainer_help_through_accelerate_launch_and_the_console_script(installed):
    py, work, env = str(installed["py"]), installed["work"], installed["env"]
    text = run([py, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "-m", "training.ccl_lora",
                "--help"], work, env).stdout
    for flag in ("--policy", "--ccl_config", "--brisque", "--push_to_hub"):
        assert flag in text, flag
    assert "configs/ccl_default.yaml" in text and str(installed["venv"]) in text.replace("\n", "").replace(" ", "")
    text = run([str(installed["venv"] / "bin" / "finpercep-train-lora"), "--help"], work, env).stdout
    assert "--ccl_config" in text
