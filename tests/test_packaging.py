"""Packages and their dependency direction (issue 11 §2), and the fresh-machine check of .ci/run (§1).

- every top-level folder is an installed package; no Python file edits ``sys.path``;
- ``comfyui_finpercep``, ``demo``, ``training`` -> ``diffusers_ext``, never back; the core imports no
  front end and the front ends do not import one another;
- ``finpercep view`` comes from the demo package's entry point and takes exactly the viewer's options;
- the console scripts resolve;
- scripts/check_environment.py (run by .ci/run before the tests) catches a system file of an
  unlisted Debian package and an import of a distribution the scripts do not install;
- the root ``__init__.py`` (a plain ComfyUI clone) loads the core without touching ``sys.path``.

The wheel built and installed outside the repository: tests/test_wheel_install.py.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = ("diffusers_ext", "comfyui_finpercep", "training", "demo", "benchmarks")
#: package -> top-level packages of this repository it must never import
FORBIDDEN = {
    "diffusers_ext": {"comfyui_finpercep", "training", "demo", "benchmarks", "tests", "gradio", "comfy", "comfy_api",
                      "folder_paths"},
    "comfyui_finpercep": {"training", "demo", "benchmarks", "tests", "gradio"},
    "demo": {"comfyui_finpercep", "training", "benchmarks", "tests", "comfy", "comfy_api"},
    "training": {"comfyui_finpercep", "demo", "benchmarks", "tests", "gradio", "comfy", "comfy_api"},
}
SKIP_DIRS = {".venv", "data", "runs", ".git", "__pycache__", "node_modules", ".pytest_cache", ".hypothesis"}


def python_files(folder: Path = ROOT):
    for p in sorted(folder.rglob("*.py")):
        if not SKIP_DIRS & set(p.relative_to(ROOT).parts):
            yield p


def imports_of(path: Path) -> list[tuple[str, int]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, node.lineno))
    return out


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_finpercep_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------ packages
def test_every_top_level_folder_is_an_installed_package():
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    for pkg in PACKAGES:
        assert (ROOT / pkg / "__init__.py").is_file(), f"{pkg}/ has no __init__.py"
        assert f"{pkg}*" in include, f"{pkg} is not in [tool.setuptools.packages.find] include"
        module = importlib.import_module(pkg)
        assert Path(module.__file__).resolve().parent == ROOT / pkg


def test_no_python_file_edits_sys_path():
    edits = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            target = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                target = node.func.value
            elif isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                target = next((t for t in targets if isinstance(t, (ast.Attribute, ast.Subscript))), None)
                target = getattr(target, "value", target) if isinstance(target, ast.Subscript) else target
            if (isinstance(target, ast.Attribute) and target.attr == "path" and isinstance(target.value, ast.Name)
                    and target.value.id == "sys"):
                if not isinstance(node, ast.Call) or node.func.attr in ("insert", "append", "extend", "remove", "pop"):
                    edits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert edits == [], f"sys.path edits (install the packages instead, or pass PYTHONPATH to a child): {edits}"


def test_dependency_direction_the_core_imports_no_front_end():
    bad = []
    for pkg, forbidden in FORBIDDEN.items():
        for path in python_files(ROOT / pkg):
            for name, line in imports_of(path):
                if name.split(".")[0] in forbidden:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert bad == []


def test_score_does_not_load_the_viewer_and_view_comes_from_the_demo_entry_point():
    code = ("import sys, json; from diffusers_ext import cli; p = cli._build_parser(); "
            "print(json.dumps({'gradio': 'gradio' in sys.modules, 'demo.app': 'demo.app' in sys.modules, "
            "'view': sorted(cli._plugin_commands())}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT / "tests")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res == {"gradio": False, "demo.app": False, "view": ["upscale", "view"]}
    assert PYPROJECT["project"]["entry-points"]["finpercep.commands"]["view"] == "demo.cli:register"


def test_finpercep_view_help_lists_every_viewer_option(capsys):
    from demo import cli as demo_cli
    from diffusers_ext import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["view", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    options = [s for a in demo_cli.build_parser()._actions for s in a.option_strings if s.startswith("--")]
    assert {"--model", "--device", "--host", "--port", "--max-file-size", "--concurrency"} <= set(options)
    missing = [o for o in options if o not in text]
    assert missing == []


def test_console_scripts_and_entry_points_resolve():
    eps = {**PYPROJECT["project"]["scripts"], **PYPROJECT["project"]["entry-points"]["finpercep.commands"]}
    assert {"finpercep", "finpercep-train-lora", "finpercep-train-reward", "finpercep-train-default"} <= set(eps)
    for name, target in eps.items():
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), name


def test_training_configs_ship_with_the_package():
    from training import ccl_lora

    assert ccl_lora.DEFAULT_CONFIG.is_file() and ccl_lora.DEFAULT_CONFIG.parent == ROOT / "training" / "configs"
    assert "configs/*.yaml" in PYPROJECT["tool"]["setuptools"]["package-data"]["training"]


def test_curriculum_lives_in_training_not_in_the_core():
    from diffusers_ext import rewards

    for name in ("CCLSchedule", "CurriculumTracker", "CurriculumStage"):
        assert not hasattr(rewards, name), f"diffusers_ext.rewards.{name}: a training concept in the core"
    for name in ("RewardConfig", "fused_reward", "compute_reward", "refl_loss", "soft_spatial_max", "topk_mean"):
        assert hasattr(rewards, name)
    from training.ccl.schedule import CCLSchedule

    assert CCLSchedule.load(ROOT / "training" / "configs" / "ccl_default.yaml").stages


def test_no_test_helpers_in_the_user_facing_command_lines():
    from training import ccl_lora

    assert not any("debug" in k for k in vars(ccl_lora.parse_args([])))
    with pytest.raises(SystemExit):
        ccl_lora.parse_args(["--debug_sigkill_after_step", "3"])  # gone: tests/ccl_kill_after.py does this
    assert not (ROOT / "demo" / "browser.py").exists()  # the browser driver is tests/viewer_browser.py
    assert importlib.util.find_spec("demo.browser") is None


def test_root_init_loads_the_core_of_a_plain_clone_without_sys_path(tmp_path):
    """ComfyUI-Manager clones the repository and installs only its requirements: no installed
    diffusers_ext. Simulated with ``python -S`` (no site, so no editable install of this repository)
    and the venv's site-packages on PYTHONPATH (torch and friends)."""
    code = f"""
import importlib.util, json, sys
assert importlib.util.find_spec("diffusers_ext") is None, "diffusers_ext importable: not a plain clone"
spec = importlib.util.spec_from_file_location("finpercep_root", {str(ROOT / '__init__.py')!r},
                                              submodule_search_locations=[{str(ROOT)!r}])
root = importlib.util.module_from_spec(spec); sys.modules["finpercep_root"] = root; spec.loader.exec_module(root)
path = list(sys.path)
root._ensure_core()
import diffusers_ext
from diffusers_ext.hub import DEFAULT_MODEL_DIR
from diffusers_ext.pdm import summary
import numpy as np
print(json.dumps({{"file": diffusers_ext.__file__, "path_same": path == sys.path,
                  "default": (DEFAULT_MODEL_DIR / "config.json").is_file(),
                  "training": importlib.util.find_spec("training") is not None,
                  "mean": summary(np.zeros((4, 4), np.float32))["mean"]}}))
"""
    site = sysconfig.get_paths()["purelib"]
    env = {**os.environ, "PYTHONPATH": site}
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(res["file"]).resolve() == ROOT / "diffusers_ext" / "__init__.py"
    assert res["path_same"] and res["default"] and res["mean"] == 0.0
    assert res["training"] is False  # the clone's other folders stay invisible to ComfyUI's process


