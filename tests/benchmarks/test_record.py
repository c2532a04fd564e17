"""The record of a study (nnunet_stipple.benchmarks.record): which files, export, import."""
from __future__ import annotations

import pytest

from nnunet_stipple.benchmarks.record import (export_report, export_run, fold_of, import_record, is_record_file,
                                              record_files)

MODEL = "runs/10/stipple/Dataset102_BTCVLowres/STIPPLETrainer_PseudoLabel__nnUNetPlans_cpu2d__2d"


@pytest.mark.parametrize("path, recorded, fold", [
    ("study.json", True, None),
    ("cost.json", True, None),
    ("runs/10/stipple/run.json", True, None),
    ("runs/10/stipple/nsd_fold1_tol5mm.json", True, 1),
    ("runs/10/stipple/positioning_fold0.json", True, 0),
    ("runs/10/stipple/train_fold0.log", False, 0),
    (f"{MODEL}/stipple_run.json", True, None),
    (f"{MODEL}/dataset.json", True, None),
    (f"{MODEL}/plans.json", True, None),
    (f"{MODEL}/fold_1/validation/summary.json", True, 1),
    (f"{MODEL}/fold_1/validation/BTCV_0001.nii.gz", False, 1),
    (f"{MODEL}/fold_0/checkpoint_final.pth", False, 0),
    (f"{MODEL}/fold_0/checkpoint_latest.pth", False, 0),
    (f"{MODEL}/fold_0/progress.png", True, 0),
    (f"{MODEL}/fold_0/training_log_2026_12_2_04_37_50.txt", True, 0),
    (f"{MODEL}/fold_0/pseudo_labeling/state.json", True, 0),
    (f"{MODEL}/fold_0/pseudo_labeling/round_1/round_log.json", True, 0),
    (f"{MODEL}/fold_0/pseudo_labeling/round_1/pseudo_labels/BTCV_0002.npz", False, 0),
    (f"{MODEL}/fold_0/pseudo_labeling/round_1/checkpoint_final.pth", False, 0),
    ("report/table.md", True, None),
    ("report/positioning.csv", True, None),
    ("report/dice_vs_alpha.png", True, None),
])
def test_which_files_are_recorded(path, recorded, fold):
    assert is_record_file(path) is recorded
    assert fold_of(path) == fold


def _touch(root, rel, text="x"):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_export_finished_folds_only_then_import_without_overwriting(tmp_path):
    study, record, fresh = tmp_path / "study", tmp_path / "record", tmp_path / "fresh"
    for rel in ("study.json", "runs/10/stipple/run.json", "runs/10/stipple/positioning_fold0.json",
                f"{MODEL}/stipple_run.json", f"{MODEL}/fold_0/validation/summary.json",
                f"{MODEL}/fold_0/checkpoint_final.pth", f"{MODEL}/fold_1/training_log_x.txt",
                "report/table.md"):
        _touch(study, rel, rel)
    written = export_run(study, record, "runs/10/stipple", finished_folds=[0])
    assert sorted(written) == sorted(["runs/10/stipple/run.json", "runs/10/stipple/positioning_fold0.json",
                                      f"{MODEL}/stipple_run.json", f"{MODEL}/fold_0/validation/summary.json"])
    assert export_run(study, record, "runs/10/stipple", finished_folds=[0]) == []     # unchanged: nothing
    _touch(study, "runs/10/stipple/run.json", "newer")
    assert export_run(study, record, "runs/10/stipple", [0]) == ["runs/10/stipple/run.json"]
    assert sorted(export_report(study, record)) == ["report/table.md", "study.json"]
    # a new machine: the record's files appear in a fresh study folder; existing files there are kept
    _touch(fresh, "runs/10/stipple/run.json", "local")
    copied = import_record(record, fresh, log=lambda m: None)
    assert (fresh / f"{MODEL}/fold_0/validation/summary.json").read_text() == f"{MODEL}/fold_0/validation/summary.json"
    assert (fresh / "runs/10/stipple/run.json").read_text() == "local"
    assert "report/table.md" not in copied and not (fresh / "report").exists()
    assert set(record_files(fresh)) == set(record_files(record)) - {"report/table.md"}
