"""stipple_run.json: every value is type- and range-checked when a trainer reads the file (issue 12, item 3),
and the selection strategy is checked there too, before round 0 trains (item 2)."""
from __future__ import annotations

import json

import pytest

from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.run_config import RUN_CONFIG_FILE, RunConfig


def _read(tmp_path, content) -> RunConfig:
    (tmp_path / RUN_CONFIG_FILE).write_text(content if isinstance(content, str) else json.dumps(content))
    return RunConfig.for_output_folder(str(tmp_path))


@pytest.mark.parametrize("settings, match", [
    ({"label_proportion": "0.1"}, "label_proportion must be a number in (0, 1], got '0.1'"),
    ({"label_proportion": True}, "label_proportion must be a number"),
    ({"label_proportion": 0}, "label_proportion must be a number in (0, 1]"),
    ({"label_proportion": 10}, "label_proportion must be a number in (0, 1], got 10"),
    ({"label_proportion": float("nan")}, "label_proportion must be a number"),
    ({"unlabeled_sources": "hidden"}, "unlabeled_sources must be a list of names"),
    ({"unlabeled_sources": ["hiden"]}, "unknown unlabeled_sources ['hiden']"),
    ({"rounds": 1.5}, "rounds must be an integer >= 0 or null, got 1.5"),
    ({"rounds": -1}, "rounds must be an integer >= 0"),
    ({"num_bins": 2.5}, "num_bins must be an integer >= 1 or null, got 2.5"),
    ({"num_bins": 0}, "num_bins must be an integer >= 1"),
    ({"include_background": "yes"}, "include_background must be true or false, got 'yes'"),
    ({"label_seed": "abc"}, "label_seed must be an integer, got 'abc'"),
    ({"num_epochs": -3}, "num_epochs must be an integer >= 1 or null, got -3"),
    ({"num_epochs": 0}, "num_epochs must be an integer >= 1"),
    ({"num_iterations_per_epoch": 2.0}, "num_iterations_per_epoch must be an integer"),
    ({"num_val_iterations_per_epoch": 0}, "num_val_iterations_per_epoch must be an integer >= 1"),
    ({"save_every": 0}, "save_every must be an integer >= 1"),
    ({"gamma_max": 0}, "gamma_max must be a number in (0, 1]"),
    ({"gamma_max": "0.7"}, "gamma_max must be a number"),
    ({"retrain": "continue"}, "retrain must be 'scratch' or 'finetune'"),
    ({"selection": "most_confident"}, "unknown selection strategy 'most_confident'"),
    ({"selection": 3}, "selection must be a strategy name"),
    ({"selection": "flare22", "include_background": True}, "include_background applies to the selection strategies"),
    ({"round0_model_folder": 7}, "round0_model_folder must be a folder"),
    ({"label_proportions": 0.1}, "unknown setting(s) ['label_proportions']"),
    ([0.1], "expected a JSON object of settings"),
    ("{not json", "is not valid JSON"),
])
def test_bad_values_name_the_file_and_the_setting(tmp_path, settings, match):
    with pytest.raises(StippleInputError) as e:
        _read(tmp_path, settings)
    assert str(tmp_path / RUN_CONFIG_FILE) in str(e.value)
    assert match in str(e.value)


@pytest.mark.parametrize("settings", [
    {},
    {"label_proportion": 1},
    {"label_proportion": 0.1, "label_seed": 3, "rounds": 0, "num_bins": 1},
    {"selection": "prior_confidence", "include_background": True},
    {"selection": "max_probability", "include_background": True, "retrain": "finetune"},
    {"selection": "all_predicted", "unlabeled_sources": ["imagesUnlabeled"]},
    {"num_epochs": 40, "num_iterations_per_epoch": 250, "num_val_iterations_per_epoch": 25, "save_every": 1},
    {"rounds": None, "num_bins": None, "round0_model_folder": "../x"},
])
def test_valid_settings_are_kept(tmp_path, settings):
    rc = _read(tmp_path, settings)
    assert {k: rc.to_json()[k] for k in settings} == settings


def test_missing_file_gives_the_defaults(tmp_path):
    assert RunConfig.for_output_folder(str(tmp_path)) == RunConfig()
    assert RunConfig.for_output_folder(None) == RunConfig()


@pytest.mark.parametrize("alpha, rounds", [(1.0, 2), (0.7, 2), (0.5, 1), (0.1, 1)])
def test_effective_rounds_follow_the_paper(alpha, rounds):
    assert RunConfig(label_proportion=alpha).effective_rounds == rounds
    assert RunConfig(label_proportion=alpha, rounds=3).effective_rounds == 3
