#!/usr/bin/env bash
# Create .venv (once) and install pointpeft-ray with its test extras into it.
# On a machine without an NVIDIA GPU the CPU build of torch is installed first,
# so pip never pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_BIN=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON_BIN --version)"
    "$PYTHON_BIN" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip

if ! python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        echo "[setup] GPU found: installing torch"
        python -m pip install -q "torch>=2.4"
    else
        echo "[setup] no GPU: installing the CPU build torch==2.13.0"
        python -m pip install -q torch==2.13.0
    fi
fi
echo "[setup] installing pointpeft-ray (editable) with test extras"
# The build backend's notes about editable installs are noise; show them only on failure.
log=$(mktemp)
if ! python -m pip install -q -e ".[test]" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
fi
rm -f "$log"
python -c "import torch, ray, pointpeft_ray; print(f'[setup] ready: pointpeft_ray {pointpeft_ray.__version__}, torch {torch.__version__}, ray {ray.__version__}')"
