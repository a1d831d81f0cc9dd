"""Check that the test suite leans on nothing the scripts do not install (run by .ci/run).

    .venv/bin/python scripts/check_environment.py [--extras train,dev,demo,photos]

A suite that passes only because a machine had something from an earlier manual install is the
mistake this catches, before any test runs:

1. System packages. ``scripts/system-packages.txt`` is the one list of Debian packages:
   - scripts/install_system_packages.sh installs every one of them for the extras the test command
     uses, and is the only script that calls apt-get; scripts/setup_env.sh calls it and
     scripts/test.sh goes through setup_env.sh;
   - every file under /usr or /opt that the repository's code, tests or scripts name exists and
     belongs to a listed package (or to an Essential one, such as /usr/bin/env);
   - every listed package is installed (skipped with a note where there is no dpkg).
2. Python distributions. Every module imported by the tests (tests/*.py) comes from the standard
   library, the project's own packages, the tests folder, or a distribution that the scripts
   install: the requirements of ``finpercep[EXTRAS]`` with their dependencies, and the wheels that
   scripts/setup_env.sh installs with --no-deps. The packages' own imports may also use the
   project's other declared extras (optional features, imported lazily); an import inside a ``try``
   that handles ImportError is optional by construction and not checked.

Exit status 0 when all holds; otherwise every problem is printed, one per line, and the status is 1.
Standard library only (plus ``packaging``, which pip vendors), so it runs before anything else.
"""
from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Iterable, Optional

ROOT = Path(__file__).resolve().parent.parent
LIST = ROOT / "scripts" / "system-packages.txt"
INSTALLER = ROOT / "scripts" / "install_system_packages.sh"
#: where the repository's own files live (searched for system paths and imports)
CODE_DIRS = ("diffusers_ext", "comfyui_finpercep", "training", "demo", "benchmarks", "tests", "scripts", ".ci")
CODE_SUFFIXES = {".py", ".sh", ".yaml", ".yml", ".toml", ".json", ""}
SYSTEM_PATH = re.compile(r"(?<![\w.~$/-])/(?:usr|opt)/[A-Za-z0-9_.+/-]*[A-Za-z0-9_+-]")
#: tests/comfyui/* run in ComfyUI's own venv (tests/comfyui/setup_comfyui.sh), against ComfyUI's checkout
COMFY_VENV_SCRIPTS = ("tests/comfyui/",)
#: tests/reference/* compute reference values in a throwaway venv with the original implementations
#: (their docstrings give the commands); the tests read only their committed JSON output
REFERENCE_VENV_SCRIPTS = ("tests/reference/",)


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def read_list(path: Optional[Path] = None) -> dict[str, set[str]]:
    """Package -> the extras that need it."""
    out: dict[str, set[str]] = {}
    for line in (path or LIST).read_text().splitlines():
        parts = line.split("#", 1)[0].split()
        if parts:
            out[parts[0]] = set(parts[1].split(",")) if len(parts) > 1 else set()
    return out


def code_files() -> Iterable[Path]:
    for d in CODE_DIRS:
        base = ROOT / d
        if not base.exists():
            continue
        for p in sorted(base.rglob("*")):
            if p.is_file() and p.suffix in CODE_SUFFIXES and "__pycache__" not in p.parts:
                yield p
    yield ROOT / "__init__.py"
    yield ROOT / "pyproject.toml"


# ------------------------------------------------------------------------------ 1. system packages
def dpkg_owners(path: str) -> Optional[set[str]]:
    """Packages owning ``path`` (``dpkg -S``), None when no package does."""
    proc = subprocess.run(["dpkg-query", "-S", path], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    owners: set[str] = set()
    for line in proc.stdout.splitlines():
        if line.startswith("diversion by"):
            continue
        pkgs, _, owned = line.partition(": ")
        if owned.strip() == path:
            owners |= {p.strip().split(":")[0] for p in pkgs.split(",")}
    return owners or None


def is_essential(pkg: str) -> bool:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Essential} ${Priority}", pkg], capture_output=True, text=True)
    return proc.returncode == 0 and (proc.stdout.startswith("yes") or proc.stdout.split()[-1:] == ["required"])


