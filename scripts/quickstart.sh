#!/usr/bin/env bash
# Install into .venv and score the bundled example photos with the bundled reward model.
# Writes one JSON line per image on stdout and <stem>.pdm.npy / <stem>.overlay.png into pdm_out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/finpercep score examples/*.jpg examples/*.png --pdm-dir "${PDM_DIR:-pdm_out}"
