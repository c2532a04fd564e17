"""Positioning quality of the prior runs (nnunet_stipple.benchmarks.study.positioning_quality) in a fake
study: rows, summary, efficiency, measured once."""
from __future__ import annotations

import csv
import json

import pytest

from .fake_study import FakeTrainer, run_fake_study


def test_positioning_rows_and_summary(fake_dataset):
    run_fake_study(fake_dataset, FakeTrainer(), methods=["plain", "stipple_norelab", "stipple"], alphas=[10])
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
    run_fake_study(fake_dataset, FakeTrainer(), methods=["plain", "stipple_norelab", "stipple"], alphas=[10])
    assert (study_dir / "runs/10/stipple/positioning_fold0.json").read_text() == written
