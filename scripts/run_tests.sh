#!/usr/bin/env bash
# The test command of README.md (and of CI): install into .venv, then run the whole suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export nnUNet_def_n_proc="${nnUNet_def_n_proc:-2}" nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-2}" nnUNet_compile=f
# lint first (seconds): pyflakes and pycodestyle errors, configured in pyproject.toml
.venv/bin/ruff check nnunet_stipple tests scripts
# the 15 slowest tests in the output, so a suite that grows past its budget shows where
exec .venv/bin/python -m pytest -q --durations=15 tests "$@"
