#!/usr/bin/env bash
# GPU readiness check: the test suite with CUDA visible (device-parametrised
# tests then also run on the GPU), and the model benchmark at the published
# Point-MAE size, fp32 and bf16 autocast, at several batch sizes, and a real Point-PEFT
# fine-tune at that size through Ray Train (configs/gpu_check_peft.yaml: ~235 steps of 256
# clouds of 2048 points, bf16), whose samples/s is the training issue's figure.
# Figures land in ${OUT:-runs/gpu}.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/gpu}
mkdir -p "$out"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$out/gpu.txt"
"$PY" -m pytest -q -x -p no:cacheprovider tests 2>&1 | tee "$out/pytest.txt" | tail -5
for batch in 32 128 256; do
    "$PY" -m pointpeft_ray.cli bench model --device cuda --bf16 --batch "$batch" --steps 10 --warmup 3 \
        --json "$out/bench-bf16-b$batch.json" 2>&1 | tail -8
done
"$PY" -m pointpeft_ray.cli bench model --device cuda --batch 32 --steps 10 --warmup 3 \
    --json "$out/bench-fp32-b32.json" 2>&1 | tail -8
"$PY" -m pointpeft_ray.cli train configs/gpu_check_peft.yaml --gpu --storage "$out/runs" \
    --json "$out/train-peft-gpu.json" 2>&1 | tee "$out/train-peft-gpu.txt" | grep -v "it/s" | tail -20
