"""nnUNetTrainer_INERRANT end to end on a phantom whose spleen and pancreas were removed from 3 of 5 cases
(the simulation protocol): nnUNetv2_plan_and_preprocess, nnUNetv2_train (a handful of iterations) and plain
nnUNetv2_predict, which turns the per-class sigmoids into a segmentation through the fixed background logit."""
from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_stipple.partial_labels.simulate import derive_partial_dataset
from nnunet_stipple.phantom.generator import PHANTOM_LABELS, make_phantom_dataset
from tests.conftest import training_env, venv_script

pytestmark = pytest.mark.e2e
TRAINER = "nnUNetTrainer_INERRANT"
SCHEDULE = {"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}


def _run(cmd, env):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def test_inerrant_trains_on_partial_labels_and_predicts_with_nnunet(tmp_path):
    source = make_phantom_dataset(tmp_path / "user_raw", dataset_id=996, num_labeled=5, num_unlabeled=0,
                                  shape=(16, 32, 32))
    cases = sorted(p.name[:-len(".nii.gz")] for p in (source / "labelsTr").iterdir())
    raw, pre, results = tmp_path / "raw", tmp_path / "preprocessed", tmp_path / "results"
    dataset = derive_partial_dataset(source, raw, 997, "PartialPhantom", ["spleen", "pancreas"], cases, 0.6, seed=0)
    pre.mkdir()
    env = training_env({"env": {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre),
                                "nnUNet_results": str(results)}}, results)
    _run([venv_script("nnUNetv2_plan_and_preprocess"), "-d", "997", "-c", "2d", "-np", "1"], env)

    model = results / dataset.name / f"{TRAINER}__nnUNetPlans__2d"
    model.mkdir(parents=True)
    (model / "stipple_run.json").write_text(json.dumps(SCHEDULE))
    out = _run([venv_script("nnUNetv2_train"), "997", "2d", "0", "-tr", TRAINER, "-device", "cpu"], env)
    assert "partially annotated case(s)" in out
    fold = model / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    used = json.loads((fold / "partial_labels_used.json").read_text())
    declared = json.loads((dataset / "partial_labels.json").read_text())["annotated"]
    assert used["annotated"] == {c: sorted(v, key=PHANTOM_LABELS.get) for c, v in declared.items()}
    recorded = json.loads((fold / "stipple_run_trained.json").read_text())["settings"]
    assert recorded["trainer"] == TRAINER and recorded["partial_labels"] == used["annotated"]

    images = tmp_path / "to_predict"
    images.mkdir()
    for case in cases[:1]:
        (images / f"{case}_0000.nii.gz").symlink_to(source / "imagesTr" / f"{case}_0000.nii.gz")
    pred = tmp_path / "pred"
    _run([venv_script("nnUNetv2_predict"), "-i", str(images), "-o", str(pred), "-d", "997", "-c", "2d", "-f", "0",
          "-tr", TRAINER, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], env)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / f"{cases[0]}.nii.gz")))
    assert seg.shape == (16, 32, 32) and set(np.unique(seg)) <= set(PHANTOM_LABELS.values())