def installed(pkg: str) -> bool:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
    return proc.returncode == 0 and "install ok installed" in proc.stdout


def check_system(extras: str) -> list[str]:
    problems: list[str] = []
    listed = read_list()
    if not listed:
        return [f"{_rel(LIST)}: no packages listed"]
    proc = subprocess.run(["bash", str(INSTALLER), "--list", extras], capture_output=True, text=True)
    if proc.returncode != 0:
        problems.append(f"{_rel(INSTALLER)} --list {extras} failed: {proc.stderr.strip()}")
    would = set(proc.stdout.split())
    for pkg in sorted(set(listed) - would):
        problems.append(f"{pkg}: listed in {_rel(LIST)} but the installer does not install it for "
                        f"the test command's extras ({extras}); give it one of them")
    setup = (ROOT / "scripts" / "setup_env.sh").read_text()
    if "install_system_packages.sh" not in setup:
        problems.append("scripts/setup_env.sh does not call scripts/install_system_packages.sh")
    if "scripts/setup_env.sh" not in (ROOT / "scripts" / "test.sh").read_text():
        problems.append("scripts/test.sh does not go through scripts/setup_env.sh")
    for f in code_files():
        if f.suffix in (".sh", "") or f.name == "run":
            text = f.read_text(errors="replace")
            if re.search(r"^[^#\n]*\bapt(-get)?\s+install\b", text, re.M) and f != INSTALLER:
                problems.append(f"{_rel(f)}: installs Debian packages itself; add them to "
                                f"{_rel(LIST)} instead (scripts/install_system_packages.sh installs the list)")

    if shutil.which("dpkg-query") is None:
        print("check_environment: no dpkg here: system paths and installed packages not checked", file=sys.stderr)
        return problems
    for pkg in sorted(listed):
        if not installed(pkg):
            problems.append(f"{pkg}: listed but not installed (run bash scripts/install_system_packages.sh as root)")
    seen: dict[str, list[str]] = {}
    for f in code_files():
        if f.resolve() == Path(__file__).resolve():
            continue
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            for m in SYSTEM_PATH.finditer(line):
                seen.setdefault(m.group(0), []).append(f"{_rel(f)}:{n}")
    allowed = set(listed)
    for path, where in sorted(seen.items()):
        owners = dpkg_owners(path)
        if owners is None:
            problems.append(f"{where[0]}: {path} belongs to no installed package; add its package to "
                            f"{_rel(LIST)} (or stop using it)" + (f" (also {len(where) - 1} more)" if len(where) > 1 else ""))
        elif not owners & allowed and not any(is_essential(p) for p in owners):
            problems.append(f"{where[0]}: {path} comes from {', '.join(sorted(owners))}, which "
                            f"{_rel(LIST)} does not list: the scripts would not install it")
    return problems


# ------------------------------------------------------------------------------ 2. Python distributions
def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(roots: Iterable[str]) -> set[str]:
    """Normalized names of the distributions ``roots`` (requirement strings) pull in, installed ones."""
    from importlib import metadata

    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - pip's vendored copy
        from pip._vendor.packaging.requirements import Requirement  # type: ignore

    todo = [Requirement(r) for r in roots]
    done: set[str] = set()
    while todo:
        req = todo.pop()
        name = _norm(req.name)
        key = name + "[" + ",".join(sorted(req.extras)) + "]"
        if key in done:
            continue
        done.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue
        for spec in dist.requires or []:
            sub = Requirement(spec)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ({""} | set(req.extras))):
                todo.append(sub)
    return {k.split("[", 1)[0] for k in done}


