#!/usr/bin/env bash
# The main job on embedded defaults: jobs/quickstart.yaml on an embedded local Ray with
# synthetic data (pre-train, search, fine-tune the best config beside the published
# settings and full fine-tuning, report). Results: runs/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
pointpeft-ray run jobs/quickstart.yaml --json runs/quickstart-summary.json "$@"
