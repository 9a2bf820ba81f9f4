#!/usr/bin/env bash
# GPU check, one call, about 8 minutes on one H200 (docs/benchmarks.md, "GPU step"):
#   1. the GPU tests: grouping ops and the Triton FPS kernel against the PyTorch loop on CUDA,
#      compiled vs eager Point-PEFT steps, the published model's logits on CUDA;
#   2. `bench model` at the published size (2048 points, bf16, batch 256): full fine-tune beside
#      Point-PEFT, with the PyTorch FPS loop (the old path), the Triton kernel, and compiled;
#   3. a short published-size Point-PEFT fine-tune through Ray Train (configs/gpu_check_peft.yaml),
#      compiled, whose samples/s is the training figure.
# Figures land in ${OUT:-runs/gpu}; each stage has its own time limit so one slow stage cannot
# use up the others' time.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/gpu}
mkdir -p "$out"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$out/gpu.txt"
"$PY" -c "import triton; print('triton', triton.__version__)" 2>&1 | tee -a "$out/gpu.txt"

timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_ops.py tests/test_fps_triton.py \
    tests/test_compile.py tests/test_published_reference_peft.py 2>&1 | tee "$out/pytest.txt" | tail -5

bench() {  # name, then bench model arguments
    local name=$1; shift
    timeout 120 "$PY" -m pointpeft_ray.cli bench model --device cuda --bf16 --batch 256 --steps 10 --warmup 3 \
        --variants full,peft --json "$out/bench-$name.json" "$@" 2>&1 | tail -6
}
bench torch-fps --fps torch
bench triton-fps --fps triton
bench compiled --fps triton --compile

timeout 240 "$PY" -m pointpeft_ray.cli train configs/gpu_check_peft.yaml --gpu --compile --storage "$out/runs" \
    --json "$out/train-peft-gpu.json" 2>&1 | tee "$out/train-peft-gpu.txt" | grep -v "it/s" | tail -20
