"""What prediction prints about positioning (issue 12): one line per case, a summary, and a warning for images
with non-finite voxels."""
from __future__ import annotations

import pytest
import torch

from nnunet_stipple.inference.predictor import check_input_intensities, positioning_line, positioning_summary


def _fold(method="kl_search", confidence=0.8, rejected=(), seconds=0.5, fold="0"):
    classes = {str(i): {"name": name, "rejected_centre": [1, 2, 3] if name in rejected else None}
               for i, name in enumerate(("liver", "spleen", "pancreas"), start=1)}
    return {"fold": fold, "method": method, "confidence": confidence, "classes": classes,
            "positioning_seconds": seconds}


def _flagged(fold="0"):
    layout = {"status": "flagged", "reasons": ["different_layout"], "best": "mirrored_axis2",
              "misfit_mm": {"as_trained": 120.0, "mirrored_axis0": 90.0, "mirrored_axis1": 95.0,
                            "mirrored_axis2": 30.0}}
    return {**_fold(method="layout_fallback", fold=fold), "layout": layout}


LAYOUT_LINE = ("STIPPLE positioning m: fold 0: layout_fallback, confidence 0.80, layout flagged: different_layout "
               "(misfit 120 mm as trained, 30 mm mirrored axis2), 0.5 s")


def test_line_and_summary_name_the_cases_the_layout_guard_flagged():
    assert positioning_line({"case": "m", "folds": [_flagged()]}) == LAYOUT_LINE
    summary = positioning_summary([{"case": "m", "folds": [_flagged()]}, {"case": "t", "folds": [_fold()]}])
    assert summary.endswith("; 1 cases flagged by the layout check (m), 1 placements left uniform for it")
    typical = {**_fold(), "layout": {"status": "typical", "reasons": [], "misfit_mm": {}}}
    assert "layout" not in positioning_line({"case": "t", "folds": [typical]})


@pytest.mark.parametrize("report, expected", [
    ({"case": "c1", "folds": [_fold()]}, "STIPPLE positioning c1: fold 0: kl_search, confidence 0.80, 0.5 s"),
    ({"case": "c2", "folds": [_fold(rejected=("pancreas",))]},
     "STIPPLE positioning c2: fold 0: kl_search, confidence 0.80, rejected by the consistency check: pancreas, 0.5 s"),
    ({"case": "c3", "folds": [_fold(), _fold(method="uniform_fallback", confidence=None, fold="1", seconds=0.1)]},
     "STIPPLE positioning c3: fold 0: kl_search, confidence 0.80, 0.5 s; fold 1: uniform_fallback, 0.1 s"),
    ({"case": "c4", "folds": [_fold()], "input_problem": "the image is constant"},
     "STIPPLE positioning c4: fold 0: kl_search, confidence 0.80, 0.5 s; INPUT: the image is constant"),
])
def test_line_per_case(report, expected):
    assert positioning_line(report) == expected


def test_summary_counts_fallbacks_rejections_and_time():
    reports = [{"case": "a", "folds": [_fold(confidence=0.6, rejected=("liver", "spleen"))]},
               {"case": "b", "folds": [_fold(method="uniform_fallback", confidence=None, seconds=1.0)]},
               {"case": "c", "folds": [_fold(confidence=1.0)], "input_problem": "the image is constant"}]
    assert positioning_summary(reports) == (
        "STIPPLE positioning: 3 cases, 3 placements, 1 with a uniform prior (no organ found), mean confidence 0.80, "
        "2 organ placements rejected by the consistency check, 2.0 s in all; 1 cases with a constant or non-finite image")
    assert positioning_summary([]) == "STIPPLE positioning: no case predicted"


@pytest.mark.parametrize("values, problem", [
    ([1.0, 2.0, 3.0, 4.0], None),
    ([float("nan"), 1.0, 2.0, 3.0], "25.0 % of the image's voxels are NaN or infinite"),
    ([float("nan"), float("inf")] * 2, "100.0 % of the image's voxels are NaN or infinite"),
    ([0.0] * 4, "the image is constant"),
    ([-0.7] * 4, "the image is constant"),
])
def test_suspicious_intensities_warn(values, problem):
    data = torch.tensor(values).view(1, 1, 2, 2)
    if problem is None:
        assert check_input_intensities(data, "x") is None
        return
    with pytest.warns(UserWarning, match="case x: "):
        assert check_input_intensities(data, "x").startswith(problem)
