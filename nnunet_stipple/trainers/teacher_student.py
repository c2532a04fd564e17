"""What mean teacher and UA-MT change in nnU-Net's trainer, hook by hook (:class:`TeacherStudentMixin`).

What all semi-supervised trainers share (settings, the unlabeled loader, the optimizer update, the training-log line,
the checkpoint's extra key) is :class:`~nnunet_stipple.trainers.semi_supervised_base.UnlabeledTrainingMixin`.

* ``__init__`` (via ``_setup_teacher_student``): the ``semi_supervised`` settings of ``stipple_run.json``, checked.
* ``initialize``: nnU-Net's network is the student; the teacher is a copy of it (no gradients, deep supervision
  off: the consistency is computed on the full-resolution output only, see below).
* ``on_train_start``: the unlabeled cases and their loader (the base mixin).
* ``train_step``: nnU-Net's labeled batch (B patches, loss exactly nnU-Net's: same batch, same deep-supervised
  Dice + CE) and U = ``unlabeled_batch_ratio`` * B unlabeled patches go through the student in one forward (nnU-Net's
  instance norms are per sample, so the labeled outputs are those of a labeled-only forward); the teacher sees the
  same augmented unlabeled patches plus clipped Gaussian noise; loss = nnU-Net's + lambda(t) * MSE between student and
  teacher probabilities (UA-MT: on the voxels the teacher is certain about); then the EMA update of the teacher.
  nnU-Net's ``train_loss`` is that total; a "teacher-student:" line of the training log gives the supervised and
  consistency parts, lambda (and UA-MT's certain fraction and threshold) each epoch. The teacher is not compiled
  (nnU-Net compiles the student on CUDA).
* ``on_validation_epoch_*``, ``perform_actual_validation``: run with the weights of the network that predicts
  (``prediction_network``), so nnU-Net's checkpoint_best and final validation judge the model that is shipped.
* ``save_checkpoint`` / ``load_checkpoint``: nnU-Net's checkpoint, whose ``network_weights`` are the predicting
  network's (``nnUNetv2_predict``, export and install use them unchanged), plus one key :data:`CHECKPOINT_KEY`
  with the other network's weights and the step counter of the EMA warm-up and the ramp-ups (what ``--c`` needs).

Consistency on the full-resolution output only: both papers put it on the network's prediction, which for
nnU-Net is the full-resolution head (the only one ``nnUNetv2_predict`` uses); the coarser deep-supervision heads
are auxiliary outputs trained by the labels, and leaving them out spares the teacher's passes their cost.
"""
from __future__ import annotations

import copy
from typing import Optional, Tuple

import torch
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast

from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.priors.prior_module import unwrap_network
from nnunet_stipple.semi_supervised.consistency import consistency_mse, ema_update, sigmoid_rampup, teacher_input
from nnunet_stipple.semi_supervised.settings import SemiSupervisedSettings
from nnunet_stipple.trainers.semi_supervised_base import UnlabeledTrainingMixin

CHECKPOINT_KEY = "stipple_teacher_student"
PREDICTION_NETWORKS = ("student", "teacher")


