"""Fixtures of the study harness tests: the fake dataset (fake_study.py) and a fake positioning measurement."""
from __future__ import annotations

import json

import pytest

from .fake_study import CASES, DS, LABELS, SHAPE, SPLITS, fake_positioning, ground_truth, write_seg


@pytest.fixture
def fake_dataset(tmp_path, monkeypatch):
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    djson = {"labels": LABELS, "channel_names": {"0": "CT"}, "numTraining": len(CASES), "file_ending": ".nii.gz"}
    (raw / DS / "imagesTr").mkdir(parents=True)
    (raw / DS / "dataset.json").write_text(json.dumps(djson))
    base = pre / DS
    (base / "nnUNetPlans_3d_fullres").mkdir(parents=True)
    (base / "nnUNetPlans_3d_fullres" / "case_a.b2nd").write_bytes(b"")
    (base / "dataset.json").write_text(json.dumps(djson))
    (base / "splits_final.json").write_text(json.dumps(SPLITS))
    plans = {"dataset_name": DS, "plans_name": "nnUNetPlans", "transpose_forward": [0, 1, 2],
             "transpose_backward": [0, 1, 2],
             "configurations": {"3d_fullres": {
                 "data_identifier": "nnUNetPlans_3d_fullres", "patch_size": [8, 16, 16], "batch_size": 2,
                 "spacing": [2.0, 1.0, 1.0], "median_image_size_in_voxels": list(SHAPE),
                 "architecture": {"network_class_name": "x", "arch_kwargs": {}, "_kw_requires_import": []}}}}
    (base / "nnUNetPlans.json").write_text(json.dumps(plans))
    for i, c in enumerate(CASES):
        write_seg(ground_truth(i), base / "gt_segmentations" / f"{c}.nii.gz")
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results_unused"))
    return {"raw": raw, "pre": pre, "base": base, "tmp": tmp_path}


@pytest.fixture(autouse=True)
def _fake_positioning(monkeypatch):
    from nnunet_stipple.benchmarks import positioning_eval
    monkeypatch.setattr(positioning_eval, "evaluate_positioning", fake_positioning)
