#!/usr/bin/env bash
# The prepared GPU check (issue 6): one script, one run, under 8 minutes on one H100/H200.
# Usage on the GPU machine, from the repository root:  bash benchmarks/gpu_check.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-${OUT:-benchmarks/results}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
$PY -c "import torch; assert torch.cuda.is_available(), 'no GPU'; print(torch.__version__, torch.cuda.get_device_name(0))"
PYTHONPATH=src timeout 450 $PY benchmarks/gpu_check.py --steps 30 --compile --out "$OUT/gpu_check.json"
