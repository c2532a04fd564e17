"""Profiles of the study (nnunet_stipple.benchmarks.study.profiles): schedule scale, NSD tolerance, what a
study reduces compared with the paper."""
from __future__ import annotations

import pytest

from nnunet_stipple.benchmarks.study.profiles import (DEFAULT_NSD_TOLERANCE_MM, PROFILES, check_nsd_tolerance,
                                                      check_profile, reductions, scaled_profile,
                                                      study_nsd_tolerance)
from nnunet_stipple.errors import StippleInputError


@pytest.mark.parametrize("scale, epochs", [(1, 40), (2, 80), (0.5, 20), (1.5, 60)])
def test_scaled_profile_multiplies_the_epochs_only(scale, epochs):
    prof = scaled_profile(PROFILES["cpu-2d"], scale)
    assert prof.num_epochs == epochs
    assert prof.schedule == {**PROFILES["cpu-2d"].schedule, "num_epochs": epochs}
    assert (prof.folds, prof.alphas, prof.plans) == (PROFILES["cpu-2d"].folds, PROFILES["cpu-2d"].alphas,
                                                     PROFILES["cpu-2d"].plans)


@pytest.mark.parametrize("scale", [0, 0.01, -1, 1.01, float("nan"), float("inf"), "twice", None])
def test_scaled_profile_needs_a_whole_number_of_epochs(scale):
    with pytest.raises(StippleInputError, match="whole number of epochs"):
        scaled_profile(PROFILES["cpu-2d"], scale)


@pytest.mark.parametrize("tolerance, expected", [(0, 0.0), (2, 2.0), (2.5, 2.5), (-1, None), (True, None),
                                                 ("2", None), (None, None), (float("nan"), None)])
def test_check_nsd_tolerance(tolerance, expected):
    if expected is None:
        with pytest.raises(StippleInputError, match="NSD tolerance"):
            check_nsd_tolerance(tolerance)
    else:
        assert check_nsd_tolerance(tolerance) == expected


@pytest.mark.parametrize("study, expected", [
    ({"nsd_tolerance_mm": 3, "profile": "cpu-2d"}, 3.0),       # what the study ran with
    ({"profile": "cpu-2d"}, 5.0),                              # older study.json: its profile's
    ({"profile": "cpu-small"}, 12.0),
    ({"profile": "gone"}, DEFAULT_NSD_TOLERANCE_MM),
])
def test_study_nsd_tolerance(study, expected):
    assert study_nsd_tolerance(study) == expected


def test_check_profile():
    assert check_profile("gpu-2d") is PROFILES["gpu-2d"]
    with pytest.raises(StippleInputError, match="valid profiles: paper, cpu-small, cpu-2d, gpu-2d"):
        check_profile("gpu-huge")


@pytest.mark.parametrize("profile, folds, alphas, plans, expected_keys", [
    ("paper", (0, 1, 2, 3, 4), (10, 30, 50, 70, 100), "nnUNetPlans", set()),
    ("paper", (0,), (100, 10), "nnUNetPlans", {"folds", "alphas"}),
    ("cpu-2d", (0, 1), (100, 30, 10), "nnUNetPlans_cpu2d",
     {"num_epochs", "num_val_iterations_per_epoch", "save_every", "folds", "alphas", "plans"}),
])
def test_reductions_name_what_differs_from_the_paper(profile, folds, alphas, plans, expected_keys):
    red = reductions(PROFILES[profile], folds, alphas, plans)
    assert set(red) == expected_keys
    if "save_every" in red:
        assert red["save_every"] == {"paper": 50, "used": 1}        # nnU-Net saves every 50 epochs
    planning = {"target_spacing": [8.0, 12.0, 12.0], "dataset_fullres_spacing": [3.0, 0.8, 0.8],
                "changed": {"batch_size": {"nnunet": 12, "used": 8}}, "source_plans": "nnUNetPlans"}
    red = reductions(PROFILES[profile], folds, alphas, plans, planning, {"network_input": {"used": {}}})
    assert red["target_spacing_mm"]["used"] == [8.0, 12.0, 12.0]
    assert red["network"] == {"derived_from": "nnUNetPlans", "changed": planning["changed"]}
    assert red["network_input"] == {"used": {}}