# ------------------------------------------------------------------------------------ fresh machine (.ci/run)
def test_ci_runs_the_check_then_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/check_environment.py" in ci
    assert ci.rstrip().splitlines()[-1] == "exec bash scripts/test.sh"
    assert "bash scripts/test.sh" in (ROOT / "README.md").read_text()


def test_the_package_list_is_what_the_installer_installs():
    check = load_script("check_environment")
    listed = check.read_list()
    assert {"opencv-doc", "mate-backgrounds", "plasma-workspace-wallpapers", "chromium"} <= set(listed)
    out = subprocess.run(["bash", str(ROOT / "scripts" / "install_system_packages.sh"), "--list", "train,dev,demo,photos"],
                         capture_output=True, text=True, check=True)
    assert sorted(out.stdout.split()) == sorted(listed)
    train = subprocess.run(["bash", str(ROOT / "scripts" / "install_system_packages.sh"), "--list", "train"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert {"opencv-doc", "mate-backgrounds", "plasma-workspace-wallpapers"} <= set(train) and "chromium" not in train


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs dpkg (Debian)")
def test_check_environment_passes_here_and_catches_an_unlisted_package(tmp_path, monkeypatch):
    check = load_script("check_environment")
    assert check.check_system("train,dev,demo,photos") == []
    # the mistake of issue 11: BRISQUE's files come from opencv-doc, which nothing installed
    short = tmp_path / "system-packages.txt"
    short.write_text("".join(line + "\n" for line in check.LIST.read_text().splitlines()
                             if not line.startswith("opencv-doc")))
    monkeypatch.setattr(check, "LIST", short)
    problems = check.check_system("train,dev,demo,photos")
    assert any("/usr/share/doc/opencv-doc/examples/quality" in p and "opencv-doc" in p for p in problems), problems


def test_check_environment_catches_an_import_the_scripts_do_not_install(tmp_path, monkeypatch):
    check = load_script("check_environment")
    assert check.check_python("train,dev,demo,photos") == []
    fake = tmp_path / "repo"
    (fake / "tests").mkdir(parents=True)
    (fake / "scripts").mkdir()
    shutil.copy(ROOT / "pyproject.toml", fake / "pyproject.toml")
    shutil.copy(ROOT / "scripts" / "setup_env.sh", fake / "scripts" / "setup_env.sh")
    for pkg in PACKAGES:
        (fake / pkg).mkdir()
        (fake / pkg / "__init__.py").write_text("")
    # pip is in every venv but in no requirement: a test importing it leans on the machine
    (fake / "tests" / "test_leans.py").write_text("import numpy\nimport pip\n\ntry:\n    import not_here\n"
                                                  "except ImportError:\n    not_here = None\n")
    monkeypatch.setattr(check, "ROOT", fake)
    problems = check.check_python("train,dev,demo,photos")
    assert len(problems) == 1 and "tests/test_leans.py:2" in problems[0] and "'pip'" in problems[0], problems
