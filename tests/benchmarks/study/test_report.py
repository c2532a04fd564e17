"""The report of a study (nnunet_stipple.benchmarks.study.report, nnUNetv2_stipple_study report) on fake
studies: table.md, results.json / .csv, NSD cache, partial studies, pseudo-label quality."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ttest_rel

from .fake_study import DS, FakeTrainer, run_fake_study
from nnunet_stipple.benchmarks.study import METHODS
from nnunet_stipple.benchmarks.study.partial_study import is_partial_method
from nnunet_stipple.benchmarks.study import metrics as study_metrics
from nnunet_stipple.benchmarks.study.report import report_study
from nnunet_stipple.benchmarks.study.report_tables import format_p_value
from nnunet_stipple.commands.study import main as study_main
from nnunet_stipple.errors import StippleInputError

STUDY_METHODS = [m for m in METHODS if not is_partial_method(m)]    # the partial-labels study runs apart


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
    res = run_fake_study(fake_dataset, FakeTrainer(), nsd_tolerance_mm=2.0, methods=STUDY_METHODS)   # Tables 2 and 3
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
    for label in ("Mean teacher", "UA-MT (consistency)", "SASSNet (shape-aware)", "Adversarial (confidence)"):
        row = next(l for l in table.splitlines() if l.startswith(f"| {label} |"))
        assert row.split(" | ")[1] == "-" and row.split(" | ")[2].rstrip(" |") not in ("", "-")
    assert "a semi-supervised one (mean teacher, UA-MT, SASSNet, adversarial confidence) has nothing to learn from" in table
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
    # CSV: 11 trained runs (100 %: 2; 10 %: the 4 of Table 2, the 4 semi-supervised ones and FLARE22's rounds) x 4
    # cases x 2 classes
    rows = list(csv.DictReader(open(rep / "results.csv")))
    assert len(rows) == 11 * 4 * 2
    assert {"10/adversarial_confidence", "10/flare22_rounds"} <= {r["run_id"] for r in rows}
    r = next(r for r in rows if r["run_id"] == "10/plain" and r["case"] == "case_b" and r["class_name"] == "liver")
    s = json.loads((study_dir / "runs/10/plain" / DS / "nnUNetTrainer_LabelProportion__nnUNetPlans__3d_fullres"
                    / "fold_0/validation/summary.json").read_text())
    dice_b = next(c for c in s["metric_per_case"] if c["prediction_file"].endswith("case_b.nii.gz"))["metrics"]["1"]["Dice"]
    assert float(r["dice"]) == pytest.approx(dice_b)
    assert (rep / "dice_vs_alpha.png").stat().st_size > 0
    assert (rep / "organs_alpha10.png").is_file() and (rep / "organs_alpha100.png").is_file()
    assert res["report"]["finished"] == 22          # 11 runs x 2 folds


def test_report_uses_nsd_cache_and_bins_plot(fake_dataset, monkeypatch):
    run_fake_study(fake_dataset, FakeTrainer(), methods=["plain", "stipple_norelab"], alphas=[10], bins=[1, 5])
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
    report_study(study_dir, nsd_tolerance_mm=1.0, log=lambda m: None)
    assert (study_dir / "runs/10/plain/nsd_fold1_tol1mm.json").is_file()


def test_report_partial_study(fake_dataset):
    """Only some runs finished: the table shows n/a and [k/n folds]."""
    runner = FakeTrainer(fail={"STIPPLETrainer"})
    run_fake_study(fake_dataset, runner, methods=["plain", "stipple_norelab"], alphas=[10])
    study_dir = fake_dataset["tmp"] / "study"
    # remove fold 1 of plain: 1/2 folds finished
    s = study_dir / "runs/10/plain" / DS / "nnUNetTrainer_LabelProportion__nnUNetPlans__3d_fullres/fold_1/validation/summary.json"
    s.unlink()
    rep = report_study(study_dir, log=lambda m: None)
    assert "[1/2 folds]" in rep["table"] and "| STIPPLE w/o relab | n/a |" in rep["table"]
    assert "std over cases" in rep["table"]


def test_report_without_study_json(tmp_path):
    with pytest.raises(StippleInputError, match="not a study folder"):
        report_study(tmp_path / "nothing")


def test_pseudo_label_quality_in_report(fake_dataset):
    run_fake_study(fake_dataset, FakeTrainer(), methods=["plain", "plain_relabel"], alphas=[10])
    results = json.loads((fake_dataset["tmp"] / "study/report/results.json").read_text())
    rows = results["pseudo_labels"]
    assert [(r["run_id"], r["fold"], r["round"]) for r in rows] == [("10/plain_relabel", 0, 1), ("10/plain_relabel", 1, 1)]
    assert rows[0]["precision"] == 0.8 and rows[0]["per_class"]["pancreas"]["recall"] == 0.4
    table = (fake_dataset["tmp"] / "study/report/table.md").read_text()
    assert "| 10/plain_relabel | 0 | 1 | 0.70 | 2 | 100 | 0.800 | 0.533 |" in table


# ---------------------------------------------------------------------------------------------------------------
# the report's part of the record: each run exported once
# ---------------------------------------------------------------------------------------------------------------
def _count_run_exports(monkeypatch):
    from nnunet_stipple.benchmarks.study import report as report_module
    exported = []

    def counting(study_dir, record_dir, run_folder, finished_folds):
        exported.append(run_folder)
        return real(study_dir, record_dir, run_folder, finished_folds)
    real = report_module.export_run
    monkeypatch.setattr(report_module, "export_run", counting)
    return exported


def test_report_records_only_the_nsd_of_runs_recorded_as_they_finished(fake_dataset, monkeypatch):
    exported = _count_run_exports(monkeypatch)
    record = fake_dataset["tmp"] / "record"
    run_fake_study(fake_dataset, FakeTrainer(), methods=["plain", "stipple_norelab"], alphas=[10], record_dir=record)
    assert exported == []                       # run_study exported every run as it finished
    study_dir = fake_dataset["tmp"] / "study"
    for run in ("plain", "stipple_norelab"):    # the NSD the report computed is recorded
        for f in (0, 1):
            nsd = f"runs/10/{run}/nsd_fold{f}_tol2mm.json"
            assert (record / nsd).read_text() == (study_dir / nsd).read_text()
    # a report on its own (`report --record-dir`) records every finished run
    other = fake_dataset["tmp"] / "other_record"
    report_study(study_dir, record_dir=other, log=lambda m: None)
    assert sorted(exported) == ["runs/10/plain", "runs/10/stipple_norelab"]
    assert (other / "runs/10/plain/run.json").read_text() == (study_dir / "runs/10/plain/run.json").read_text()


class FailSecondFold(FakeTrainer):
    """Fails fold 1 of STIPPLETrainer: its run is recorded after fold 0, then its run.json changes."""

    def __call__(self, cmd, env, log_file):
        if cmd[cmd.index("-tr") + 1] == "STIPPLETrainer" and cmd[3] == "1":
            log_file.write_text("RuntimeError: fold 1 fails\n")
            return 1
        return super().__call__(cmd, env, log_file)


def test_run_whose_later_fold_failed_is_recorded_again_by_the_report(fake_dataset, monkeypatch):
    exported = _count_run_exports(monkeypatch)
    record = fake_dataset["tmp"] / "record"
    res = run_fake_study(fake_dataset, FailSecondFold(), methods=["plain", "stipple_norelab"], alphas=[10],
                         record_dir=record)
    assert res["failed"] == ["10/stipple_norelab/fold_1"] and exported == ["runs/10/stipple_norelab"]
    run_json = "runs/10/stipple_norelab/run.json"
    recorded = json.loads((record / run_json).read_text())
    assert recorded == json.loads((fake_dataset["tmp"] / "study" / run_json).read_text())
    assert recorded["folds"]["1"]["status"] == "failed"
