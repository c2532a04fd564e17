"""The plain baseline nnUNetTrainer_LabelProportion through nnUNetv2_train on the phantom: it trains on the
labeled subset of stipple_run.json, records the settings next to its checkpoints and refuses a --c resume after
an edit that changes its labeled subset (issue 12, item 1), leaving the finished model as it was."""
from __future__ import annotations

import hashlib
import json
import subprocess

import pytest

from tests.conftest import training_env, venv_script

pytestmark = pytest.mark.e2e
TRAINER = "nnUNetTrainer_LabelProportion"
SCHEDULE = {"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_plain_baseline_refuses_a_resume_with_another_labeled_subset(phantom_preprocessed, tmp_path):
    results = tmp_path / "results"
    env = training_env(phantom_preprocessed, results)
    model = results / phantom_preprocessed["dataset_name"] / f"{TRAINER}__nnUNetPlans__2d"
    model.mkdir(parents=True)
    (model / "stipple_run.json").write_text(json.dumps({**SCHEDULE, "label_proportion": 0.5, "label_seed": 0}))
    cmd = [venv_script("nnUNetv2_train"), str(phantom_preprocessed["dataset_id"]), "2d", "0", "-tr", TRAINER,
           "-device", "cpu"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    fold = model / "fold_0"
    recorded = json.loads((fold / "stipple_run_trained.json").read_text())["settings"]
    assert recorded["trainer"] == TRAINER and recorded["label_proportion"] == 0.5
    kept = {p: _sha(fold / p) for p in ("checkpoint_final.pth", "stipple_run_trained.json")}

    (model / "stipple_run.json").write_text(json.dumps({**SCHEDULE, "label_proportion": 0.5, "label_seed": 1}))
    again = subprocess.run(cmd + ["--c"], env=env, capture_output=True, text=True)
    assert again.returncode != 0
    assert "label_seed was 0, now 1" in again.stdout + again.stderr
    assert {p: _sha(fold / p) for p in kept} == kept
