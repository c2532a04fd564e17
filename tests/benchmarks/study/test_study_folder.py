"""The files of a study folder (nnunet_stipple.benchmarks.study.study_folder): study.json merged with a
record's, the check that a folder belongs to the same study, run.json."""
from __future__ import annotations

import json

import pytest

from nnunet_stipple.benchmarks.study.study_folder import (check_same_study, load_study, merge_studies,
                                                          read_run_json)
from nnunet_stipple.errors import StippleInputError

HERE = {"folds": [0], "alphas": [100.0], "methods": ["plain"], "bins": [5], "bins_methods": ["stipple_norelab"],
        "runs": {"100/plain": {"run_id": "100/plain", "folds": [0]}}}
RECORDED = {"folds": [1], "alphas": [10.0, 100.0], "methods": ["stipple", "plain"], "bins": [1, 5],
            "runs": {"100/plain": {"run_id": "100/plain", "folds": [1]}, "10/stipple": {"folds": [1]}}}


def test_merge_studies_unites_runs_folds_and_settings():
    merged = merge_studies(HERE, RECORDED)
    assert merged["folds"] == [0, 1] and merged["alphas"] == [100.0, 10.0]
    assert merged["methods"] == ["plain", "stipple"] and merged["bins"] == [5, 1]
    assert merged["bins_methods"] == ["stipple_norelab"]
    assert merged["runs"]["100/plain"]["folds"] == [0, 1] and merged["runs"]["10/stipple"]["folds"] == [1]
    assert HERE["runs"]["100/plain"]["folds"] == [0]                 # neither input is changed
    alone = merge_studies(None, RECORDED)
    assert alone == RECORDED and alone is not RECORDED and alone["runs"] is not RECORDED["runs"]


SAME = {"dataset": "Dataset777_X", "configuration": "2d", "plans": "nnUNetPlans", "profile": "paper"}


@pytest.mark.parametrize("existing, schedule_scale, differs", [
    (SAME, None, None),
    (SAME, 1, None),                                  # folders from before the option ran at scale 1
    ({**SAME, "schedule_scale": 2}, 2, None),
    ({**SAME, "schedule_scale": 2}, 1, "schedule_scale: study has 2, asked 1"),
    ({**SAME, "plans": "nnUNetPlans_cpu2d"}, None, "plans: study has 'nnUNetPlans_cpu2d', asked 'nnUNetPlans'"),
    ({**SAME, "configuration": "3d_fullres"}, None, "configuration"),
])
def test_check_same_study(tmp_path, existing, schedule_scale, differs):
    args = ("Dataset777_X", "2d", "nnUNetPlans", "paper", tmp_path, schedule_scale)
    if differs is None:
        check_same_study(existing, *args)
    else:
        with pytest.raises(StippleInputError, match=f"another configuration.*{differs}"):
            check_same_study(existing, *args)


@pytest.mark.parametrize("content, expected", [(None, {}), ("{broken", {}), ('{"folds": {}}', {"folds": {}})])
def test_read_run_json(tmp_path, content, expected):
    if content is not None:
        (tmp_path / "run.json").write_text(content)
    assert read_run_json(tmp_path) == expected


def test_load_study(tmp_path):
    assert load_study(tmp_path) is None
    (tmp_path / "study.json").write_text(json.dumps(SAME))
    assert load_study(tmp_path) == SAME
    (tmp_path / "study.json").write_text("{")
    with pytest.raises(StippleInputError, match="not valid JSON"):
        load_study(tmp_path)
