"""Smoke test of the ``cpu-2d`` study profile on the phantom, through nnU-Net's own commands (CPU).

The profile's schedule is shortened to a few iterations; everything else is the real thing: nnU-Net's 2d plans
reduced by the profile, STIPPLE with and without relabeling at alpha = 50 % (nnUNetv2_train per run; the plain
methods run the same harness code with other trainers), round 0 of the relabeling run taken from its counterpart, positioning quality measured on the STIPPLE models, the record exported
as runs finish, and a second machine (a fresh study folder) that trains nothing and rebuilds the same report
from the record."""
from __future__ import annotations

import csv
import json
from dataclasses import replace

import pytest

from nnunet_stipple.benchmarks import study as st

pytestmark = pytest.mark.e2e
METHODS = ["stipple_norelab", "stipple"]


@pytest.fixture(scope="module")
def cpu2d_study(phantom_preprocessed, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    for key in ("nnUNet_raw", "nnUNet_preprocessed"):
        mp.setenv(key, phantom_preprocessed["env"][key])
    for key, value in (("nnUNet_def_n_proc", "2"), ("nnUNet_n_proc_DA", "2"), ("nnUNet_compile", "f")):
        mp.setenv(key, value)
    mp.setitem(st.PROFILES, "cpu-2d", replace(st.PROFILES["cpu-2d"], num_epochs=1, num_iterations_per_epoch=3,
                                              num_val_iterations_per_epoch=1))
    root = tmp_path_factory.mktemp("cpu2d_study")
    messages = []
    res = st.run_study(phantom_preprocessed["dataset_id"], "2d", root / "study", profile="cpu-2d", folds=[0],
                       alphas=[50], methods=METHODS, record_dir=root / "record", log=messages.append)
    yield {"root": root, "result": res, "log": messages, "pre": phantom_preprocessed}
    mp.undo()


def test_reduced_plans_and_study_json(cpu2d_study):
    pre = cpu2d_study["pre"]["preprocessed_dataset"]
    plans = json.loads((pre / "nnUNetPlans_cpu2d.json").read_text())
    original = json.loads((pre / "nnUNetPlans.json").read_text())
    arch = plans["configurations"]["2d"]["architecture"]["arch_kwargs"]
    assert plans["configurations"]["2d"]["batch_size"] == 8
    assert arch["features_per_stage"] == [16 * 2 ** i for i in range(arch["n_stages"])]
    assert plans["configurations"]["2d"]["data_identifier"] == original["configurations"]["2d"]["data_identifier"]
    study = json.loads((cpu2d_study["root"] / "record/study.json").read_text())
    assert study["profile"] == "cpu-2d" and study["plans"] == "nnUNetPlans_cpu2d"
    assert study["reduced_vs_paper"]["network"]["changed"]["features_per_stage"]["used"] == arch["features_per_stage"]
    assert study["schedule"]["save_every"] == 1 and study["nsd_tolerance_mm"] == 5.0


def test_all_runs_finished_and_relabeling_reused_round0(cpu2d_study):
    res = cpu2d_study["result"]
    assert not res["failed"], cpu2d_study["log"]
    assert set(res["status"].values()) == {"done"} and len(res["status"]) == 2
    for method in ("stipple",):
        spec = next(st.RunSpec.from_json(r) for r in res["runs"] if r["method"] == method)
        fold = st.model_folder(spec.folder(cpu2d_study["root"] / "study"), cpu2d_study["pre"]["dataset_name"],
                               spec.trainer, "nnUNetPlans_cpu2d", "2d") / "fold_0"
        round0 = fold / "pseudo_labeling" / "round_0"
        assert [p.name for p in round0.iterdir()] == ["checkpoint_final.pth"]       # adopted, not trained
        assert (fold / "pseudo_labeling" / "round_1" / "checkpoint_final.pth").is_file()
        log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
        assert "Round 0: m0 is" in log and "not retrained" in log


def test_positioning_and_report_recorded(cpu2d_study):
    record = cpu2d_study["root"] / "record"
    rows = list(csv.DictReader(open(record / "report/positioning.csv")))
    assert {r["run_id"] for r in rows} == {"50/stipple_norelab", "50/stipple"}
    assert {r["mode"] for r in rows} == {"visual", "naive", "auto", "ground_truth"}
    assert all(r["dice"] == "" or 0 <= float(r["dice"]) <= 1 for r in rows)
    results = list(csv.DictReader(open(record / "report/results.csv")))
    assert {r["method"] for r in results} == set(METHODS)
    assert "## Positioning of the prior" in (record / "report/table.md").read_text()
    assert not list(record.rglob("*.pth")) and list(record.rglob("summary.json"))


def test_new_machine_trains_nothing_and_rebuilds_the_report(cpu2d_study, monkeypatch):
    for key in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.setenv(key, cpu2d_study["pre"]["env"][key])
    root = cpu2d_study["root"]

    def must_not_train(cmd, env, log_file):
        raise AssertionError(f"trained again: {cmd}")
    res = st.run_study(cpu2d_study["pre"]["dataset_id"], "2d", root / "new_machine", profile="cpu-2d", folds=[0],
                       alphas=[50], methods=METHODS, record_dir=root / "record", runner=must_not_train,
                       log=lambda m: None)
    assert set(res["status"].values()) == {"finished"}
    for name in ("results.csv", "positioning.csv"):
        assert (root / "new_machine/report" / name).read_text() == (root / "study/report" / name).read_text()
