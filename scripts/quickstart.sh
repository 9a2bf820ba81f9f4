#!/usr/bin/env bash
# The main job on embedded defaults. Until the training, search and job stages
# land, this is the model benchmark at the published Point-MAE size.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
mkdir -p runs
pointpeft-ray bench model --json runs/bench-model.json "$@"
