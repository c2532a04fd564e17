"""The partial-labels simulation in the study harness (nnunet_stipple.benchmarks.study.partial_study) with the
fake study's dataset, a fake nnU-Net preprocessing and the fake trainer: argument checks, the dry run, the derived
data (which cases lose which organs, validation cases and the source untouched), the runs and the report."""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from .fake_study import CASES, DS, EXTRA_TRAINING, SPLITS, FakeTrainer, ground_truth, run_fake_study, write_seg
from nnunet_stipple.benchmarks.study.partial_study import PARTIAL_METHODS, losing_cases
from nnunet_stipple.commands.study import main as study_main
from nnunet_stipple.errors import StippleInputError

ALL_CASES = CASES + EXTRA_TRAINING


@pytest.fixture
def partial_dataset(fake_dataset):
    """The fake study's dataset with raw label files for every case of its splits (the simulation's source)."""
    raw = fake_dataset["raw"] / DS
    for i, c in enumerate(ALL_CASES):
        write_seg(ground_truth(i), raw / "labelsTr" / f"{c}.nii.gz")
    (raw / "imagesTr" / "case_a_0000.nii.gz").write_bytes(b"an image")
    return fake_dataset


class FakePreprocess:
    """Stands in for nnUNetv2_preprocess: what it leaves behind that the fake trainer reads (gt_segmentations)."""

    def __init__(self):
        self.calls = []

    def __call__(self, dataset_name, configuration, plans, raw_root, pre_root, log_file, log):
        self.calls.append((Path(raw_root), Path(pre_root)))
        gt = Path(pre_root) / dataset_name / "gt_segmentations"
        shutil.copytree(Path(raw_root) / dataset_name / "labelsTr", gt)
        log_file.write_text("fake preprocessing\n")
        return [["nnUNetv2_preprocess", "-d", "777"]]


