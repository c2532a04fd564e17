"""Mean teacher (Tarvainen & Valpola, NeurIPS 2017) as an nnU-Net trainer: ``-tr nnUNetTrainer_MeanTeacher``."""
from __future__ import annotations

import torch

from nnunet_stipple.trainers.teacher_student import TeacherStudentMixin
from nnunet_stipple.trainers.label_proportion import nnUNetTrainer_LabelProportion


class nnUNetTrainer_MeanTeacher(TeacherStudentMixin, nnUNetTrainer_LabelProportion):
    """nnU-Net on the labeled subset plus a consistency loss between the student and its EMA teacher on unlabeled
    patches (:mod:`nnunet_stipple.trainers.teacher_student`). The teacher predicts: the paper evaluates the
    EMA model, which it finds the more accurate of the two (its code also selects models on the EMA's accuracy)."""
    prediction_network = "teacher"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._setup_teacher_student()