def _guarded(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside a ``try`` that handles ImportError: optional features."""
    catches = ("ImportError", "ModuleNotFoundError", "Exception", "BaseException")
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            names = set()
            for h in node.handlers:
                types = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
                names |= {getattr(t, "id", getattr(t, "attr", None)) for t in types if t is not None}
                if h.type is None:
                    names.add("BaseException")
            if names & set(catches):
                out |= {id(n) for stmt in node.body for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return out


def imported_modules(files: Iterable[Path]) -> dict[str, list[str]]:
    """Top-level module -> where it is imported (absolute imports that are not optional)."""
    out: dict[str, list[str]] = {}
    for f in files:
        try:
            tree = ast.parse(f.read_text(), str(f))
        except SyntaxError as e:
            out.setdefault("<syntax error>", []).append(f"{_rel(f)}: {e}")
            continue
        optional = _guarded(tree)
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for n in names:
                out.setdefault(n.split(".")[0], []).append(f"{_rel(f)}:{node.lineno}")
    return out


def check_python(extras: str) -> list[str]:
    from importlib import metadata

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = cfg["project"]
    declared = project.get("optional-dependencies", {})
    wanted = [e for e in extras.split(",") if e]
    unknown = [e for e in wanted if e not in declared]
    if unknown:
        return [f"--extras: {unknown} are not extras of pyproject.toml ({sorted(declared)})"]
    setup = (ROOT / "scripts" / "setup_env.sh").read_text()
    no_deps = re.findall(r"--no-deps\s+((?:[A-Za-z0-9_.-]+==[^\s;]+\s*)+)", setup)
    side = [w for chunk in no_deps for w in chunk.split()]
    test_reqs = list(project["dependencies"]) + [r for e in wanted for r in declared[e]] + side
    all_reqs = test_reqs + [r for reqs in declared.values() for r in reqs]
    test_dists = requirement_closure(test_reqs)
    all_dists = requirement_closure(all_reqs)
    owners = {m: {_norm(d) for d in ds} for m, ds in metadata.packages_distributions().items()}
    first_party = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    local = {p.stem for p in (ROOT / "tests").rglob("*.py")}
    stdlib = set(sys.stdlib_module_names)

    problems: list[str] = []
    tests = [p for p in sorted((ROOT / "tests").rglob("*.py"))
             if not str(p.relative_to(ROOT)).startswith(COMFY_VENV_SCRIPTS + REFERENCE_VENV_SCRIPTS)]
    packages = [p for d in ("diffusers_ext", "comfyui_finpercep", "training", "demo", "benchmarks")
                for p in sorted((ROOT / d).rglob("*.py"))]
    for files, allowed, what in ((tests, test_dists, f"the test command's install (finpercep[{extras}])"),
                                 (packages, all_dists, "any extra of pyproject.toml")):
        for mod, where in sorted(imported_modules(files).items()):
            if mod in stdlib or mod in first_party or mod in local or mod == "__future__":
                continue
            if mod in ("comfy", "comfy_api", "folder_paths", "nodes", "server"):  # ComfyUI's, inside ComfyUI only
                continue
            dists = owners.get(mod)
            if not dists:
                problems.append(f"{where[0]}: imports {mod!r}, which no installed distribution provides")
            elif not dists & allowed:
                problems.append(f"{where[0]}: imports {mod!r} from {', '.join(sorted(dists))}, which {what} does "
                                "not pull in: add it to pyproject.toml (or scripts/setup_env.sh)")
    return problems


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--extras", default="train,dev,demo,photos", help="the extras the test command installs")
    args = ap.parse_args(argv)
    problems = check_system(args.extras) + check_python(args.extras)
    for p in problems:
        print(f"check_environment: {p}", file=sys.stderr)
    if problems:
        print(f"check_environment: {len(problems)} problem(s): the suite leans on something the scripts do not "
              "install", file=sys.stderr)
        return 1
    print("check_environment: ok (system packages of scripts/system-packages.txt, Python distributions of the "
          f"extras {args.extras})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
