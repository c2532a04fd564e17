"""Running a study (nnunet_stipple.benchmarks.study.running, nnUNetv2_stipple_study run) with a fake trainer:
input checks, dry run, run.json and stipple_run.json, resume, failures, round 0, schedule scale, the record."""
from __future__ import annotations

import json
import re

import pytest

from .fake_study import DS, FakeTrainer, run_fake_study
from nnunet_stipple.benchmarks.study.report import report_study
from nnunet_stipple.benchmarks.study.running import run_study
from nnunet_stipple.commands.study import main as study_main
from nnunet_stipple.errors import StippleInputError


@pytest.mark.parametrize("kwargs, match", [
    ({"methods": ["plain", "mean_teacher_v2"]}, "valid methods: plain, plain_relabel, stipple_norelab, stipple, "
                                                "mean_teacher, ua_mt, sassnet, adversarial_confidence, "
                                                "flare22_rounds"),
    ({"profile": "gpu-huge"}, "valid profiles: paper, cpu-small"),
    ({"alphas": [100, 0]}, r"outside \(0, 100\]"),
    ({"alphas": [150]}, r"outside \(0, 100\]"),
    ({"bins": [0]}, "bins"),
    ({"folds": [0, 9]}, r"Fold 9 is not in .*splits_final\.json.*\(asked --folds 0 9\)"),
])
def test_bad_input(fake_dataset, kwargs, match):
    args = dict(profile="paper", folds=[0], device="cpu", dry_run=True, log=lambda m: None)
    args.update(kwargs)
    with pytest.raises(StippleInputError, match=match):
        run_study(DS, "3d_fullres", fake_dataset["tmp"] / "study", **args)


@pytest.mark.parametrize("configuration, alphas, match", [
    ("3d_foo", [100], "Configuration '3d_foo' is not one of the configurations in .*nnUNetPlans.json"),
    ("3d_cascade_fullres", [100], "Configuration '3d_cascade_fullres' is not one"),
    ("3d_fullres", [0.1], r"--alphas 0.1 \(percent\) leaves 0 of the \d+ training cases of fold 0 labeled.*"
                          r"Did you mean 10 \(percent\)\?"),
])
def test_dry_run_checks_configuration_and_labeled_counts(fake_dataset, configuration, alphas, match):
    """Issue 12: -c 3d_foo passed --dry-run, and --alphas 0.1 (0.1 %) failed only at the first training."""
    with pytest.raises(StippleInputError, match=match):
        run_study(DS, configuration, fake_dataset["tmp"] / "study", profile="paper", folds=[0], alphas=alphas,
                  device="cpu", dry_run=True, log=lambda m: None)


def test_paper_profile_needs_preprocessed_data(fake_dataset):
    (fake_dataset["base"] / "nnUNetPlans.json").unlink()
    with pytest.raises(StippleInputError, match="not planned/preprocessed"):
        run_study(DS, "3d_fullres", fake_dataset["tmp"] / "study", profile="paper", dry_run=True,
                     log=lambda m: None)


def test_dry_run_cli(fake_dataset, capsys):
    study_dir = fake_dataset["tmp"] / "study"
    rc = study_main(["run", "-d", DS, "-c", "3d_fullres", "--study-dir", str(study_dir), "--profile", "paper",
                     "--folds", "0", "--alphas", "100", "10", "--bins", "1", "5", "-device", "cpu", "--dry-run",
                     "--methods", "plain", "plain_relabel", "stipple_norelab", "stipple", "mean_teacher", "ua_mt"])
    out = capsys.readouterr().out
    assert rc == 0
    assert not study_dir.exists()                          # a dry run writes nothing
    assert "100/plain_relabel" in out and "skipped: same as without relabeling (= 100/plain)" in out
    assert "10/stipple_norelab_B1" in out and '"num_bins": 1' in out
    assert "nnUNetv2_train" in out and f"{DS} 3d_fullres 0 -tr STIPPLETrainer_PseudoLabel -p nnUNetPlans --c -device cpu" in out
    # the semi-supervised methods: nothing unlabeled at 100 % (no imagesUnlabeled), and no run stands for them
    assert re.search(r"100/mean_teacher +skipped: nothing unlabeled\n", out)
    assert re.search(r"100/ua_mt +skipped: nothing unlabeled\n", out)
    assert "-tr nnUNetTrainer_UAMT -p nnUNetPlans --c -device cpu" in out
    # 100: plain + norelab B1 + norelab B5 (relabel, mean teacher, UA-MT skipped); 10: plain + relabel (1 round;
    # round 0 = plain) + norelab B1 + norelab B5 + stipple (1 round; round 0 = norelab B5) + mean teacher + UA-MT
    assert "10 runs x folds, 10 nnU-Net trainings" in out
    assert "rough time estimate" in out