def _seg(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("kwargs, match", [
    ({"partial_remove": ["kidney"]}, r"'kidney' is not a foreground class of .*dataset\.json; valid class names: "
                                     r"liver, pancreas"),
    ({"partial_remove": ["liver", "pancreas"]}, "removes every class"),
    ({"partial_remove": ["pancreas"], "methods": ["plain", "inerrant"]},
     "plain are not partial-labels methods"),
    ({"methods": ["plain", "partial_ignore"]}, "partial_ignore belong to the partial-labels simulation.*"
                                               "--partial-remove"),
    ({"methods": ["inerrant_prior"]}, "--partial-remove"),
])
def test_partial_arguments_are_checked_before_anything_runs(partial_dataset, kwargs, match):
    runner = FakeTrainer()
    with pytest.raises(StippleInputError, match=match):
        run_fake_study(partial_dataset, runner, alphas=[50], **kwargs)
    assert runner.calls == [] and not (partial_dataset["tmp"] / "study").exists()


def test_a_study_folder_keeps_its_kind(partial_dataset):
    run_fake_study(partial_dataset, FakeTrainer(), alphas=[10], methods=["plain"], report=False)
    with pytest.raises(StippleInputError, match="not a partial-labels study; asked: a partial-labels study"):
        run_fake_study(partial_dataset, FakeTrainer(), alphas=[50], partial_remove=["pancreas"],
                       preprocessor=FakePreprocess())


def test_partial_dry_run_cli(partial_dataset, capsys):
    study_dir = partial_dataset["tmp"] / "study"
    rc = study_main(["run", "-d", DS, "-c", "3d_fullres", "--study-dir", str(study_dir), "--profile", "paper",
                     "--folds", "0", "--alphas", "50", "-device", "cpu", "--dry-run", "--partial-remove",
                     "pancreas"])
    out = capsys.readouterr().out
    assert rc == 0 and not study_dir.exists()
    assert "partial labels: pancreas removed from 100 - alpha %" in out
    # the four methods by default, each trained on every case (proportion 1)
    assert all(f"50/{m} " in out for m in PARTIAL_METHODS)
    assert out.count('"label_proportion": 1.0') == 4
    n = len(losing_cases(SPLITS[0]["train"], 50, 0))
    assert n == 5
    for variant in ("background", "ignore"):
        d = study_dir / "partial_data" / "50" / variant / "fold_0"
        assert (f"partial data {d} (to derive and preprocess): pancreas removed from {n} of 10 training cases of "
                f"fold 0 (seed 0; missing organs as {variant}); the 2 validation cases keep every organ") in out
        assert f"nnUNet_preprocessed={d.resolve() / 'nnUNet_preprocessed'}" in out
    assert "nnUNetv2_preprocess -d 777 -plans_name nnUNetPlans -c 3d_fullres" in out
    assert "-tr STIPPLETrainer_INERRANT -p nnUNetPlans --c -device cpu" in out
    assert "4 runs x folds, 4 nnU-Net trainings" in out


def test_partial_study_derives_trains_reports_and_resumes(partial_dataset):
    raw = partial_dataset["raw"] / DS
    source_labels, source_images = _digest(raw / "labelsTr"), _digest(raw / "imagesTr")
    runner, prep = FakeTrainer(), FakePreprocess()
    res = run_fake_study(partial_dataset, runner, alphas=[100, 50], partial_remove=["pancreas"], preprocessor=prep)
    study_dir = partial_dataset["tmp"] / "study"
    assert not res["failed"] and len(runner.calls) == 2 * 4 * 2          # alphas x methods x folds
    assert len(prep.calls) == 2 * 2 * 2                                   # alphas x variants x folds
    assert _digest(raw / "labelsTr") == source_labels and _digest(raw / "imagesTr") == source_images
    study = json.loads((study_dir / "study.json").read_text())
    assert study["partial_labels"]["remove"] == ["pancreas"]
    for fold, split in enumerate(SPLITS):
        losing = losing_cases(split["train"], 50, 0)
        assert study["partial_labels"]["losing_cases"]["50"][str(fold)] == losing
        assert study["partial_labels"]["losing_cases"]["100"][str(fold)] == []
        for variant in ("background", "ignore"):
            data = study_dir / "partial_data" / "50" / variant / f"fold_{fold}"
            derived = data / "nnUNet_raw" / DS
            assert json.loads((data / "prepared.json").read_text())["settings"]["losing_cases"] == losing
            assert (derived / "imagesTr").resolve() == (raw / "imagesTr").resolve()
            assert json.loads((data / "nnUNet_preprocessed" / DS / "splits_final.json").read_text()) == SPLITS
            labels = json.loads((data / "nnUNet_preprocessed" / DS / "dataset.json").read_text())["labels"]
            assert labels.get("ignore") == (3 if variant == "ignore" else None)
            declared = json.loads((derived / "partial_labels.json").read_text())["annotated"]
            assert declared == {c: ["liver"] for c in losing}
            for i, c in enumerate(ALL_CASES):
                seg, gt = _seg(derived / "labelsTr" / f"{c}.nii.gz"), ground_truth(i)
                if c not in losing:         # validation cases and the cases that keep every organ
                    assert np.array_equal(seg, gt), c
                elif variant == "background":
                    assert np.array_equal(seg, np.where(gt == 2, 0, gt)), c
                else:                       # liver kept, everything else ignore
                    assert np.array_equal(seg, np.where(gt == 1, 1, 3)), c
            assert not set(losing) & set(split["val"])
    # each training ran on its derived data, every case labeled (proportion 1)
    for call in runner.calls:
        trainer, fold = call["cmd"][call["cmd"].index("-tr") + 1], int(call["cmd"][3])
        assert call["run_config"]["label_proportion"] == 1.0
        alpha = Path(call["env"]["nnUNet_results"]).parent.name
        method = Path(call["env"]["nnUNet_results"]).name
        variant = PARTIAL_METHODS[method]
        expected = (study_dir / "partial_data" / alpha / variant / f"fold_{fold}").resolve()
        assert call["env"]["nnUNet_raw"] == str(expected / "nnUNet_raw")
        assert call["env"]["nnUNet_preprocessed"] == str(expected / "nnUNet_preprocessed")
        assert trainer == {"partial_plain": "nnUNetTrainer_LabelProportion",
                           "partial_ignore": "nnUNetTrainer_LabelProportion", "inerrant": "nnUNetTrainer_INERRANT",
                           "inerrant_prior": "STIPPLETrainer_INERRANT"}[method]
    run_json = json.loads((study_dir / "runs" / "50" / "inerrant" / "run.json").read_text())
    assert run_json["folds"]["1"]["attempts"][0]["data"] == {
        "nnUNet_raw": "partial_data/50/background/fold_1/nnUNet_raw",
        "nnUNet_preprocessed": "partial_data/50/background/fold_1/nnUNet_preprocessed"}
    # the report: one row per (alpha, method), the paired tests against partial_plain and INERRANT0
    rows = list(csv.DictReader(open(study_dir / "report" / "results.csv")))
    assert {(float(r["alpha"]), r["method"]) for r in rows} >= {(a, m) for a in (100.0, 50.0) for m in PARTIAL_METHODS}
    tests = json.loads((study_dir / "report" / "results.json").read_text())["ttests"]
    pairs = {(t["a"], t["b"]) for t in tests}
    assert ("50/inerrant", "50/partial_plain") in pairs and ("50/inerrant_prior", "50/inerrant") in pairs
    # rerun: nothing derived, preprocessed or trained again
    runner2, prep2 = FakeTrainer(), FakePreprocess()
    res2 = run_fake_study(partial_dataset, runner2, alphas=[100, 50], partial_remove=["pancreas"],
                          preprocessor=prep2, report=False)
    assert runner2.calls == [] and prep2.calls == [] and set(res2["status"].values()) == {"finished"}


def test_interrupted_preparation_is_made_again(partial_dataset):
    raw = partial_dataset["raw"] / DS
    images = _digest(raw / "imagesTr")
    data = partial_dataset["tmp"] / "study" / "partial_data" / "50" / "background" / "fold_0"

    class Interrupted(FakePreprocess):
        def __call__(self, *a):
            raise StippleInputError("preprocessing failed (fake)")
    res = run_fake_study(partial_dataset, FakeTrainer(), folds=[0], alphas=[50], methods=["inerrant"],
                         partial_remove=["pancreas"], preprocessor=Interrupted(), report=False)
    assert res["failed"] == ["50/inerrant/fold_0"] and (data / "nnUNet_raw").is_dir()
    assert not (data / "prepared.json").exists()
    runner, prep = FakeTrainer(), FakePreprocess()
    res = run_fake_study(partial_dataset, runner, folds=[0], alphas=[50], methods=["inerrant"],
                         partial_remove=["pancreas"], preprocessor=prep, report=False)
    assert not res["failed"] and len(prep.calls) == 1 and len(runner.calls) == 1
    assert (data / "prepared.json").is_file() and _digest(raw / "imagesTr") == images   # links removed, not followed
