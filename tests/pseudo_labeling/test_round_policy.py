"""Round policies (nnunet_stipple.pseudo_labeling.round_policy) and the loop's agreement filter: the measures against
hand-computed label maps, keep/drop at the threshold, settings validation, the presets, round_log.json and the
resume (values recomputed from the stored pseudo-labels, nothing predicted)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.pseudo_labeling.loop import PseudoLabelLoopMixin
from nnunet_stipple.pseudo_labeling.round_policy import AGREEMENT_MEASURES, ROUND_POLICIES, agreement_value, \
    changed_fraction, mean_dice
from nnunet_stipple.pseudo_labeling.unlabeled import UnlabeledCase
from nnunet_stipple.run_config import RUN_CONFIG_FILE, RunConfig
from nnunet_stipple.trainers.label_proportion import LabelProportionMixin

A = np.array([[0, 1, 1, 0],
              [2, 2, 0, 0]])

# previous, current, changed_fraction, mean Dice over classes (1, 2) present in either
MEASURE_CASES = [
    ("identical", A, A.copy(), 0.0, 1.0),
    # one class-1 voxel lost: 1 changed / 3 foreground now; Dice 1: 2*1/(2+1) = 2/3, class 2: 1 -> 5/6
    ("one voxel lost", A, np.array([[0, 1, 0, 0], [2, 2, 0, 0]]), 1 / 3, (2 / 3 + 1) / 2),
    # class 2 swapped for class 1: 2 changed / 4 foreground; Dice 1: 2*2/(2+4) = 2/3, class 2: 0/(2+0) = 0
    ("class swapped", A, np.array([[0, 1, 1, 0], [1, 1, 0, 0]]), 2 / 4, (2 / 3 + 0) / 2),
    # class 2 absent from both: only class 1 counts (Dice 1.0, not the mean with a 0 or a 1 for class 2)
    ("class absent from both", np.array([[1, 1, 0, 0]]), np.array([[1, 1, 0, 0]]), 0.0, 1.0),
    ("absent from both, one moved", np.array([[1, 1, 0, 0]]), np.array([[0, 1, 1, 0]]), 2 / 2, 2 * 1 / 4),
    # no organ in either round: they agree
    ("both empty", np.zeros((2, 3), int), np.zeros((2, 3), int), 0.0, 1.0),
    # the later round lost every organ: denominator 1, so 3 changed voxels give 3.0 (dropped by any sane threshold)
    ("vanished", np.array([[1, 1, 2]]), np.array([[0, 0, 0]]), 3.0, 0.0),
]


@pytest.mark.parametrize("name, previous, current, changed, dice", MEASURE_CASES, ids=[c[0] for c in MEASURE_CASES])
def test_measures_against_hand_computed_label_maps(name, previous, current, changed, dice):
    assert changed_fraction(previous, current, [1, 2]) == pytest.approx(changed)
    assert mean_dice(previous, current, [1, 2]) == pytest.approx(dice)
    assert agreement_value("changed_fraction", previous, current, [1, 2]) == pytest.approx(changed)
    assert agreement_value("dice", previous, current, [1, 2]) == pytest.approx(dice)


def test_measures_refuse_label_maps_of_different_shape():
    with pytest.raises(StippleInputError, match="differ in shape"):
        changed_fraction(np.zeros((2, 2)), np.zeros((2, 3)), [1])


@pytest.mark.parametrize("measure, value, threshold, kept", [
    ("changed_fraction", 0.1, 0.1, True),        # at the threshold: kept
    ("changed_fraction", 0.1000001, 0.1, False),
    ("changed_fraction", 0.0, 0.0, True),
    ("dice", 0.8, 0.8, True),                    # at the threshold: kept
    ("dice", 0.7999999, 0.8, False),
    ("dice", 1.0, 1.0, True),
])
def test_keep_rule_at_the_threshold(measure, value, threshold, kept):
    assert AGREEMENT_MEASURES[measure].keeps(value, threshold) is kept


# ---- settings ---------------------------------------------------------------------------------------------------
def _read(tmp_path: Path, settings: dict) -> RunConfig:
    (tmp_path / RUN_CONFIG_FILE).write_text(json.dumps(settings))
    return RunConfig.for_output_folder(str(tmp_path))


@pytest.mark.parametrize("settings, match", [
    ({"round_policy": "flare"}, r"round_policy must be one of gamma_schedule, agreement .*got 'flare'"),
    ({"round_policy": 3}, "round_policy must be one of"),
    ({"round_policy": "agreement", "agreement_measure": "iou"}, "agreement_measure must be one of changed_fraction, "
                                                                "dice .*got 'iou'"),
    ({"round_policy": "agreement", "agreement_measure": "dice", "agreement_threshold": 1.5},
     r"agreement_threshold for agreement_measure 'dice' must be a number in \[0, 1\] \(a case is kept when its "
     r"value is >= the threshold\), got 1.5"),
    ({"round_policy": "agreement", "agreement_threshold": -0.1},
     r"agreement_threshold for agreement_measure 'changed_fraction' must be a number in \[0, inf\) \(a case is kept "
     r"when its value is <= the threshold\)"),
    ({"round_policy": "agreement", "agreement_threshold": "0.1"}, "agreement_threshold .* got '0.1'"),
    ({"round_policy": "agreement", "agreement_threshold": True}, "agreement_threshold .* got True"),
    ({"round_policy": "agreement", "agreement_threshold": float("nan")}, "agreement_threshold .* got nan"),
    ({"round_policy": "gamma_schedule", "agreement_threshold": 0.2},
     "agreement_threshold only apply to round_policy 'agreement'"),
    ({"round_policy": "gamma_schedule", "agreement_measure": "dice"},
     "agreement_measure only apply to round_policy 'agreement'"),
    ({"round_policy": "agreement", "retrain": "finetune"}, "retrains every round from scratch; retrain 'finetune'"),
    ({"round_policy": "agreement", "selection": "max_probability"},
     "whole-case pseudo-labels; selection 'max_probability' keeps a fraction .*all_predicted, flare22"),
])
def test_bad_policy_settings_are_refused_naming_the_file(tmp_path, settings, match):
    with pytest.raises(StippleInputError, match=match) as e:
        _read(tmp_path, settings)
    assert str(tmp_path / RUN_CONFIG_FILE) in str(e.value)


@pytest.mark.parametrize("settings", [
    {"round_policy": "agreement"},
    {"round_policy": "agreement", "agreement_measure": "dice", "agreement_threshold": 0.95},
    {"round_policy": "agreement", "agreement_threshold": 0.02, "selection": "all_predicted", "rounds": 2},
    {"round_policy": "gamma_schedule", "selection": "max_probability", "retrain": "finetune"},
    {"agreement_measure": "dice", "agreement_threshold": 0.9},      # policy None: the trainer's default decides
])
def test_valid_policy_settings_are_kept(tmp_path, settings):
    assert {k: _read(tmp_path, settings).to_json()[k] for k in settings} == settings


@pytest.mark.parametrize("settings, policy, rounds", [
    ({"label_proportion": 0.1}, "gamma_schedule", 1),
    ({"label_proportion": 0.7}, "gamma_schedule", 2),
    ({"label_proportion": 0.1}, "agreement", 3),                 # the recipe: three relabeled rounds
    ({"label_proportion": 0.7}, "agreement", 3),
    ({"label_proportion": 0.1, "rounds": 2}, "agreement", 2),    # rounds, when set, wins
])
def test_rounds_of_each_policy(settings, policy, rounds):
    rc = RunConfig(**settings)
    assert rc.rounds_for(policy) == rounds
    assert RunConfig(**settings, round_policy=policy).effective_rounds == rounds


# ---- the loop ------------------------------------------------------------------------------------------------------
class LoopStub(PseudoLabelLoopMixin, LabelProportionMixin):
    """What the loop's policy, filter and round log read; no network, no nnU-Net."""
    default_selection = "max_probability"

    def __init__(self, base: Path, run_config: dict, default_round_policy: str = "gamma_schedule"):
        self.output_folder_base, self.fold = str(base), 0
        self.fold_folder = base / "fold_0"
        self.run_config = RunConfig.from_dict(run_config)
        self.default_round_policy = default_round_policy
        self.label_manager = SimpleNamespace(foreground_labels=[1, 2])
        self.logged = []

    def print_to_log_file(self, *args):
        self.logged.append(" ".join(map(str, args)))


