"""A resume (``nnUNetv2_train --c``) with settings that change what the model learns from is refused, naming the
keys; schedule changes are allowed and logged (issue 12, items 1 and 2). Unit level: the trainers' mixins on
stubs that carry only the attributes they read."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.pseudo_labeling.loop import PseudoLabelLoopMixin
from nnunet_stipple.run_config import RUN_CONFIG_FILE, TRAINED_SETTINGS_FILE, RunConfig
from nnunet_stipple.trainers.label_proportion import LabelProportionMixin

TRAINED = {"label_proportion": 0.5, "label_seed": 0, "num_epochs": 10, "rounds": 1, "selection": "max_probability"}


class TrainerStub(LabelProportionMixin):
    local_rank = 0

    def __init__(self, base: Path, run_config: dict):
        base.mkdir(parents=True, exist_ok=True)
        self.output_folder_base, self.fold = str(base), 0
        self.fold_folder = base / "fold_0"
        self.run_config = RunConfig.from_dict(run_config)
        self.logged = []

    def print_to_log_file(self, *args, **kwargs):
        self.logged.append(" ".join(map(str, args)))


class LoopStub(PseudoLabelLoopMixin, TrainerStub):
    default_selection = "max_probability"


def _record(stub) -> None:
    path = stub.fold_folder_path / TRAINED_SETTINGS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": stub.trained_settings()}))


@pytest.mark.parametrize("stub_class", [TrainerStub, LoopStub])
@pytest.mark.parametrize("change, refused", [
    ({"label_proportion": 1.0}, ["label_proportion"]),
    ({"label_seed": 3}, ["label_seed"]),
    ({"num_bins": 1}, ["num_bins"]),
    ({"label_proportion": 0.3, "label_seed": 1}, ["label_proportion", "label_seed"]),
    ({"num_epochs": 20}, []),
    ({"num_iterations_per_epoch": 50, "save_every": 1}, []),
    ({"gamma_max": 0.5}, []),           # not used by a training without relabeling / by round 0
])
def test_resume_keeps_what_the_model_learns_from(tmp_path, stub_class, change, refused):
    _record(stub_class(tmp_path / "m", TRAINED))
    stub = stub_class(tmp_path / "m", {**TRAINED, **change})
    record = stub.fold_folder_path / TRAINED_SETTINGS_FILE
    if refused:
        with pytest.raises(StippleInputError) as e:
            stub._check_recorded_settings()
        message = str(e.value)
        assert str(record) in message and str(tmp_path / "m" / RUN_CONFIG_FILE) in message
        for key in refused:
            assert f"{key} was {TRAINED.get(key, RunConfig().to_json()[key])!r}, now {change[key]!r}" in message
        assert "{" not in message.split("(", 1)[1]     # keys and values, not two whole dicts
    else:
        stub._check_recorded_settings()
        for key, value in change.items():
            assert any(f"{key} " in line and f"-> {value!r} on resume" in line for line in stub.logged), stub.logged


def test_trainer_change_is_refused(tmp_path):
    stub = TrainerStub(tmp_path / "m", TRAINED)
    recorded = {**stub.trained_settings(), "trainer": "nnUNetTrainer_LabelProportion"}
    with pytest.raises(StippleInputError, match="trainer was 'nnUNetTrainer_LabelProportion', now 'TrainerStub'"):
        stub.check_resume_settings(recorded, tmp_path / "record.json")


def test_unrecorded_fold_is_logged_not_refused(tmp_path):
    stub = TrainerStub(tmp_path / "m", TRAINED)
    stub._check_recorded_settings()
    assert "cannot be checked" in stub.logged[-1]


def test_damaged_record_names_the_file(tmp_path):
    stub = TrainerStub(tmp_path / "m", TRAINED)
    record = stub.fold_folder_path / TRAINED_SETTINGS_FILE
    record.parent.mkdir(parents=True)
    record.write_text("{")
    with pytest.raises(StippleInputError, match="stipple_run_trained.json is damaged"):
        stub._check_recorded_settings()


@pytest.mark.parametrize("finished, change, refused", [
    ([], {"selection": "all_predicted"}, False),
    ([0], {"selection": "all_predicted"}, False),        # the typo fixed after round 0: m0 is kept
    ([0], {"gamma_max": 0.5, "rounds": 2}, False),
    ([0, 1], {"selection": "all_predicted"}, True),
    ([0, 1], {"gamma_max": 0.5}, True),
    ([0, 1], {"rounds": 2}, True),
    ([0, 1], {"num_epochs": 20}, False),
    ([0], {"label_proportion": 0.3}, True),
])
def test_loop_state_allows_fixing_what_finished_rounds_did_not_use(tmp_path, finished, change, refused):
    first = LoopStub(tmp_path / "m", TRAINED)
    first._save_state({"settings": first.trained_settings(), "finished_rounds": finished})
    again = LoopStub(tmp_path / "m", {**TRAINED, **change})
    if refused:
        with pytest.raises(StippleInputError, match="refusing to resume"):
            again._load_state()
    else:
        state = again._load_state()
        assert state["finished_rounds"] == finished
        assert state["settings"] == again.trained_settings()


def test_loop_rejects_a_prior_driven_selection_without_a_prior(tmp_path):
    stub = LoopStub(tmp_path / "m", {**TRAINED, "selection": "prior_confidence"})
    with pytest.raises(StippleInputError, match="trains without a spatial prior"):
        stub._check_selection()
    LoopStub(tmp_path / "m", TRAINED)._check_selection()