def test_cli_errors_exit_2(fake_dataset, capsys):
    with pytest.raises(SystemExit) as e:
        study_main(["run", "-d", DS, "-c", "3d_fullres", "--study-dir", str(fake_dataset["tmp"] / "s"),
                    "--methods", "nope", "--dry-run"])
    assert e.value.code == 2
    assert "valid methods" in capsys.readouterr().err


def test_run_writes_run_configs_env_and_resumes(fake_dataset):
    runner = FakeTrainer()
    res = run_fake_study(fake_dataset, runner, report=False)
    study_dir = fake_dataset["tmp"] / "study"
    # 100: plain, stipple_norelab; 10: the 4 methods of Table 2 (the default); 2 folds each
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
    res2 = run_fake_study(fake_dataset, runner2, report=False)
    assert runner2.calls == [] and set(res2["status"].values()) == {"finished"}
    # extending the study (another alpha) trains only the new runs
    runner3 = FakeTrainer()
    run_fake_study(fake_dataset, runner3, alphas=[30], methods=["plain"], report=False)
    assert len(runner3.calls) == 2
    assert json.loads((study_dir / "study.json").read_text())["alphas"] == [100.0, 30.0, 10.0]


def test_failed_run_is_recorded_and_retried(fake_dataset):
    runner = FakeTrainer(fail={"STIPPLETrainer"})
    res = run_fake_study(fake_dataset, runner, methods=["plain", "stipple_norelab"], alphas=[10], report=False)
    assert sorted(res["failed"]) == ["10/stipple_norelab/fold_0", "10/stipple_norelab/fold_1"]
    meta = json.loads((fake_dataset["tmp"] / "study/runs/10/stipple_norelab/run.json").read_text())
    assert meta["folds"]["0"]["status"] == "failed" and meta["folds"]["0"]["attempts"][0]["returncode"] == 1
    assert meta["folds"]["0"]["attempts"][0]["error"].startswith("nnunet_stipple.errors.StippleInputError: B=5")
    runner2 = FakeTrainer()
    run_fake_study(fake_dataset, runner2, methods=["plain", "stipple_norelab"], alphas=[10], report=False)
    assert [c["cmd"][5] for c in runner2.calls] == ["STIPPLETrainer", "STIPPLETrainer"]


def test_study_folder_from_another_configuration(fake_dataset):
    run_fake_study(fake_dataset, FakeTrainer(), methods=["plain"], alphas=[10], report=False)
    with pytest.raises(StippleInputError, match="a study folder from another configuration"):
        run_fake_study(fake_dataset, FakeTrainer(), methods=["plain"], alphas=[10], plans="nnUNetResEncUNetMPlans")
    with pytest.raises(StippleInputError, match="a study folder from another configuration"):
        run_study(DS, "2d", fake_dataset["tmp"] / "study", profile="paper", dry_run=True, log=lambda m: None)


