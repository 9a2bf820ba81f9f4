#!/usr/bin/env bash
# Data hardness table: full fine-tune of the small CPU backbone on each synthetic
# variant. Usage: bash scripts/experiments_synth_hardness.sh [EPOCHS] [VARIANTS...]
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
epochs=${1:-10}; shift || true
variants=${*:-clean objonly objbg hardest}
mkdir -p runs/hardness
for v in $variants; do
    sed "s#task: synth/hardest#task: synth/$v#" configs/synth_small_full.yaml > "runs/hardness/$v.yaml"
    pointpeft-ray train "runs/hardness/$v.yaml" --in-process --epochs "$epochs" --json "runs/hardness/$v.json" 2>&1 \
        | grep -v "it/s\|obj/s" | tee "runs/hardness/$v.log"
done
python - "$@" <<'PY'
import json, pathlib
for f in sorted(pathlib.Path("runs/hardness").glob("*.json")):
    d = json.loads(f.read_text())
    print(f"{f.stem:10s} best acc {d['best_accuracy']:.1f} (epoch {d['best_epoch']}) wall {d['wall_seconds']:.0f}s")
PY