def _flare22_stub(base: Path, run_config: dict) -> LoopStub:
    from nnunet_stipple.trainers import nnUNetTrainer_FLARE22Rounds
    stub = LoopStub(base, run_config, nnUNetTrainer_FLARE22Rounds.default_round_policy)
    stub.default_selection = nnUNetTrainer_FLARE22Rounds.default_selection
    return stub


def test_flare22_trainer_presets(tmp_path):
    from nnunet_stipple.trainers import nnUNetTrainer_FLARE22Rounds, nnUNetTrainer_PseudoLabel
    assert issubclass(nnUNetTrainer_FLARE22Rounds, nnUNetTrainer_PseudoLabel)
    assert nnUNetTrainer_FLARE22Rounds.round0_trainer == "nnUNetTrainer_LabelProportion"
    assert not nnUNetTrainer_FLARE22Rounds.has_spatial_prior
    stub = _flare22_stub(tmp_path, {"label_proportion": 0.1})
    assert stub.round_policy_name == "agreement" and stub.loop_rounds == 3
    assert stub.selection_name == "flare22" and stub.run_config.retrain == "scratch"
    assert stub.agreement_setting() == ("changed_fraction", 0.1)
    stub._check_selection()
    settings = stub.trained_settings()
    assert (settings["round_policy"], settings["agreement_measure"], settings["agreement_threshold"],
            settings["selection"], settings["rounds"]) == ("agreement", "changed_fraction", 0.1, "flare22", 3)


