#!/usr/bin/env bash
# The test command of README.md (and of CI): install into .venv, then run the whole suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export nnUNet_def_n_proc="${nnUNet_def_n_proc:-2}" nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-2}" nnUNet_compile=f
exec .venv/bin/python -m pytest -q tests "$@"
