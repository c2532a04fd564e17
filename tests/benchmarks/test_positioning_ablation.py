"""The positioning ablation's arithmetic and records (nnunet_stipple/benchmarks/positioning_ablation.py) on a
hand-made result; the script on a trained phantom model is in tests/trainers/test_stipple_trainer_e2e.py."""
import csv
import json

import numpy as np
import pytest
import torch

from nnunet_stipple.benchmarks.positioning_ablation import ablation_markdown, efficiency, positioning_rows, \
    summarise, write_records
from nnunet_stipple.benchmarks.positioning_eval import LogitsCache
from nnunet_stipple.errors import StippleInputError


@pytest.mark.parametrize("variant, visual, truth, expected", [
    (0.5, 0.4, 0.6, 0.5),
    (0.6, 0.4, 0.6, 1.0),
    (0.3, 0.4, 0.6, -0.5),       # worse than no prior
    (0.5, 0.4, 0.4, None),       # no gap: undefined
    (None, 0.4, 0.6, None),
    (float("nan"), 0.4, 0.6, None),
])
def test_efficiency(variant, visual, truth, expected):
    got = efficiency(variant, visual, truth)
    assert got == (None if expected is None else pytest.approx(expected))


def _result():
    """Two cases, organs 1 and 2; organ 2 absent from case b (undefined Dice)."""
    per_case = {
        "a": {"visual": {1: 0.4, 2: 0.2}, "hybrid": {1: 0.6, 2: 0.3}, "naive": {1: 0.5, 2: 0.2},
              "ground_truth": {1: 0.8, 2: 0.4}},
        "b": {"visual": {1: 0.6, 2: float("nan")}, "hybrid": {1: 0.6, 2: float("nan")},
              "naive": {1: 0.6, 2: float("nan")}, "ground_truth": {1: 0.8, 2: float("nan")}},
    }
    modes = ["visual", "naive", "hybrid", "ground_truth"]
    mean_per_class = {m: {c: float(np.nanmean([per_case[k][m][c] for k in per_case])) for c in (1, 2)} for m in modes}
    placements = {"a": {"naive": {"layout": "typical"}, "hybrid": {"layout": "flagged"}},
                  "b": {"naive": {"layout": "typical"}, "hybrid": {"layout": "undetermined"}}}
    return {"modes": modes, "per_case": per_case, "mean_per_class": mean_per_class, "labels": {1: "a", 2: "b"},
            "placements": placements,
            "mean": {m: float(np.mean(list(mean_per_class[m].values()))) for m in modes}}


def test_summary_by_hand():
    s = summarise(_result())
    # organ 1: visual (0.4 + 0.6) / 2 = 0.5, hybrid 0.6, truth 0.8; organ 2 (case a only): 0.2, 0.3, 0.4
    assert s["hybrid"]["per_class"]["1"]["efficiency"] == pytest.approx(0.1 / 0.3)
    assert s["hybrid"]["per_class"]["2"]["efficiency"] == pytest.approx(0.5)
    # means over organs: visual 0.35, hybrid 0.45, truth 0.6
    assert s["hybrid"]["mean"] == pytest.approx(0.45)
    assert s["hybrid"]["efficiency"] == pytest.approx(0.1 / 0.25)
    assert s["visual"]["efficiency"] == 0.0 and s["ground_truth"]["efficiency"] == 1.0


def test_markdown_has_a_row_per_mode_and_two_columns_per_model():
    md = ablation_markdown({"m1": _result(), "m2": _result()}).splitlines()
    assert md[0].count("mean Dice") == 2 and md[0].count("efficiency") == 2 and md[0].count("layout flagged") == 2
    assert [line.split("|")[1].strip() for line in md[2:]] == ["visual", "naive", "hybrid", "ground_truth"]
    assert [c.strip() for c in md[4].split("|")[2:5]] == ["0.450", "0.40", "1/2"]
    assert md[2].split("|")[4].strip() == ""          # visual: no placement


def test_positioning_csv_reports_the_chosen_variant_as_auto(tmp_path):
    rows = positioning_rows("m1", 0, _result(), "hybrid")
    assert {r["mode"] for r in rows} == {"visual", "naive", "auto", "ground_truth"}
    auto_a1 = [r for r in rows if r["mode"] == "auto" and r["case"] == "a" and r["class_key"] == "1"]
    assert len(auto_a1) == 1 and float(auto_a1[0]["dice"]) == 0.6
    undefined = [r for r in rows if r["case"] == "b" and r["class_key"] == "2"]
    assert len(undefined) == 4 and all(r["dice"] == "" for r in undefined)
    write_records(tmp_path, {"m1": _result()}, {"m1": 0}, "hybrid")
    with open(tmp_path / "positioning.csv") as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == ["run_id", "fold", "case", "class_key", "mode", "dice"] and len(read) == 16
    record = json.loads((tmp_path / "ablation.json").read_text())    # valid JSON: NaN written as null
    assert record["models"]["m1"]["per_case"]["b"]["hybrid"]["2"] is None
    assert record["method_variant"] == "hybrid" and (tmp_path / "ablation.md").is_file()


def test_logits_cache_round_trip_and_refuses_another_model(tmp_path):
    key = {"model_folder": "/m", "fold": 0, "checkpoint": "checkpoint_final.pth", "mirroring": True}
    cache = LogitsCache(tmp_path / "c", key)
    assert cache.load("case1") is None
    logits = torch.randn(3, 4, 5, 6)
    cache.save("case1", logits)
    again = LogitsCache(tmp_path / "c", dict(key))
    assert torch.equal(again.load("case1"), logits)
    with pytest.raises(StippleInputError, match="cache.json: this logits cache holds"):
        LogitsCache(tmp_path / "c", dict(key, fold=1))
