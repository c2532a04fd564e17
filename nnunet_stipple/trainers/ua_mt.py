"""UA-MT (Yu, Wang, Li, Fu, Heng: "Uncertainty-aware Self-ensembling Model for Semi-supervised 3D Left Atrium
Segmentation", MICCAI 2019; the STIPPLE paper's "Consistency [22]") as an nnU-Net trainer: ``-tr nnUNetTrainer_UAMT``.

Mean teacher whose consistency only counts the voxels where the teacher is certain: T stochastic teacher passes
(``mc_passes``, 8), each with fresh clipped Gaussian input noise and Monte-Carlo channel dropout; uncertainty = the
entropy of their mean softmax; mask = uncertainty < H(t), H ramping from 0.75 ln K to ln K over the training
(K classes: the paper's code has K = 2 and ln 2). Values from the paper's public code (see
:mod:`nnunet_stipple.semi_supervised.settings`).

Stochasticity: nnU-Net's U-Nets have no dropout. The paper's V-Net has ``Dropout3d(p=0.5)`` on its bottleneck and
before its output convolution, active in both student and teacher during training (both are in train mode in its
code) and off at test time. The same dropout is added here by forward hooks on the same two places of nnU-Net's
network (:func:`~nnunet_stipple.semi_supervised.consistency.add_mc_dropout`), on student and teacher, only in
training mode: the parameters, the checkpoint and the predicting network are nnU-Net's standard ones, so
``nnUNetv2_predict`` builds and runs it unchanged.

The student predicts: the paper's test script loads the student's weights (``model.state_dict()``).
"""
from __future__ import annotations

import torch

from nnunet_stipple.semi_supervised.consistency import add_mc_dropout, certain_mask, predictive_entropy, \
    uncertainty_threshold
from nnunet_stipple.trainers.teacher_student import TeacherStudentMixin
from nnunet_stipple.priors.prior_module import unwrap_network
from nnunet_stipple.trainers.label_proportion import nnUNetTrainer_LabelProportion


class nnUNetTrainer_UAMT(TeacherStudentMixin, nnUNetTrainer_LabelProportion):
    """Mean teacher with the consistency masked by the teacher's Monte-Carlo-dropout uncertainty."""
    prediction_network = "student"
    uses_uncertainty = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._setup_teacher_student()

    def initialize(self):
        super().initialize()
        for network in (unwrap_network(self.network), self.teacher):
            add_mc_dropout(network, self.ssl.mc_dropout)

    def threshold(self) -> float:
        return uncertainty_threshold(self.ssl_step, self.total_steps, self.label_manager.num_segmentation_heads,
                                     self.ssl.uncertainty_threshold_start)

    def teacher_targets(self, unlabeled: torch.Tensor):
        self.teacher.train()   # dropout on in every teacher pass, as in the paper's code
        target = self.probabilities(self.teacher(self._teacher_view(unlabeled)))
        mean = torch.zeros_like(target)
        for _ in range(self.ssl.mc_passes):
            mean += self.probabilities(self.teacher(self._teacher_view(unlabeled)))
        mean /= self.ssl.mc_passes
        uncertainty = predictive_entropy(mean)
        threshold = self.threshold()
        mask = certain_mask(uncertainty, threshold)
        return target, mask, {"certain_fraction": float(mask.mean()), "threshold": threshold,
                              "uncertainty_mean": float(uncertainty.mean())}
