"""What prediction prints about positioning (issue 12): one line per case, a summary, and a warning for images
with non-finite voxels."""
from __future__ import annotations

import pytest
import torch

from nnunet_stipple.inference.predictor import check_finite_input, positioning_line, positioning_summary


def _fold(method="kl_search", confidence=0.8, rejected=(), seconds=0.5, fold="0"):
    classes = {str(i): {"name": name, "rejected_centre": [1, 2, 3] if name in rejected else None}
               for i, name in enumerate(("liver", "spleen", "pancreas"), start=1)}
    return {"fold": fold, "method": method, "confidence": confidence, "classes": classes,
            "positioning_seconds": seconds}


@pytest.mark.parametrize("report, expected", [
    ({"case": "c1", "folds": [_fold()]}, "STIPPLE positioning c1: fold 0: kl_search, confidence 0.80, 0.5 s"),
    ({"case": "c2", "folds": [_fold(rejected=("pancreas",))]},
     "STIPPLE positioning c2: fold 0: kl_search, confidence 0.80, rejected by the layout check: pancreas, 0.5 s"),
    ({"case": "c3", "folds": [_fold(), _fold(method="uniform_fallback", confidence=None, fold="1", seconds=0.1)]},
     "STIPPLE positioning c3: fold 0: kl_search, confidence 0.80, 0.5 s; fold 1: uniform_fallback, 0.1 s"),
    ({"case": "c4", "folds": [_fold()], "input_nonfinite_fraction": 1.0},
     "STIPPLE positioning c4: fold 0: kl_search, confidence 0.80, 0.5 s, INPUT NOT FINITE"),
])
def test_line_per_case(report, expected):
    assert positioning_line(report) == expected


def test_summary_counts_fallbacks_rejections_and_time():
    reports = [{"case": "a", "folds": [_fold(confidence=0.6, rejected=("liver", "spleen"))]},
               {"case": "b", "folds": [_fold(method="uniform_fallback", confidence=None, seconds=1.0)]},
               {"case": "c", "folds": [_fold(confidence=1.0)], "input_nonfinite_fraction": 0.5}]
    assert positioning_summary(reports) == (
        "STIPPLE positioning: 3 cases, 3 placements, 1 with a uniform prior (no organ found), mean confidence 0.80, "
        "2 organ placements rejected by the layout check, 2.0 s in all; 1 cases with non-finite image voxels")
    assert positioning_summary([]) == "STIPPLE positioning: no case predicted"


@pytest.mark.parametrize("values, fraction", [([1.0, 2.0, 3.0, 4.0], 0.0), ([float("nan"), 1.0, 2.0, 3.0], 0.25),
                                              ([float("nan"), float("inf")] * 2, 1.0)])
def test_non_finite_input_warns(values, fraction):
    data = torch.tensor(values).view(1, 1, 2, 2)
    if fraction == 0:
        assert check_finite_input(data, "x") == 0.0
        return
    with pytest.warns(UserWarning, match="case x: .* NaN or infinite"):
        assert check_finite_input(data, "x") == pytest.approx(fraction)
