#!/usr/bin/env bash
# Install into .venv with the training, test and viewer extras (and the Debian packages they use,
# scripts/system-packages.txt), then run the whole test suite. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh train,dev,demo,photos
venv="${VENV:-.venv}"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False TQDM_DISABLE=1
exec "$venv/bin/python" -m pytest -q "$@"
