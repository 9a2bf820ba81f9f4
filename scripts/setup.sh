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

# pip's notes (index locations, the build backend's editable-install remarks) are noise on
# the console: each install's output is shown only when it fails.
pip_quiet() {
    local log
    log=$(mktemp)
    if ! python -m pip install -q "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
}
pip_quiet --upgrade pip

if ! python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        echo "[setup] GPU found: installing torch"
        pip_quiet "torch>=2.4"
    else
        echo "[setup] no GPU: installing the CPU build torch==2.13.0"
        pip_quiet torch==2.13.0
    fi
fi
echo "[setup] installing pointpeft-ray (editable) with test extras"
pip_quiet -e ".[test]"
python -c "import torch, ray, pointpeft_ray; print(f'[setup] ready: pointpeft_ray {pointpeft_ray.__version__}, torch {torch.__version__}, ray {ray.__version__}')"
