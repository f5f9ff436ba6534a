#!/usr/bin/env bash
# Create .venv and install pgnas with what it needs.
# On a machine without an NVIDIA GPU, torch is installed as a CPU build: first from a local
# wheel if pip is configured with one (find-links), else from PyTorch's CPU index. It never
# pulls the multi-GB CUDA build on a CPU machine. constraints.txt then pins that torch.
set -euo pipefail
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-test}
TORCH_VERSION=2.13.0
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: GPU found, installing torch==$TORCH_VERSION (CUDA build)"
    "$PY" -m pip install -q "torch==$TORCH_VERSION"
  else
    echo "setup: no GPU, installing a CPU build of torch==$TORCH_VERSION"
    "$PY" -m pip install -q --no-index --no-deps "torch==$TORCH_VERSION" 2>/dev/null \
      || "$PY" -m pip install -q --no-deps "torch==$TORCH_VERSION" \
           --index-url https://download.pytorch.org/whl/cpu
  fi
fi

"$PY" -m pip install -q -c constraints.txt -e ".[$EXTRAS]"
echo "setup: done ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"
