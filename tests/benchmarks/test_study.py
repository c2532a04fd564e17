"""The label-efficiency study harness (nnunet_stipple.benchmarks.study, nnUNetv2_stipple_study).

No nnU-Net training: a fake dataset (plans, splits, ground truth) and a fake trainer "runner" that writes what
nnUNetv2_train leaves behind (validation predictions and nnU-Net's own summary.json, made with nnU-Net's
compute_metrics / save_summary_json)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.stats import ttest_rel

from nnunet_stipple.benchmarks import study as st
from nnunet_stipple.benchmarks.study import metrics as study_metrics
from nnunet_stipple.benchmarks.study.report_tables import format_p_value
from nnunet_stipple.commands.study import main as study_main
from nnunet_stipple.errors import StippleInputError

DS = "Dataset777_FakeStudy"
CASES = ["case_a", "case_b", "case_c", "case_d"]
SPLITS = [{"train": ["case_c", "case_d"], "val": ["case_a", "case_b"]},
          {"train": ["case_a", "case_b"], "val": ["case_c", "case_d"]}]
SPACING_XYZ = (1.0, 1.0, 2.0)       # SimpleITK order; arrays are (z, y, x) with spacing (2, 1, 1)
SHAPE = (12, 16, 16)
LABELS = {"background": 0, "liver": 1, "pancreas": 2}


def _write_seg(arr: np.ndarray, path: Path) -> None:
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(SPACING_XYZ)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def _gt(i: int) -> np.ndarray:
    a = np.zeros(SHAPE, np.uint8)
    a[2:9, 2:10, 2 + i % 2:9] = 1            # liver
    a[4:7, 11:14, 8 + i % 3:13] = 2           # pancreas
    return a


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
        _write_seg(_gt(i), base / "gt_segmentations" / f"{c}.nii.gz")
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results_unused"))
    return {"raw": raw, "pre": pre, "base": base, "tmp": tmp_path}


# quality per trainer (0 = perfect); relabel and prior help, fewer labels hurt
BADNESS = {"nnUNetTrainer_LabelProportion": 3, "nnUNetTrainer_PseudoLabel": 2, "STIPPLETrainer": 1,
           "STIPPLETrainer_PseudoLabel": 0}


class FakeTrainer:
    """Stands in for nnUNetv2_train: writes validation predictions + nnU-Net's summary.json."""

    def __init__(self, fail=()):
        self.calls = []
        self.fail = set(fail)

    def __call__(self, cmd, env, log_file):
        from nnunetv2.evaluation.evaluate_predictions import compute_metrics, save_summary_json
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
        dataset, config, fold = cmd[1], cmd[2], int(cmd[3])
        trainer, plans = cmd[cmd.index("-tr") + 1], cmd[cmd.index("-p") + 1]
        assert "--c" in cmd
        mdir = Path(env["nnUNet_results"]) / dataset / f"{trainer}__{plans}__{config}"
        rc = json.loads((mdir / "stipple_run.json").read_text())
        self.calls.append({"cmd": cmd, "env": env, "run_config": rc})
        log_file.write_text("fake training\n")
        if trainer in self.fail:
            log_file.write_text("Traceback (most recent call last):\n  ...\n"
                                "nnunet_stipple.errors.StippleInputError: B=5 is larger than the depth\n")
            return 1
        val = mdir / f"fold_{fold}" / "validation"
        val.mkdir(parents=True, exist_ok=True)
        (mdir / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"not a real checkpoint")
        (mdir / "dataset.json").write_text((Path(env["nnUNet_preprocessed"]) / dataset / "dataset.json").read_text())
        if trainer.endswith("PseudoLabel"):     # the loop's round log (precision / recall of the added voxels)
            log = mdir / f"fold_{fold}" / "pseudo_labeling" / "round_1" / "round_log.json"
            log.parent.mkdir(parents=True)
            q = {"1": {"added": 80, "gt_voxels": 100, "true_positive": 60, "precision": 0.75, "recall": 0.6},
                 "2": {"added": 20, "gt_voxels": 50, "true_positive": 20, "precision": 1.0, "recall": 0.4}}
            log.write_text(json.dumps({"round": 1, "gamma": 0.7, "cases": 2, "voxels_added": 100,
                                       "voxels_added_per_class": {"1": 80, "2": 20}, "quality_per_class": q,
                                       "quality_pooled": {"added": 100, "gt_voxels": 150, "true_positive": 80,
                                                          "precision": 0.8, "recall": 80 / 150}}))
        m = BADNESS[trainer] + (rc.get("num_bins", 5) == 1)
        if rc["label_proportion"] < 0.5 and trainer != "STIPPLETrainer_PseudoLabel":
            m += 1                                       # fewer labels hurt (STIPPLE stays perfect here)
        per_case = []
        gt_dir = Path(env["nnUNet_preprocessed"]) / dataset / "gt_segmentations"
        for c in SPLITS[fold]["val"]:
            i = CASES.index(c)
            gt = _gt(i)
            pred = gt.copy()
            pred[pred == 2] = 0
            pz = np.roll((gt == 2), min(3, max(0, m - i % 2)), axis=2)    # pancreas shifted along x
            pred[pz] = 2
            trim = (m + i) % 3 if m else 0
            if trim:
                pred[2:2 + trim][pred[2:2 + trim] == 1] = 0                # liver loses top slices
            _write_seg(pred, val / f"{c}.nii.gz")
            per_case.append(compute_metrics(str(gt_dir / f"{c}.nii.gz"), str(val / f"{c}.nii.gz"), SimpleITKIO(),
                                            [1, 2]))
        # the assembly of nnunetv2.evaluation.evaluate_predictions.compute_metrics_on_folder
        from nnunetv2.evaluation.evaluate_predictions import recursive_fix_for_json_export
        metric_list = list(per_case[0]["metrics"][1].keys())
        means = {r: {k: np.nanmean([x["metrics"][r][k] for x in per_case]) for k in metric_list} for r in (1, 2)}
        fg = {k: np.mean([means[r][k] for r in (1, 2)]) for k in metric_list}
        [recursive_fix_for_json_export(x) for x in per_case]
        recursive_fix_for_json_export(means)
        recursive_fix_for_json_export(fg)
        save_summary_json({"metric_per_case": per_case, "mean": means, "foreground_mean": fg},
                          str(val / "summary.json"))
        return 0


