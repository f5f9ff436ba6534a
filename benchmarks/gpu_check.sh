#!/usr/bin/env bash
# The GPU check alone (about 3 minutes); benchmarks/gpu_all.sh runs it and the evidence script.
# On the device machine, from the repository root:  bash benchmarks/gpu_check.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-${OUT:-benchmarks/results}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=src
PY=${PY:-python3}
timeout 200 $PY benchmarks/gpu_check.py --out "$OUT/gpu_check.json"