class TeacherStudentMixin(UnlabeledTrainingMixin):
    """Mix in before ``nnUNetTrainer_LabelProportion``; call :meth:`_setup_teacher_student` in ``__init__``."""
    prediction_network = "teacher"        # whose weights are network_weights (what nnUNetv2_predict uses)
    uses_uncertainty = False              # UA-MT's uncertainty mask (and its settings)
    checkpoint_key = CHECKPOINT_KEY
    log_prefix = "teacher-student"

    def _setup_teacher_student(self) -> None:
        assert self.prediction_network in PREDICTION_NETWORKS, self.prediction_network
        self._setup_unlabeled_training(SemiSupervisedSettings.from_dict(
            self.run_config.semi_supervised, self._settings_source(), self.uses_uncertainty))
        if self.uses_uncertainty and self.label_manager.has_regions:
            raise StippleInputError(f"{type(self).__name__}: UA-MT's uncertainty is the entropy of a softmax over the "
                                    f"classes; this dataset trains regions (sigmoids). Use nnUNetTrainer_MeanTeacher.")
        self.teacher: Optional[torch.nn.Module] = None
        self._student_stash: Optional[dict] = None

    # ---- what the fold is trained with ---------------------------------------------------------------------
    def settings_json(self) -> dict:
        return self.ssl.to_json(self.uses_uncertainty)

    def trained_settings(self) -> dict:
        return {**super().trained_settings(), "prediction_network": self.prediction_network}

    def describe_method(self) -> str:
        return f"{self.prediction_network} predicts; "

    # ---- networks -----------------------------------------------------------------------------------------
    def initialize(self):
        super().initialize()
        self.teacher = copy.deepcopy(unwrap_network(self.network))
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.decoder.deep_supervision = False

    def consistency_weight(self) -> float:
        """lambda(t) = consistency_weight * exp(-5 (1 - t)^2) over the first ``consistency_rampup`` of training."""
        return self.ssl.consistency_weight * sigmoid_rampup(self.ssl_step, self.ssl.consistency_rampup * self.total_steps)

    def teacher_targets(self, unlabeled: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor], dict]:
        """The teacher's probabilities on its noisy view of the unlabeled patches, the mask of voxels that enter the
        consistency (None: all) and numbers for the log. Mean teacher: one pass, no dropout."""
        self.teacher.eval()
        return self.probabilities(self.teacher(self._teacher_view(unlabeled))), None, {}

    def _teacher_view(self, unlabeled: torch.Tensor) -> torch.Tensor:
        return teacher_input(unlabeled, self.ssl.teacher_noise_std, self.ssl.teacher_noise_clip)

    # ---- training step ------------------------------------------------------------------------------------------
    def train_step(self, batch: dict) -> dict:
        # nnUNetTrainer.train_step (nnunetv2 2.8.1) with the unlabeled patches and the consistency term added
        data, target = self.labeled_batch_on_device(batch)
        unlabeled = self.next_unlabeled_batch()
        n = data.shape[0]
        weight = self.consistency_weight()
        amp = autocast(self.device.type, enabled=True) if self.device.type == 'cuda' else dummy_context()
        with torch.no_grad(), amp:
            teacher_probs, mask, info = self.teacher_targets(unlabeled)
        self.optimizer.zero_grad(set_to_none=True)
        with amp:
            output = self.network(torch.cat((data, unlabeled)))
            deep = isinstance(output, (list, tuple))
            outputs = list(output) if deep else [output]
            supervised = self.loss([o[:n] for o in outputs] if deep else outputs[0][:n], target)
        consistency = consistency_mse(self.probabilities(outputs[0][n:]), teacher_probs, mask)
        loss = supervised + weight * consistency
        self.optimizer_step(loss, self.optimizer, self.network.parameters(), self.grad_scaler)
        ema_update(self.teacher, unwrap_network(self.network), self.ssl.ema_decay, self.ssl_step)
        self.ssl_step += 1
        return {'loss': loss.detach().cpu().numpy(), 'supervised_loss': float(supervised.detach().cpu()),
                'consistency_loss': float(consistency.detach().cpu()), 'consistency_weight': weight, **info}

    # ---- the predicting network in validation and checkpoints -------------------------------------------------
    def _use_prediction_weights(self) -> None:
        if self.prediction_network == "teacher" and self.teacher is not None and self._student_stash is None:
            net = unwrap_network(self.network)
            self._student_stash = {k: v.detach().clone() for k, v in net.state_dict().items()}
            net.load_state_dict(self.teacher.state_dict())

    def _restore_student_weights(self) -> None:
        if self._student_stash is not None:
            unwrap_network(self.network).load_state_dict(self._student_stash)
            self._student_stash = None

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._use_prediction_weights()

    def on_validation_epoch_end(self, val_outputs):
        self._restore_student_weights()
        super().on_validation_epoch_end(val_outputs)

    def perform_actual_validation(self, save_probabilities: bool = False):
        self._use_prediction_weights()
        try:
            super().perform_actual_validation(save_probabilities)
        finally:
            self._restore_student_weights()

    def has_checkpoint_extra(self) -> bool:
        return self.teacher is not None

    def checkpoint_extra(self, checkpoint: dict) -> dict:
        # nnU-Net saved the student (the network it optimises): the predicting network's weights become
        # network_weights, the other's go under CHECKPOINT_KEY
        student = checkpoint["network_weights"]
        teacher = {k: v.detach().cpu().clone() for k, v in self.teacher.state_dict().items()}
        other = "student" if self.prediction_network == "teacher" else "teacher"
        checkpoint["network_weights"] = teacher if self.prediction_network == "teacher" else student
        return {"prediction_network": self.prediction_network, "other_network": other,
                "other_network_weights": student if other == "student" else teacher}

    def restore_checkpoint_extra(self, extra, checkpoint: dict, source: str) -> None:
        net = unwrap_network(self.network)
        if extra is None:   # a checkpoint of a plain nnU-Net training: start the teacher from its weights
            self.teacher.load_state_dict(net.state_dict())
            self.print_to_log_file(f"{source} checkpoint has no teacher: the teacher starts as a copy of its network.")
            return
        if extra["prediction_network"] == "teacher":
            self.teacher.load_state_dict(checkpoint["network_weights"])
            net.load_state_dict(extra["other_network_weights"])
        else:
            self.teacher.load_state_dict(extra["other_network_weights"])