def fake_positioning(model_folder, fold, checkpoint="checkpoint_final.pth", device="cpu", max_cases=None,
                     mirroring=False):
    """Stands in for positioning_eval.evaluate_positioning (which needs a real model): Dice per case, mode and
    class, worst for 'visual', best for 'ground_truth'; 'auto' halfway."""
    from nnunet_stipple.benchmarks.positioning_eval import MODES
    assert mirroring, "the study measures positioning with nnU-Net's test-time mirroring"
    base = {"visual": 0.2, "naive": 0.3, "components_unchecked": 0.35, "components": 0.4, "auto": 0.5,
            "ground_truth": 0.8}
    per_case = {c: {m: {1: base[m], 2: (None if (m == "visual" and c == "case_a") else base[m] / 2)} for m in MODES}
                for c in SPLITS[fold]["val"]}
    return {"per_case": per_case, "mean": {m: base[m] * 0.75 for m in MODES}}


@pytest.fixture(autouse=True)
def _fake_positioning(monkeypatch):
    from nnunet_stipple.benchmarks import positioning_eval
    monkeypatch.setattr(positioning_eval, "evaluate_positioning", fake_positioning)


# ---------------------------------------------------------------------------------------------------------------
# the method table
# ---------------------------------------------------------------------------------------------------------------
def _trainer_class(name: str):
    """The trainer class nnUNetv2_train would find: one of nnunet_stipple.trainers, else one of nnU-Net's."""
    from os.path import join

    import nnunetv2
    import nnunet_stipple.trainers
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    return getattr(nnunet_stipple.trainers, name, None) or recursive_find_python_class(
        join(nnunetv2.__path__[0], "training", "nnUNetTrainer"), name, "nnunetv2.training.nnUNetTrainer")


@pytest.mark.parametrize("entry", st.METHOD_TABLE, ids=lambda m: m.name)
def test_method_entry_matches_its_trainer(entry):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunet_stipple.pseudo_labeling.loop import PseudoLabelLoopMixin
    from nnunet_stipple.trainers import STIPPLETrainer
    trainer = _trainer_class(entry.trainer)
    assert trainer is not None and issubclass(trainer, nnUNetTrainer), entry.trainer
    assert issubclass(trainer, STIPPLETrainer) == entry.uses_prior
    assert issubclass(trainer, PseudoLabelLoopMixin) == entry.relabels
    if entry.relabels:      # the counterpart is the same method without relabeling
        counterpart = st.method(entry.relabel_counterpart)
        assert not counterpart.relabels and counterpart.uses_prior == entry.uses_prior


def test_method_table_names_labels_and_rows_are_unique():
    for field in ("name", "label", "table_row", "trainer"):
        values = [getattr(m, field) for m in st.METHOD_TABLE]
        assert len(set(values)) == len(values), field
    assert sorted(m.table_row for m in st.METHOD_TABLE) == list(range(len(st.METHOD_TABLE)))
    assert st.METHODS == {m.name: m.trainer for m in st.METHOD_TABLE}
    assert st.METHOD_ORDER == ("plain", "stipple_norelab", "plain_relabel", "stipple")   # the paper's Table 2


