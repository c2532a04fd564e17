#!/usr/bin/env bash
# Create .venv in the repository (once) and install nnunet_stipple with its test extras into it.
# A plain `pip install nnunetv2` resolves torch to the registry's CUDA build (several GB). It runs on CPU
# too, and its torchvision matches it. Do not pre-install a CPU-only torch wheel next to the registry's
# torchvision: nnU-Net's trainer lookup then fails with "operator torchvision::nms does not exist".
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
# `source .venv/bin/activate` in a fresh shell then also lets nnUNetv2_train find the STIPPLE trainers
if ! grep -q "nnUNetv2_stipple_env" .venv/bin/activate; then
  printf '\n# nnunet_stipple: make nnU-Net find the STIPPLE trainers\neval "$(nnUNetv2_stipple_env)"\n' >> .venv/bin/activate
fi
.venv/bin/python - <<'PY'
import torch, torchvision, nnunetv2, importlib.metadata as md
print(f"nnunet_stipple installed: nnunetv2 {md.version('nnunetv2')}, torch {torch.__version__}, "
      f"torchvision {torchvision.__version__}, CUDA available: {torch.cuda.is_available()}")
PY