def test_relabel_run_trains_round0_when_counterpart_is_not_finished(fake_dataset):
    runner = FakeTrainer(fail={"nnUNetTrainer_LabelProportion"})
    run_fake_study(fake_dataset, runner, methods=["plain", "plain_relabel"], alphas=[10], folds=[0], report=False)
    call = next(c for c in runner.calls if "nnUNetTrainer_PseudoLabel" in c["cmd"])
    assert "round0_model_folder" not in call["run_config"]


def test_flare22_rounds_round0_is_the_plain_model(fake_dataset):
    runner = FakeTrainer()
    res = run_fake_study(fake_dataset, runner, methods=["plain", "flare22_rounds"], alphas=[10], folds=[0],
                         report=False)
    assert not res["failed"] and [c["cmd"][5] for c in runner.calls] == ["nnUNetTrainer_LabelProportion",
                                                                         "nnUNetTrainer_FLARE22Rounds"]
    rc = runner.calls[1]["run_config"]
    assert rc["round_policy"] == "agreement"
    assert rc["round0_model_folder"] == f"../../../plain/{DS}/nnUNetTrainer_LabelProportion__nnUNetPlans__3d_fullres"


def test_schedule_scale(fake_dataset):
    runner = FakeTrainer()
    run_fake_study(fake_dataset, runner, methods=["plain"], alphas=[100], folds=[0], schedule_scale=2, report=False)
    assert runner.calls[0]["run_config"]["num_epochs"] == 2000
    study = json.loads((fake_dataset["tmp"] / "study/study.json").read_text())
    assert study["schedule_scale"] == 2 and study["schedule"]["num_epochs"] == 2000
    with pytest.raises(StippleInputError, match="schedule_scale: study has 2"):
        run_fake_study(fake_dataset, FakeTrainer(), methods=["plain"], alphas=[100], folds=[0], report=False)
    with pytest.raises(StippleInputError, match="whole number of epochs"):
        run_fake_study(fake_dataset, FakeTrainer(), schedule_scale=0.0001)


def test_record_survives_the_machine(fake_dataset, monkeypatch):
    record = fake_dataset["tmp"] / "docs_results"
    res = run_fake_study(fake_dataset, FakeTrainer(), record_dir=record)
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
    res2 = run_study(DS, "3d_fullres", fake_dataset["tmp"] / "new_machine", profile="paper", folds=[0, 1],
                        alphas=[100, 10], device="cpu", runner=must_not_train, record_dir=record, log=lambda m: None)
    assert set(res2["status"].values()) == {"finished"}
    assert (fake_dataset["tmp"] / "new_machine/report/results.csv").read_text() == first
    # the report rebuilt from the record folder alone: no predictions, no nnUNet_preprocessed
    monkeypatch.delenv("nnUNet_preprocessed")
    (record / "report/results.csv").unlink()
    rep = report_study(record, log=lambda m: None)
    assert (record / "report/results.csv").read_text() == first and rep["finished"] == 12
    # a study extended on one machine (another alpha) keeps the rows of the other
    monkeypatch.setenv("nnUNet_preprocessed", str(fake_dataset["pre"]))
    runner = FakeTrainer()
    run_study(DS, "3d_fullres", fake_dataset["tmp"] / "third_machine", profile="paper", folds=[0], alphas=[30],
                 methods=["plain"], device="cpu", runner=runner, record_dir=record, log=lambda m: None,
                 report=False)
    rep = report_study(fake_dataset["tmp"] / "third_machine", log=lambda m: None)
    assert len(runner.calls) == 1 and rep["finished"] == 13


def test_record_of_another_study_is_refused(fake_dataset):
    record = fake_dataset["tmp"] / "record"
    run_fake_study(fake_dataset, FakeTrainer(), methods=["plain"], alphas=[10], folds=[0], record_dir=record,
                   report=False)
    with pytest.raises(StippleInputError, match="another configuration"):
        run_study(DS, "3d_fullres", fake_dataset["tmp"] / "other", profile="paper", plans="nnUNetResEncUNetMPlans",
                     runner=FakeTrainer(), record_dir=record, log=lambda m: None)