# ---------------------------------------------------------------------------------------------------------------
# planning
# ---------------------------------------------------------------------------------------------------------------
def test_plan_runs_trainers_folders_and_skips(tmp_path):
    specs = st.plan_runs([100, 10], list(st.METHODS), [5], has_unlabeled=False)
    ids = {s.run_id: s for s in specs}
    assert set(ids) == {"100/plain", "100/stipple_norelab", "100/plain_relabel", "100/stipple",
                        "10/plain", "10/stipple_norelab", "10/plain_relabel", "10/stipple"}
    assert ids["10/plain"].trainer == "nnUNetTrainer_LabelProportion"
    assert ids["10/plain_relabel"].trainer == "nnUNetTrainer_PseudoLabel"
    assert ids["10/stipple_norelab"].trainer == "STIPPLETrainer"
    assert ids["10/stipple"].trainer == "STIPPLETrainer_PseudoLabel"
    assert ids["100/plain_relabel"].skipped == st.SKIPPED_SAME and ids["100/plain_relabel"].same_as == "100/plain"
    assert ids["100/stipple"].skipped and ids["100/stipple"].same_as == "100/stipple_norelab"
    assert not ids["10/stipple"].skipped and not ids["100/plain"].skipped
    assert ids["10/stipple"].folder(tmp_path) == tmp_path / "runs" / "10" / "stipple"
    # with imagesUnlabeled there is something to relabel at 100 %
    assert not any(s.skipped for s in st.plan_runs([100], ["plain_relabel", "stipple"], has_unlabeled=True))
    # the counterpart of a skipped run is added when not asked for
    only = {s.run_id: s for s in st.plan_runs([100], ["stipple"])}
    assert only["100/stipple_norelab"].added_for == "100/stipple" and only["100/stipple"].skipped


def test_plan_runs_bins_study():
    specs = st.plan_runs([70, 10], ["plain", "stipple_norelab", "stipple"], [1, 2, 5, 7, 10])
    ids = {s.run_id: s for s in specs}
    for a in ("70", "10"):
        for b in (1, 2, 7, 10):
            assert ids[f"{a}/stipple_norelab_B{b}"].bins == b
        assert ids[f"{a}/stipple_norelab"].bins == 5          # B = 5 keeps the unsuffixed folder
        assert ids[f"{a}/stipple"].bins == 5                  # stipple only in the bins study if asked
        assert ids[f"{a}/plain"].bins is None
    assert "70/stipple_B7" not in ids
    both = {s.run_id for s in st.plan_runs([10], ["stipple"], [1, 5], bins_methods=["stipple_norelab", "stipple"])}
    assert both == {"10/stipple", "10/stipple_B1"}
    assert {s.bins for s in st.plan_runs([10], ["stipple_norelab"], [7])} == {7}


def test_run_config_contents():
    prof = st.PROFILES["cpu-small"]
    spec = st.RunSpec(10.0, "stipple_norelab", 7, "STIPPLETrainer")
    assert st.run_config_for(spec, prof) == {"label_proportion": 0.1, "label_seed": 0, "num_epochs": 5,
                                             "num_iterations_per_epoch": 50, "num_val_iterations_per_epoch": 5,
                                             "num_bins": 7}
    plain = st.run_config_for(st.RunSpec(70.0, "plain", None, "nnUNetTrainer_LabelProportion"), st.PROFILES["paper"])
    assert plain == {"label_proportion": 0.7, "label_seed": 0, "num_epochs": 1000, "num_iterations_per_epoch": 250,
                     "num_val_iterations_per_epoch": 50}


def test_trainings_count():
    specs = st.plan_runs([100, 70, 10], list(st.METHODS))
    # 100: plain, stipple_norelab (relabel skipped); 70: 2 + 2 x (1 + 2 rounds); 10: 2 + 2 x (1 + 1)
    assert sum(st.trainings_per_fold(s) for s in specs) == 2 + (2 + 6) + (2 + 4)
    # in a study the counterparts are trained too: their models are the relabeling runs' round 0
    est = st.estimate(specs, [0, 1], st.PROFILES["cpu-small"], "cpu",
                      {"patch_size": [32, 64, 64], "batch_size": 2, "median_image_size_in_voxels": [40, 90, 90]})
    assert est["trainings"] == 2 * (2 + (2 + 4) + (2 + 2)) and est["seconds"] > 0
    alone = [s for s in specs if s.run_id == "10/stipple"]
    assert st.estimate(alone, [0], st.PROFILES["cpu-small"], "cpu")["trainings"] == 2


def test_coarse_target_spacing():
    assert st.coarse_target_spacing([3.0, 2.7, 2.7]) == [8.0, 12.0, 12.0]     # floors
    assert st.coarse_target_spacing([9.0, 6.5, 6.5]) == [9.0, 13.0, 13.0]     # x2 in-plane, z kept
    assert st.coarse_target_spacing([1.0, 1.0, 1.0]) == [8.0, 12.0, 12.0]     # ties: the first axis is z
    assert st.coarse_target_spacing([0.7, 0.7, 2.5]) == [12.0, 12.0, 8.0]
    assert st.coarse_target_spacing([3.0, 0.8, 0.8], inplane_factor=3, min_inplane_mm=0, min_axial_mm=4) == \
        [4.0, 2.4, 2.4]


@pytest.mark.parametrize("kwargs, match", [
    ({"methods": ["plain", "mean_teacher"]}, "valid methods: plain, plain_relabel, stipple_norelab, stipple"),
    ({"profile": "gpu-huge"}, "valid profiles: paper, cpu-small"),
    ({"alphas": [100, 0]}, r"outside \(0, 100\]"),
    ({"alphas": [150]}, r"outside \(0, 100\]"),
    ({"bins": [0]}, "bins"),
])
def test_bad_input(fake_dataset, kwargs, match):
    args = dict(profile="paper", folds=[0], device="cpu", dry_run=True, log=lambda m: None)
    args.update(kwargs)
    with pytest.raises(StippleInputError, match=match):
        st.run_study(DS, "3d_fullres", fake_dataset["tmp"] / "study", **args)


