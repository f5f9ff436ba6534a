#!/usr/bin/env bash
# Everything a lent GPU machine should run, in one device call of at most 9 minutes:
#   1. benchmarks/gpu_check.py     (at most 200 s)  -> OUT/gpu_check.json
#   2. benchmarks/gpu_evidence.sh  (at most 330 s)  -> OUT/gpu_evidence.json (benchmarks/gpu_evidence.py)
# each writing what it measured after every stage. On the device machine (its own python3, torch
# with CUDA, no package index; never scripts/setup.sh), from the repository root:
#   bash benchmarks/gpu_all.sh "$OUT"                  # CIFAR-10 for the evidence from $PGNAS_CIFAR_DIR (default .data/)
#   bash benchmarks/gpu_all.sh /tmp/out --cpu-smoke    # here: the same scripts on the CPU at toy sizes, in about a minute
set -uo pipefail
OUT=${1:?usage: gpu_all.sh OUT_DIR [--cpu-smoke]}
SMOKE=${2:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" | tee "$OUT/env.txt"
timeout 200 $PY benchmarks/gpu_check.py --out "$OUT/gpu_check.json" $SMOKE 2>&1 | tail -n 60 > "$OUT/gpu_check.log"
echo "gpu_check: exit ${PIPESTATUS[0]}"
PY=$PY bash benchmarks/gpu_evidence.sh "$OUT" $SMOKE
echo "gpu_evidence: exit $?"
