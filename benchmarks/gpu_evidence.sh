#!/usr/bin/env bash
# The fair-evidence protocol at one operating point (PGNAS, random, narrow) on all 45,000 CIFAR-10
# training images at 32x32 on one GPU, at most 330 s (its own budget: 300 s)
# (benchmarks/gpu_evidence.py; writes OUT/gpu_evidence.json after every stage). Run from the
# repository root with the device machine's python3 (never scripts/setup.sh):
#   bash benchmarks/gpu_evidence.sh OUT_DIR [--cpu-smoke]     # CIFAR-10 from $PGNAS_CIFAR_DIR (default .data/)
# benchmarks/gpu_all.sh runs it after benchmarks/gpu_check.py.
set -uo pipefail
OUT=${1:?usage: gpu_evidence.sh OUT_DIR [--cpu-smoke]}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
timeout 330 ${PY:-python3} benchmarks/gpu_evidence.py --data-dir "${PGNAS_CIFAR_DIR:-.data}" --out "$OUT/gpu_evidence.json" ${2:-} 2>&1 | tail -n 60 > "$OUT/gpu_evidence.log"
exit "${PIPESTATUS[0]}"