def test_paper_profile_needs_preprocessed_data(fake_dataset):
    (fake_dataset["base"] / "nnUNetPlans.json").unlink()
    with pytest.raises(StippleInputError, match="not planned/preprocessed"):
        st.run_study(DS, "3d_fullres", fake_dataset["tmp"] / "study", profile="paper", dry_run=True,
                     log=lambda m: None)


def test_dry_run_cli(fake_dataset, capsys):
    study_dir = fake_dataset["tmp"] / "study"
    rc = study_main(["run", "-d", DS, "-c", "3d_fullres", "--study-dir", str(study_dir), "--profile", "paper",
                     "--folds", "0", "--alphas", "100", "10", "--bins", "1", "5", "-device", "cpu", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    assert not study_dir.exists()                          # a dry run writes nothing
    assert "100/plain_relabel" in out and "skipped: same as without relabeling (= 100/plain)" in out
    assert "10/stipple_norelab_B1" in out and '"num_bins": 1' in out
    assert "nnUNetv2_train" in out and f"{DS} 3d_fullres 0 -tr STIPPLETrainer_PseudoLabel -p nnUNetPlans --c -device cpu" in out
    # 100: plain + norelab B1 + norelab B5 (relabel skipped); 10: plain + relabel (1 round; round 0 = plain)
    # + norelab B1 + norelab B5 + stipple (1 round; round 0 = norelab B5)
    assert "8 runs x folds, 8 nnU-Net trainings" in out
    assert "rough time estimate" in out


def test_cli_errors_exit_2(fake_dataset, capsys):
    with pytest.raises(SystemExit) as e:
        study_main(["run", "-d", DS, "-c", "3d_fullres", "--study-dir", str(fake_dataset["tmp"] / "s"),
                    "--methods", "nope", "--dry-run"])
    assert e.value.code == 2
    assert "valid methods" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# running (fake trainer), resume, study.json, report
# ---------------------------------------------------------------------------------------------------------------
def _run(fake_dataset, runner, **kw):
    args = dict(profile="paper", folds=[0, 1], alphas=[100, 10], device="cpu", runner=runner, log=lambda m: None)
    args.update(kw)
    return st.run_study(DS, "3d_fullres", fake_dataset["tmp"] / "study", **args)


def test_run_writes_run_configs_env_and_resumes(fake_dataset):
    runner = FakeTrainer()
    res = _run(fake_dataset, runner, report=False)
    study_dir = fake_dataset["tmp"] / "study"
    # 100: plain, stipple_norelab; 10: 4 methods; 2 folds each
    assert len(runner.calls) == 12 and not res["failed"]
    call = next(c for c in runner.calls if "STIPPLETrainer_PseudoLabel" in c["cmd"])
    root = study_dir / "runs" / "10" / "stipple"
    assert call["env"]["nnUNet_results"] == str(root.resolve())
    assert call["env"]["nnUNet_extTrainer"].split(":")[0].endswith("nnunet_ext")
    # round 0 of the loop is the finished stipple_norelab model of the same fold (trained just before it)
    assert call["run_config"] == {"label_proportion": 0.1, "label_seed": 0, "num_epochs": 1000,
                                  "num_iterations_per_epoch": 250, "num_val_iterations_per_epoch": 50, "num_bins": 5,
                                  "round0_model_folder": f"../../../stipple_norelab/{DS}/"
                                                         f"STIPPLETrainer__nnUNetPlans__3d_fullres"}
    mdir = root / DS / "STIPPLETrainer_PseudoLabel__nnUNetPlans__3d_fullres"
    assert (mdir / call["run_config"]["round0_model_folder"] / "fold_0" / "checkpoint_final.pth").is_file()
    run_json = json.loads((root / "run.json").read_text())
    assert run_json["trainer"] == "STIPPLETrainer_PseudoLabel"
    assert run_json["folds"]["0"]["status"] == "finished" and run_json["folds"]["1"]["wall_seconds"] >= 0
    assert "git_commit" in run_json["folds"]["0"]["attempts"][0]
    assert (root / "train_fold0.log").is_file()
    study = json.loads((study_dir / "study.json").read_text())
    assert study["dataset"] == DS and study["profile"] == "paper" and study["runs"]["100/stipple"]["skipped"]
    assert study["reduced_vs_paper"] == {"folds": {"paper": [0, 1, 2, 3, 4], "used": [0, 1]},
                                         "alphas": {"paper": [100.0, 70.0, 50.0, 30.0, 10.0], "used": [100.0, 10.0]}}
    # rerun: everything finished, nothing trained again
    runner2 = FakeTrainer()
    res2 = _run(fake_dataset, runner2, report=False)
    assert runner2.calls == [] and set(res2["status"].values()) == {"finished"}
    # extending the study (another alpha) trains only the new runs
    runner3 = FakeTrainer()
    _run(fake_dataset, runner3, alphas=[30], methods=["plain"], report=False)
    assert len(runner3.calls) == 2
    assert json.loads((study_dir / "study.json").read_text())["alphas"] == [100.0, 30.0, 10.0]


def test_failed_run_is_recorded_and_retried(fake_dataset):
    runner = FakeTrainer(fail={"STIPPLETrainer"})
    res = _run(fake_dataset, runner, methods=["plain", "stipple_norelab"], alphas=[10], report=False)
    assert sorted(res["failed"]) == ["10/stipple_norelab/fold_0", "10/stipple_norelab/fold_1"]
    meta = json.loads((fake_dataset["tmp"] / "study/runs/10/stipple_norelab/run.json").read_text())
    assert meta["folds"]["0"]["status"] == "failed" and meta["folds"]["0"]["attempts"][0]["returncode"] == 1
    assert meta["folds"]["0"]["attempts"][0]["error"].startswith("nnunet_stipple.errors.StippleInputError: B=5")
    runner2 = FakeTrainer()
    _run(fake_dataset, runner2, methods=["plain", "stipple_norelab"], alphas=[10], report=False)
    assert [c["cmd"][5] for c in runner2.calls] == ["STIPPLETrainer", "STIPPLETrainer"]


def test_study_folder_from_another_configuration(fake_dataset):
    _run(fake_dataset, FakeTrainer(), methods=["plain"], alphas=[10], report=False)
    with pytest.raises(StippleInputError, match="a study folder from another configuration"):
        _run(fake_dataset, FakeTrainer(), methods=["plain"], alphas=[10], plans="nnUNetResEncUNetMPlans")
    with pytest.raises(StippleInputError, match="a study folder from another configuration"):
        st.run_study(DS, "2d", fake_dataset["tmp"] / "study", profile="paper", dry_run=True, log=lambda m: None)


def _expected(study_dir: Path, run_id: str, trainer: str):
    """Per-case mean foreground Dice from the summary.json files, independently of the report code."""
    vals = {}
    for f in (0, 1):
        s = json.loads((study_dir / "runs" / run_id / DS / f"{trainer}__nnUNetPlans__3d_fullres" / f"fold_{f}"
                        / "validation" / "summary.json").read_text())
        for c in s["metric_per_case"]:
            case = Path(c["prediction_file"]).name[:-7]
            vals[(f, case)] = (c["metrics"]["1"]["Dice"] + c["metrics"]["2"]["Dice"]) / 2
    return vals


def test_report_on_fake_study(fake_dataset):
    res = _run(fake_dataset, FakeTrainer(), nsd_tolerance_mm=2.0)
    study_dir = fake_dataset["tmp"] / "study"
    rep = study_dir / "report"
    table = (rep / "table.md").read_text()
    assert "| Proportion (α) | 100% | 10% |" in table
    assert "## Dice (DSC, %), mean over foreground classes" in table
    assert "## NSD (%, tolerance 2 mm)" in table and "## Dice (DSC, %), pancreas" in table
    # fold means -> mean (± sample std over folds), in %
    exp_plain = _expected(study_dir, "10/plain", "nnUNetTrainer_LabelProportion")
    exp_stipple = _expected(study_dir, "10/stipple", "STIPPLETrainer_PseudoLabel")
    fold_means = [np.mean([v for (f, _), v in exp_plain.items() if f == fold]) for fold in (0, 1)]
    cell = f"{np.mean(fold_means) * 100:.2f} (± {np.std(fold_means, ddof=1) * 100:.2f})"
    plain_row = next(l for l in table.splitlines() if l.startswith("| Baseline (plain) |"))
    assert plain_row.split(" | ")[2].rstrip(" |") == cell
    relab_row = next(l for l in table.splitlines() if l.startswith("| Baseline w relab |"))
    assert relab_row.split(" | ")[1] == "-"                      # alpha = 100 %: nothing to relabel
    stipple_row = next(l for l in table.splitlines() if l.startswith("| STIPPLE |"))
    assert stipple_row.split(" | ")[2].startswith("**")         # best of the 10 % column (perfect predictions)
    # paired t-test against scipy directly
    keys = sorted(exp_plain)
    p = ttest_rel([exp_stipple[k] for k in keys], [exp_plain[k] for k in keys]).pvalue
    results = json.loads((rep / "results.json").read_text())
    t = next(t for t in results["ttests"] if t["alpha"] == 10 and t["metric"] == "dice" and t["a"] == "10/stipple"
             and t["b"] == "10/plain")
    assert t["n"] == 4 and t["p"] == pytest.approx(p, rel=1e-9)
    assert any(t["a"] == "10/stipple" and t["b"] == "10/plain_relabel" for t in results["ttests"])
    # at 100 % the skipped relabel runs ("-") are not tested; their counterparts are
    t100 = [t for t in results["ttests"] if t["alpha"] == 100 and t["metric"] == "dice"]
    assert {(t["a"], t["b"]) for t in t100} == {("100/stipple_norelab", "100/plain")}
    assert format_p_value(t["p"]) in table
    # aggregates: pancreas reported apart, NSD in [0, 1], metadata
    agg = next(a for a in results["aggregates"] if a["run_id"] == "10/plain")
    assert agg["pancreas_dice"]["mean"] is not None and 0 <= agg["nsd"]["mean"] <= 1
    assert agg["per_class"]["pancreas"]["dice"] is not None
    stip = next(a for a in results["aggregates"] if a["run_id"] == "10/stipple")
    assert stip["dice"]["mean"] == pytest.approx(1.0) and stip["nsd"]["mean"] == pytest.approx(1.0)
    run = next(r for r in results["runs"] if r["run_id"] == "10/plain")
    assert run["folds_finished"] == [0, 1] and "nnunetv2" in run["versions"] and run["wall_seconds"]["0"] >= 0
    # CSV: 6 trained runs x 4 cases x 2 classes
    rows = list(csv.DictReader(open(rep / "results.csv")))
    assert len(rows) == 6 * 4 * 2
    r = next(r for r in rows if r["run_id"] == "10/plain" and r["case"] == "case_b" and r["class_name"] == "liver")
    s = json.loads((study_dir / "runs/10/plain" / DS / "nnUNetTrainer_LabelProportion__nnUNetPlans__3d_fullres"
                    / "fold_0/validation/summary.json").read_text())
    dice_b = next(c for c in s["metric_per_case"] if c["prediction_file"].endswith("case_b.nii.gz"))["metrics"]["1"]["Dice"]
    assert float(r["dice"]) == pytest.approx(dice_b)
    assert (rep / "dice_vs_alpha.png").stat().st_size > 0
    assert (rep / "organs_alpha10.png").is_file() and (rep / "organs_alpha100.png").is_file()
    assert res["report"]["finished"] == 12


def test_report_uses_nsd_cache_and_bins_plot(fake_dataset, monkeypatch):
    _run(fake_dataset, FakeTrainer(), methods=["plain", "stipple_norelab"], alphas=[10], bins=[1, 5])
    study_dir = fake_dataset["tmp"] / "study"
    assert (study_dir / "runs/10/stipple_norelab_B1/nsd_fold0_tol2mm.json").is_file()
    assert (study_dir / "report" / "dice_vs_bins.png").is_file()
    table = (study_dir / "report" / "table.md").read_text()
    assert "| STIPPLE w/o relab (B=1) |" in table

    def boom(*a, **k):
        raise AssertionError("NSD recomputed although cached")
    monkeypatch.setattr(study_metrics, "case_nsd", boom)
    assert study_main(["report", "--study-dir", str(study_dir)]) == 0
    # another tolerance is computed (and cached) separately
    monkeypatch.undo()
    monkeypatch.setenv("nnUNet_preprocessed", str(fake_dataset["pre"]))
    st.report_study(study_dir, nsd_tolerance_mm=1.0, log=lambda m: None)
    assert (study_dir / "runs/10/plain/nsd_fold1_tol1mm.json").is_file()


def test_report_partial_study(fake_dataset):
    """Only some runs finished: the table shows n/a and [k/n folds]."""
    runner = FakeTrainer(fail={"STIPPLETrainer"})
    _run(fake_dataset, runner, methods=["plain", "stipple_norelab"], alphas=[10])
    study_dir = fake_dataset["tmp"] / "study"
    # remove fold 1 of plain: 1/2 folds finished
    s = study_dir / "runs/10/plain" / DS / "nnUNetTrainer_LabelProportion__nnUNetPlans__3d_fullres/fold_1/validation/summary.json"
    s.unlink()
    rep = st.report_study(study_dir, log=lambda m: None)
    assert "[1/2 folds]" in rep["table"] and "| STIPPLE w/o relab | n/a |" in rep["table"]
    assert "std over cases" in rep["table"]


def test_report_without_study_json(tmp_path):
    with pytest.raises(StippleInputError, match="not a study folder"):
        st.report_study(tmp_path / "nothing")


# ---------------------------------------------------------------------------------------------------------------
# NSD
# ---------------------------------------------------------------------------------------------------------------
def test_nsd_hand_checkable(tmp_path):
    a = np.zeros(SHAPE, bool)
    a[3:8, 4:10, 5:11] = True
    sp = [2.0, 1.0, 1.0]
    assert st.surface_dice(a, a, sp, 0.0) == pytest.approx(1.0)
    far_a = np.zeros_like(a); far_a[0:2, 0:2, 14:16] = True
    far_b = np.zeros_like(a); far_b[9:12, 12:16, 0:3] = True
    assert st.surface_dice(far_a, far_b, sp, 2.0) == 0.0
    assert st.surface_dice(np.zeros_like(a), a, sp, 2.0) == 0.0
    assert math.isnan(st.surface_dice(np.zeros_like(a), np.zeros_like(a), sp, 2.0))
    # one voxel shift: 2 mm along z (axis 0), 1 mm along x; the spacing must come from the file, in array order
    _write_seg(a.astype(np.uint8), tmp_path / "gt.nii.gz")
    _write_seg(np.roll(a, 1, axis=0).astype(np.uint8), tmp_path / "z.nii.gz")
    _write_seg(np.roll(a, 1, axis=2).astype(np.uint8), tmp_path / "x.nii.gz")
    assert st.case_nsd(tmp_path / "x.nii.gz", tmp_path / "gt.nii.gz", ["1"], 1.5)["1"] == pytest.approx(1.0)
    assert st.case_nsd(tmp_path / "z.nii.gz", tmp_path / "gt.nii.gz", ["1"], 1.5)["1"] < 0.9
    assert st.case_nsd(tmp_path / "z.nii.gz", tmp_path / "gt.nii.gz", ["1"], 2.0)["1"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------------
# order of the work, round 0 of the relabeling runs, schedule scale
# ---------------------------------------------------------------------------------------------------------------
def test_work_order_priority_alphas_then_folds_then_table_rows():
    specs = st.plan_runs([100, 30, 10], list(st.METHODS))
    order = [(s.run_id, f) for s, f in st.work_order(specs, [0, 1], alpha_priority=(10, 100))]
    assert order[:8] == [("10/plain", 0), ("10/stipple_norelab", 0), ("10/plain_relabel", 0), ("10/stipple", 0),
                         ("10/plain", 1), ("10/stipple_norelab", 1), ("10/plain_relabel", 1), ("10/stipple", 1)]
    assert order[8:12] == [("100/plain", 0), ("100/stipple_norelab", 0), ("100/plain", 1),
                           ("100/stipple_norelab", 1)]                  # skipped relabel runs are not trained
    assert [a for a, _ in order[12:]] == ["30/plain", "30/stipple_norelab", "30/plain_relabel", "30/stipple"] * 2
    # no priority: decreasing alpha
    assert [s.alpha for s, _ in st.work_order(specs, [0])][0] == 100


def test_relabel_run_trains_round0_when_counterpart_is_not_finished(fake_dataset):
    runner = FakeTrainer(fail={"nnUNetTrainer_LabelProportion"})
    _run(fake_dataset, runner, methods=["plain", "plain_relabel"], alphas=[10], folds=[0], report=False)
    call = next(c for c in runner.calls if "nnUNetTrainer_PseudoLabel" in c["cmd"])
    assert "round0_model_folder" not in call["run_config"]


def test_schedule_scale(fake_dataset):
    runner = FakeTrainer()
    _run(fake_dataset, runner, methods=["plain"], alphas=[100], folds=[0], schedule_scale=2, report=False)
    assert runner.calls[0]["run_config"]["num_epochs"] == 2000
    study = json.loads((fake_dataset["tmp"] / "study/study.json").read_text())
    assert study["schedule_scale"] == 2 and study["schedule"]["num_epochs"] == 2000
    with pytest.raises(StippleInputError, match="schedule_scale: study has 2"):
        _run(fake_dataset, FakeTrainer(), methods=["plain"], alphas=[100], folds=[0], report=False)
    with pytest.raises(StippleInputError, match="whole number of epochs"):
        _run(fake_dataset, FakeTrainer(), schedule_scale=0.0001)


# ---------------------------------------------------------------------------------------------------------------
# the record (docs/results/...): export while running, import on a new machine, report from the record
# ---------------------------------------------------------------------------------------------------------------
def test_record_survives_the_machine(fake_dataset, monkeypatch):
    record = fake_dataset["tmp"] / "docs_results"
    res = _run(fake_dataset, FakeTrainer(), record_dir=record)
    assert not res["failed"]
    first = (fake_dataset["tmp"] / "study/report/results.csv").read_text()
    assert (record / "report/results.csv").read_text() == first
    assert (record / "report/positioning.csv").is_file() and (record / "study.json").is_file()
    assert not list(record.rglob("*.pth")) and not list(record.rglob("*.nii.gz"))
    assert (record / "runs/10/plain/nsd_fold1_tol2mm.json").is_file()      # computed by the report: recorded
    table = (record / "report/table.md").read_text()
    assert "## Runs" in table and "| 10/stipple | 1 |" in table
    # a new machine: a fresh study folder, the record only (models and predictions gone); nothing is trained again
    import shutil
    shutil.rmtree(fake_dataset["tmp"] / "study")
    def must_not_train(cmd, env, log_file):
        raise AssertionError(f"trained again: {cmd}")
    res2 = st.run_study(DS, "3d_fullres", fake_dataset["tmp"] / "new_machine", profile="paper", folds=[0, 1],
                        alphas=[100, 10], device="cpu", runner=must_not_train, record_dir=record, log=lambda m: None)
    assert set(res2["status"].values()) == {"finished"}
    assert (fake_dataset["tmp"] / "new_machine/report/results.csv").read_text() == first
    # the report rebuilt from the record folder alone: no predictions, no nnUNet_preprocessed
    monkeypatch.delenv("nnUNet_preprocessed")
    (record / "report/results.csv").unlink()
    rep = st.report_study(record, log=lambda m: None)
    assert (record / "report/results.csv").read_text() == first and rep["finished"] == 12
    # a study extended on one machine (another alpha) keeps the rows of the other
    monkeypatch.setenv("nnUNet_preprocessed", str(fake_dataset["pre"]))
    runner = FakeTrainer()
    st.run_study(DS, "3d_fullres", fake_dataset["tmp"] / "third_machine", profile="paper", folds=[0], alphas=[30],
                 methods=["plain"], device="cpu", runner=runner, record_dir=record, log=lambda m: None,
                 report=False)
    rep = st.report_study(fake_dataset["tmp"] / "third_machine", log=lambda m: None)
    assert len(runner.calls) == 1 and rep["finished"] == 13


def test_record_of_another_study_is_refused(fake_dataset):
    record = fake_dataset["tmp"] / "record"
    _run(fake_dataset, FakeTrainer(), methods=["plain"], alphas=[10], folds=[0], record_dir=record, report=False)
    with pytest.raises(StippleInputError, match="another configuration"):
        st.run_study(DS, "3d_fullres", fake_dataset["tmp"] / "other", profile="paper", plans="nnUNetResEncUNetMPlans",
                     runner=FakeTrainer(), record_dir=record, log=lambda m: None)


# ---------------------------------------------------------------------------------------------------------------
# positioning quality and paired tests in the report
# ---------------------------------------------------------------------------------------------------------------
def test_positioning_rows_and_summary(fake_dataset):
    _run(fake_dataset, FakeTrainer(), methods=["plain", "stipple_norelab", "stipple"], alphas=[10])
    study_dir = fake_dataset["tmp"] / "study"
    rows = list(csv.DictReader(open(study_dir / "report/positioning.csv")))
    assert list(rows[0]) == ["run_id", "fold", "case", "class_key", "mode", "dice"]
    # 2 prior runs x 4 validation cases x 4 modes x 2 classes; plain has no prior
    assert len(rows) == 2 * 4 * 4 * 2 and {r["run_id"] for r in rows} == {"10/stipple_norelab", "10/stipple"}
    assert {r["mode"] for r in rows} == {"visual", "naive", "auto", "ground_truth"}
    empty = [r for r in rows if r["dice"] == ""]
    assert {(r["case"], r["mode"], r["class_key"]) for r in empty} == {("case_a", "visual", "2")}
    summary = json.loads((study_dir / "report/results.json").read_text())["positioning"]
    e = next(e for e in summary if e["run_id"] == "10/stipple")
    # per case: mean over organs; case_a's visual has only class 1 (0.2), the others (0.2 + 0.1) / 2
    assert e["mean"]["visual"] == pytest.approx((0.2 + 3 * 0.15) / 4)
    assert e["mean"]["auto"] == pytest.approx(0.375) and e["mean"]["ground_truth"] == pytest.approx(0.6)
    assert e["efficiency"] == pytest.approx((0.375 - e["mean"]["visual"]) / (0.6 - e["mean"]["visual"]))
    assert e["per_class"]["auto"]["liver"] == pytest.approx(0.5)
    table = (study_dir / "report/table.md").read_text()
    assert "## Positioning of the prior" in table and "| 10/stipple | 4 |" in table
    assert "## Dice per organ" in table and "| **pancreas** |" in table
    # written once, while the model exists: a rerun does not measure again
    written = (study_dir / "runs/10/stipple/positioning_fold0.json").read_text()
    _run(fake_dataset, FakeTrainer(), methods=["plain", "stipple_norelab", "stipple"], alphas=[10])
    assert (study_dir / "runs/10/stipple/positioning_fold0.json").read_text() == written


def test_pseudo_label_quality_in_report(fake_dataset):
    _run(fake_dataset, FakeTrainer(), methods=["plain", "plain_relabel"], alphas=[10])
    results = json.loads((fake_dataset["tmp"] / "study/report/results.json").read_text())
    rows = results["pseudo_labels"]
    assert [(r["run_id"], r["fold"], r["round"]) for r in rows] == [("10/plain_relabel", 0, 1), ("10/plain_relabel", 1, 1)]
    assert rows[0]["precision"] == 0.8 and rows[0]["per_class"]["pancreas"]["recall"] == 0.4
    table = (fake_dataset["tmp"] / "study/report/table.md").read_text()
    assert "| 10/plain_relabel | 0 | 1 | 0.70 | 2 | 100 | 0.800 | 0.533 |" in table


def test_paired_tests_match_scipy():
    from scipy.stats import wilcoxon
    a = {(0, "a"): 0.5, (0, "b"): 0.7, (1, "c"): 0.6, (1, "d"): float("nan"), (1, "e"): 0.9}
    b = {(0, "a"): 0.4, (0, "b"): 0.75, (1, "c"): 0.3, (1, "d"): 0.2, (1, "e"): 0.5}
    t = st.paired_ttest(a, b)
    keys = [(0, "a"), (0, "b"), (1, "c"), (1, "e")]
    x, y = [a[k] for k in keys], [b[k] for k in keys]
    assert t["n"] == 4 and t["p"] == pytest.approx(ttest_rel(x, y).pvalue)
    assert t["p_wilcoxon"] == pytest.approx(wilcoxon(x, y).pvalue) and t["w"] == pytest.approx(wilcoxon(x, y).statistic)
    same = st.paired_ttest({(0, "a"): 0.5, (0, "b"): 0.5}, {(0, "a"): 0.5, (0, "b"): 0.5})
    assert same["p_wilcoxon"] is None
