"""The teacher-student settings (stipple_run.json's semi_supervised object): defaults, checks naming the file and
the key, what a resume must keep, and the refusal where nothing is unlabeled. Unit level, on stubs."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.run_config import RUN_CONFIG_FILE, TRAINED_SETTINGS_FILE, RunConfig
from nnunet_stipple.semi_supervised.settings import SemiSupervisedSettings
from nnunet_stipple.trainers.teacher_student import TeacherStudentMixin
from nnunet_stipple.semi_supervised.unlabeled_loader import unlabeled_batch_size
from nnunet_stipple.trainers.label_proportion import LabelProportionMixin


def test_defaults_are_the_papers_code_values():
    s = SemiSupervisedSettings.from_dict(None, "x")
    assert (s.ema_decay, s.consistency_weight, s.consistency_rampup, s.unlabeled_batch_ratio) == (0.99, 0.1, 1.0, 1.0)
    assert (s.teacher_noise_std, s.teacher_noise_clip) == (0.1, 0.2)
    assert (s.mc_passes, s.mc_dropout, s.uncertainty_threshold_start) == (8, 0.5, 0.75)
    assert "mc_passes" not in s.to_json(uncertainty=False) and s.to_json(uncertainty=True)["mc_passes"] == 8


@pytest.mark.parametrize("d, message", [
    ({"ema_decay": 1.0}, "semi_supervised.ema_decay must be a number in [0, 1)"),
    ({"ema_decay": "0.99"}, "semi_supervised.ema_decay"),
    ({"consistency_weight": -0.1}, "semi_supervised.consistency_weight"),
    ({"consistency_rampup": 1.5}, "semi_supervised.consistency_rampup must be a number in [0, 1]"),
    ({"unlabeled_batch_ratio": 0}, "semi_supervised.unlabeled_batch_ratio must be a number in (0, 8]"),
    ({"mc_passes": 1}, "semi_supervised.mc_passes must be an integer >= 2"),
    ({"mc_passes": 8.0}, "semi_supervised.mc_passes must be an integer >= 2"),
    ({"mc_dropout": 1}, "semi_supervised.mc_dropout must be a number in [0, 1)"),
    ({"uncertainty_threshold_start": 0}, "semi_supervised.uncertainty_threshold_start"),
    ({"ema_decy": 0.9}, "unknown semi_supervised setting(s) ['ema_decy']"),
])
def test_bad_values_are_refused_naming_file_and_key(d, message):
    with pytest.raises(StippleInputError) as e:
        RunConfig.from_dict({"semi_supervised": d}, "/m/stipple_run.json")
    assert str(e.value).startswith("/m/stipple_run.json: ") and message in str(e.value)


def test_semi_supervised_must_be_an_object():
    with pytest.raises(StippleInputError, match="semi_supervised must be a JSON object"):
        RunConfig.from_dict({"semi_supervised": [0.99]})


def test_ua_mt_keys_are_refused_by_a_trainer_without_uncertainty():
    SemiSupervisedSettings.from_dict({"mc_passes": 4}, "f", uncertainty=True)
    with pytest.raises(StippleInputError, match=r"\['mc_passes'\] for this trainer \(mc_passes, mc_dropout"):
        SemiSupervisedSettings.from_dict({"mc_passes": 4}, "f", uncertainty=False)


@pytest.mark.parametrize("batch, ratio, expected", [(2, 1.0, 2), (8, 0.5, 4), (10, 0.33, 3), (2, 0.25, 1),
                                                     (2, 2.0, 4), (1, 0.1, 1)])
def test_unlabeled_patches_per_iteration(batch, ratio, expected):
    assert unlabeled_batch_size(batch, ratio) == expected


# ---- trainers on stubs -----------------------------------------------------------------------------------------
class PlainStub(LabelProportionMixin):
    """What _read_run_config reads of a trainer."""
    local_rank = 0

    def __init__(self, base: Path):
        self.output_folder_base, self.fold = str(base), 0
        self.logged = []

    def print_to_log_file(self, *args, **kwargs):
        self.logged.append(" ".join(map(str, args)))


class TeacherStudentStub(TeacherStudentMixin, PlainStub):
    def __init__(self, base: Path, run_config: dict, unlabeled=()):
        super().__init__(base)
        base.mkdir(parents=True, exist_ok=True)
        (base / RUN_CONFIG_FILE).write_text(json.dumps(run_config))
        self._read_run_config()
        self.label_manager = SimpleNamespace(has_regions=False)
        self.plans_manager = SimpleNamespace(dataset_name="Dataset991_X")
        self._unlabeled = list(unlabeled)
        self._fold_split = (["a", "b"], ["v"])
        self._setup_teacher_student()

    def unlabeled_cases(self):
        return self._unlabeled


class UAMTStub(TeacherStudentStub):
    uses_uncertainty = True


def test_a_trainer_without_teacher_refuses_semi_supervised_settings(tmp_path):
    (tmp_path / RUN_CONFIG_FILE).write_text(json.dumps({"semi_supervised": {"ema_decay": 0.9}}))
    with pytest.raises(StippleInputError) as e:
        PlainStub(tmp_path)._read_run_config()
    assert str(tmp_path / RUN_CONFIG_FILE) in str(e.value) and "PlainStub does not use them" in str(e.value)
    # the teacher-student trainers read them (defaults filled in)
    stub = UAMTStub(tmp_path / "ua", {"semi_supervised": {"mc_passes": 4}})
    assert stub.ssl.mc_passes == 4 and stub.ssl.ema_decay == 0.99
    with pytest.raises(StippleInputError, match="mc_passes"):
        TeacherStudentStub(tmp_path / "mt", {"semi_supervised": {"mc_passes": 4}})


@pytest.mark.parametrize("change, refused", [
    ({"semi_supervised": {"ema_decay": 0.9}}, ["semi_supervised"]),
    ({"unlabeled_sources": ["hidden"]}, ["unlabeled_sources"]),
    ({"num_epochs": 50}, []),
])
def test_resume_keeps_the_teacher_student_settings(tmp_path, change, refused):
    trained = {"label_proportion": 0.5, "num_epochs": 10}
    first = TeacherStudentStub(tmp_path / "m", trained)
    record = first.fold_folder_path / TRAINED_SETTINGS_FILE
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"settings": first.trained_settings()}))
    assert first.trained_settings()["semi_supervised"]["ema_decay"] == 0.99
    assert first.trained_settings()["prediction_network"] == "teacher"
    again = TeacherStudentStub(tmp_path / "m", {**trained, **change})
    if refused:
        with pytest.raises(StippleInputError) as e:
            again._check_recorded_settings()
        assert all(f"{k} was" in str(e.value) for k in refused)
    else:
        again._check_recorded_settings()
        assert any("num_epochs 10 -> 50" in line for line in again.logged)


def test_nothing_unlabeled_is_refused_with_what_to_do(tmp_path):
    stub = TeacherStudentStub(tmp_path / "m", {"label_proportion": 1.0}, unlabeled=[])
    with pytest.raises(StippleInputError) as e:
        stub._checked_unlabeled_cases()
    msg = str(e.value)
    assert "has none" in msg and "label_proportion is 1" in msg and "imagesUnlabeled" in msg
    assert "nnUNetTrainer_LabelProportion" in msg


def test_validation_cases_never_enter_the_unlabeled_pool(tmp_path):
    from nnunet_stipple.pseudo_labeling.unlabeled import UnlabeledCase
    ok = [UnlabeledCase("b", tmp_path, True)]
    assert TeacherStudentStub(tmp_path / "m", {}, unlabeled=ok)._checked_unlabeled_cases() == ok
    stub = TeacherStudentStub(tmp_path / "n", {}, unlabeled=ok + [UnlabeledCase("v", tmp_path, False)])
    with pytest.raises(StippleInputError, match=r"Validation cases \['v'\]"):
        stub._checked_unlabeled_cases()


# ---- SASSNet and adversarial confidence ------------------------------------------------------------------------
def test_sassnet_and_adversarial_defaults_are_their_papers():
    from nnunet_stipple.semi_supervised.settings import AdversarialConfidenceSettings, SASSNetSettings
    s = SASSNetSettings.from_dict(None, "x")
    assert (s.sdm_weight, s.adversarial_weight, s.adversarial_rampup, s.discriminator_lr) == (0.3, 0.001, 1.0, 1e-4)
    assert (s.discriminator_features, s.discriminator_dropout, s.unlabeled_batch_ratio) == (64, 0.5, 1.0)
    a = AdversarialConfidenceSettings.from_dict({}, "x")
    assert (a.adversarial_weight, a.semi_weight, a.confidence_threshold, a.semi_start) == (0.01, 0.1, 0.2, 0.25)


@pytest.mark.parametrize("d, message", [
    ({"sdm_weight": -1}, "semi_supervised.sdm_weight must be a number in [0, inf)"),
    ({"discriminator_features": 8.5}, "semi_supervised.discriminator_features must be an integer >= 1"),
    ({"discriminator_lr": 0}, "semi_supervised.discriminator_lr must be a number in (0, 1]"),
    ({"confidence_threshold": 1.0}, "semi_supervised.confidence_threshold must be a number in [0, 1)"),
    ({"semi_start": 2}, "semi_supervised.semi_start must be a number in [0, 1]"),
    ({"ema_decay": 0.9, "sdm_weight": 0.3}, "belong to different trainers"),
    ({"sdm_wieght": 0.3}, "unknown semi_supervised setting(s) ['sdm_wieght']"),
])
def test_run_config_checks_keys_against_the_trainer_families(d, message):
    with pytest.raises(StippleInputError) as e:
        RunConfig.from_dict({"semi_supervised": d}, "/m/stipple_run.json")
    assert str(e.value).startswith("/m/stipple_run.json: ") and message in str(e.value)


@pytest.mark.parametrize("d", [{"sdm_weight": 0.5, "unlabeled_batch_ratio": 2}, {"semi_start": 0.0},
                               {"adversarial_weight": 0.1}, {"ema_decay": 0.9}])
def test_run_config_accepts_each_family(d):
    assert RunConfig.from_dict({"semi_supervised": d}).semi_supervised == d


def test_a_trainer_refuses_another_familys_keys():
    from nnunet_stipple.semi_supervised.settings import AdversarialConfidenceSettings, SASSNetSettings
    with pytest.raises(StippleInputError, match=r"unknown semi_supervised setting\(s\) \['ema_decay'\]"):
        SASSNetSettings.from_dict({"ema_decay": 0.9}, "f")
    with pytest.raises(StippleInputError, match=r"\['sdm_weight'\] for this trainer"):
        AdversarialConfidenceSettings.from_dict({"sdm_weight": 0.3}, "f")
