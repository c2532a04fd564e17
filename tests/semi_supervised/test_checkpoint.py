"""Which network the checkpoint's network_weights hold (the one that predicts), what --c gets back, and the
weights nnU-Net's validation runs with: TeacherStudentMixin on a stub with nnU-Net's checkpoint contract."""
from __future__ import annotations

import pytest
import torch

from nnunet_stipple.trainers.teacher_student import CHECKPOINT_KEY, TeacherStudentMixin
from nnunet_stipple.semi_supervised.settings import SemiSupervisedSettings


class NnUNetCheckpointStub:
    """nnUNetTrainer's save/load contract: network_weights <-> self.network, plus other keys."""
    local_rank, disable_checkpointing = 0, False

    def __init__(self, student_value: float, teacher_value: float):
        self.network = torch.nn.Linear(2, 2)
        self.teacher = torch.nn.Linear(2, 2)
        with torch.no_grad():
            for p in self.network.parameters():
                p.fill_(student_value)
            for p in self.teacher.parameters():
                p.fill_(teacher_value)
        self.device = torch.device("cpu")
        self.ssl = SemiSupervisedSettings()
        self.ssl_step = 7
        self._student_stash = None
        self.logged = []

    def save_checkpoint(self, filename):
        torch.save({"network_weights": self.network.state_dict(), "current_epoch": 3}, filename)

    def load_checkpoint(self, filename_or_checkpoint):
        ckpt = torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False)
        self.network.load_state_dict(ckpt["network_weights"])

    def print_to_log_file(self, *args, **kwargs):
        self.logged.append(" ".join(map(str, args)))


class MeanTeacherStub(TeacherStudentMixin, NnUNetCheckpointStub):
    prediction_network = "teacher"


class UAMTStub(TeacherStudentMixin, NnUNetCheckpointStub):
    prediction_network = "student"
    uses_uncertainty = True


def _value(module):
    return float(module.weight.detach()[0, 0])


@pytest.mark.parametrize("stub, predicting", [(MeanTeacherStub, 1.0), (UAMTStub, 0.0)])
def test_checkpoint_holds_the_predicting_network_and_what_resume_needs(tmp_path, stub, predicting):
    trainer = stub(student_value=0.0, teacher_value=1.0)
    path = tmp_path / "checkpoint_latest.pth"
    trainer.save_checkpoint(str(path))
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 3                                      # nnU-Net's keys are kept
    assert float(ckpt["network_weights"]["weight"][0, 0]) == predicting  # what nnUNetv2_predict loads
    extra = ckpt[CHECKPOINT_KEY]
    assert float(extra["other_network_weights"]["weight"][0, 0]) == 1.0 - predicting
    assert extra["step"] == 7 and extra["prediction_network"] == stub.prediction_network
    assert ("mc_passes" in extra["settings"]) == stub.uses_uncertainty
    assert [p.name for p in tmp_path.iterdir()] == [path.name]           # no temporary file left
    # --c: the student is optimised again, the teacher and the ramp-up position come back
    resumed = stub(student_value=5.0, teacher_value=5.0)
    resumed.ssl_step = 0
    resumed.load_checkpoint(str(path))
    assert _value(resumed.network) == 0.0 and _value(resumed.teacher) == 1.0 and resumed.ssl_step == 7


def test_a_checkpoint_without_teacher_starts_the_teacher_from_its_network(tmp_path):
    path = tmp_path / "plain.pth"
    NnUNetCheckpointStub(2.0, 2.0).save_checkpoint(str(path))
    trainer = MeanTeacherStub(student_value=0.0, teacher_value=1.0)
    trainer.load_checkpoint(str(path))
    assert _value(trainer.network) == 2.0 and _value(trainer.teacher) == 2.0 and trainer.ssl_step == 0
    assert "has no teacher" in trainer.logged[-1]


@pytest.mark.parametrize("stub, during", [(MeanTeacherStub, 1.0), (UAMTStub, 0.0)])
def test_validation_runs_with_the_predicting_weights_then_training_goes_on_with_the_student(stub, during):
    trainer = stub(student_value=0.0, teacher_value=1.0)
    trainer._use_prediction_weights()
    assert _value(trainer.network) == during
    trainer._use_prediction_weights()                                     # idempotent: the stash is the student's
    trainer._restore_student_weights()
    assert _value(trainer.network) == 0.0 and _value(trainer.teacher) == 1.0