def test_agreement_policy_on_the_plain_loop_trainer_presets_whole_case_labels(tmp_path):
    stub = LoopStub(tmp_path, {"label_proportion": 0.1, "round_policy": "agreement", "agreement_measure": "dice"})
    assert stub.selection_name == "flare22" and stub.loop_rounds == 3 and stub.agreement_setting() == ("dice", 0.9)
    # the paper's policy: as before (nothing of the agreement settings recorded, so older records resume)
    plain = LoopStub(tmp_path, {"label_proportion": 0.1})
    assert plain.selection_name == "max_probability" and plain.loop_rounds == 1
    assert {k: plain.trained_settings()[k] for k in ("round_policy", "agreement_measure", "agreement_threshold")} \
        == {"round_policy": None, "agreement_measure": None, "agreement_threshold": None}


@pytest.mark.parametrize("run_config, match", [
    ({"selection": "max_probability"}, "round_policy 'agreement' trains on whole-case pseudo-labels"),
    ({"retrain": "finetune"}, "retrains every round from scratch"),
])
def test_trainer_default_policy_is_checked_at_start(tmp_path, run_config, match):
    """stipple_run.json alone cannot know nnUNetTrainer_FLARE22Rounds' policy: the trainer checks at start."""
    stub = _flare22_stub(tmp_path, {"label_proportion": 0.1, **run_config})
    with pytest.raises(StippleInputError, match=match):
        stub._check_selection()


def test_agreement_settings_with_a_gamma_schedule_trainer_are_refused_at_start(tmp_path):
    stub = LoopStub(tmp_path, {"label_proportion": 0.1, "agreement_threshold": 0.2})
    with pytest.raises(StippleInputError, match=r"only apply to round_policy 'agreement' \(this trainer's default "
                                                r"policy is 'gamma_schedule'\)"):
        stub._check_selection()


def _write_pseudo_label(stub: LoopStub, t: int, case: str, label: np.ndarray) -> None:
    path = stub.pseudo_label_path(t, case)
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = {str(k): int(np.count_nonzero(label == k)) for k in (0, 1, 2)}
    path.with_suffix(".json").write_text(json.dumps({"case": case, "hidden": False, "gamma": 1.0, "stats": {
        k: {"predicted": v, "selected": v} for k, v in counts.items()}}))
    np.savez(path, label=label.astype(np.int16))


# round 1 and round 2 pseudo-labels of four cases
R1 = np.array([[1] * 10 + [0] * 6])
CASES = {
    "same": (R1, R1),                                                 # 0 changed: kept
    "new_voxel": (R1, np.array([[1] * 10 + [2] + [0] * 5])),          # 1 changed / 11: kept; Dice (1 + 0) / 2
    "one_of_ten": (np.array([[1] * 9 + [0] * 7]), R1),                # 1 changed / 10: exactly 0.1, kept; Dice 18/19
    "two_of_ten": (np.array([[1] * 8 + [0] * 8]), R1),                # 2 / 10 = 0.2: dropped; Dice 16/18
}


def _loop_with_two_rounds(tmp_path: Path, run_config: dict) -> tuple:
    stub = _flare22_stub(tmp_path, {"label_proportion": 0.1, **run_config})
    for case, (r1, r2) in CASES.items():
        _write_pseudo_label(stub, 1, case, r1)
        _write_pseudo_label(stub, 2, case, r2)
    unlabeled = [UnlabeledCase(case, tmp_path, False) for case in CASES]
    return stub, unlabeled


@pytest.mark.parametrize("run_config, kept", [
    ({}, ["same", "new_voxel", "one_of_ten"]),                                 # changed_fraction <= 0.1
    ({"agreement_threshold": 0.0}, ["same"]),
    ({"agreement_threshold": 0.2}, ["same", "new_voxel", "one_of_ten", "two_of_ten"]),
    ({"agreement_measure": "dice", "agreement_threshold": 2 * 9 / 19}, ["same", "one_of_ten"]),   # Dice 18/19
    ({"agreement_measure": "dice", "agreement_threshold": 1.0}, ["same"]),
])
def test_round_log_and_training_set_keep_the_agreeing_cases(tmp_path, run_config, kept):
    stub, unlabeled = _loop_with_two_rounds(tmp_path, run_config)
    # nothing to predict (every pseudo-label is stored), so no checkpoint is needed: what a resume with --c does
    ids = stub.make_pseudo_labels(2, unlabeled)
    assert ids == list(CASES)
    assert stub._round_training_ids(2, ids) == kept
    log = json.loads((stub.round_folder(2) / "round_log.json").read_text())
    ag = log["agreement"]
    assert ag["compared_with_round"] == 1 and ag["kept"] == len(kept) and ag["dropped"] == len(CASES) - len(kept)
    assert [c for c, v in ag["cases"].items() if v["kept"]] == kept
    assert log["cases"] == len(kept) and log["cases_pseudo_labeled"] == len(CASES)
    # voxels added: the kept cases' only (what round 2 trains on)
    assert log["voxels_added"] == sum(int(np.count_nonzero(CASES[c][1])) for c in kept)
    assert f"kept {len(kept)}, dropped {len(CASES) - len(kept)} of 4" in stub.logged[-1]
    if "agreement_measure" not in run_config:
        values = {c: v["value"] for c, v in ag["cases"].items()}
        assert values == pytest.approx({"same": 0.0, "new_voxel": 1 / 11, "one_of_ten": 0.1, "two_of_ten": 0.2})
    # recomputed identically from the stored npz (a resume)
    stub.make_pseudo_labels(2, unlabeled)
    assert json.loads((stub.round_folder(2) / "round_log.json").read_text()) == log


def test_round_one_is_not_filtered(tmp_path):
    stub, unlabeled = _loop_with_two_rounds(tmp_path, {"agreement_threshold": 0.0})
    ids = stub.make_pseudo_labels(1, unlabeled)
    log = json.loads((stub.round_folder(1) / "round_log.json").read_text())
    assert "agreement" not in log and log["cases"] == len(CASES)
    assert stub._round_training_ids(1, ids) == list(CASES)


def test_gamma_schedule_is_not_filtered(tmp_path):
    stub, unlabeled = _loop_with_two_rounds(tmp_path, {"round_policy": "gamma_schedule", "selection": "all_predicted",
                                                       "rounds": 2})
    ids = stub.make_pseudo_labels(2, unlabeled)
    assert "agreement" not in json.loads((stub.round_folder(2) / "round_log.json").read_text())
    assert stub._round_training_ids(2, ids) == list(CASES)


def test_missing_previous_pseudo_label_is_refused(tmp_path):
    stub, unlabeled = _loop_with_two_rounds(tmp_path, {})
    stub.pseudo_label_path(1, "same").unlink()
    with pytest.raises(StippleInputError, match=r"Round 2: .*round_1/pseudo_labels/same\.npz is missing"):
        stub.make_pseudo_labels(2, unlabeled)


def test_policy_table_matches_the_recipe():
    p = ROUND_POLICIES["agreement"]
    assert (p.default_rounds, p.default_selection, p.filters_by_agreement) == (3, "flare22", True)
    assert ROUND_POLICIES["gamma_schedule"].default_rounds is None
