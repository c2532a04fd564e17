"""What mean teacher and UA-MT change in nnU-Net's trainer, hook by hook (:class:`TeacherStudentMixin`).

* ``__init__`` (via ``_setup_teacher_student``): the ``semi_supervised`` settings of ``stipple_run.json``, checked.
* ``initialize``: nnU-Net's network is the student; the teacher is a copy of it (no gradients, deep supervision
  off: the consistency is computed on the full-resolution output only, see below).
* ``on_train_start``: the unlabeled cases (hidden training cases, ``imagesUnlabeled/``; never validation cases);
  with none it stops before anything trains or is written. Then nnU-Net's loaders, plus
  :class:`~nnunet_stipple.semi_supervised.unlabeled_loader.UnlabeledDataLoader` with nnU-Net's training
  augmentation over the unlabeled cases (labels never read).
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
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast

from nnunet_stipple.atomic import atomic_path
from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.priors.prior_module import unwrap_network
from nnunet_stipple.pseudo_labeling.unlabeled import UnlabeledCase, UnlabeledCasesMixin
from nnunet_stipple.run_config import RUN_CONFIG_FILE
from nnunet_stipple.semi_supervised.consistency import consistency_mse, ema_update, sigmoid_rampup, teacher_input
from nnunet_stipple.semi_supervised.settings import SETTINGS_KEY, SemiSupervisedSettings
from nnunet_stipple.semi_supervised.unlabeled_loader import UnlabeledDataLoader, UnlabeledImages, \
    unlabeled_batch_size
from nnunet_stipple.trainers.data_loader import nnunet_augmenter, nnunet_transforms

CHECKPOINT_KEY = "stipple_teacher_student"
PREDICTION_NETWORKS = ("student", "teacher")


class TeacherStudentMixin(UnlabeledCasesMixin):
    """Mix in before ``nnUNetTrainer_LabelProportion``; call :meth:`_setup_teacher_student` in ``__init__``."""
    prediction_network = "teacher"        # whose weights are network_weights (what nnUNetv2_predict uses)
    uses_uncertainty = False              # UA-MT's uncertainty mask (and its settings)
    takes_semi_supervised_settings = True

    def _setup_teacher_student(self) -> None:
        assert self.prediction_network in PREDICTION_NETWORKS, self.prediction_network
        source = str(Path(self.output_folder_base) / RUN_CONFIG_FILE) if self.output_folder_base else RUN_CONFIG_FILE
        self.ssl = SemiSupervisedSettings.from_dict(self.run_config.semi_supervised, source, self.uses_uncertainty)
        if self.uses_uncertainty and self.label_manager.has_regions:
            raise StippleInputError(f"{type(self).__name__}: UA-MT's uncertainty is the entropy of a softmax over the "
                                    f"classes; this dataset trains regions (sigmoids). Use nnUNetTrainer_MeanTeacher.")
        self.teacher: Optional[torch.nn.Module] = None
        self.ssl_step = 0                  # optimizer steps taken: EMA warm-up and ramp-ups (kept by --c)
        self.dataloader_unlabeled = None
        self._student_stash: Optional[dict] = None

    # ---- what the fold is trained with ---------------------------------------------------------------------
    def trained_settings(self) -> dict:
        return {**super().trained_settings(), SETTINGS_KEY: self.ssl.to_json(self.uses_uncertainty),
                "prediction_network": self.prediction_network}

    def resume_keys(self):
        # the unlabeled pool and the teacher-student settings change what the model learns from
        return tuple(super().resume_keys()) + (SETTINGS_KEY, "unlabeled_sources")

    # ---- networks -----------------------------------------------------------------------------------------
    def initialize(self):
        super().initialize()
        self.teacher = copy.deepcopy(unwrap_network(self.network))
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.decoder.deep_supervision = False

    @property
    def total_steps(self) -> int:
        return self.num_epochs * self.num_iterations_per_epoch

    def consistency_weight(self) -> float:
        """lambda(t) = consistency_weight * exp(-5 (1 - t)^2) over the first ``consistency_rampup`` of training."""
        return self.ssl.consistency_weight * sigmoid_rampup(self.ssl_step, self.ssl.consistency_rampup * self.total_steps)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, C, ...) logits -> probabilities, nnU-Net's nonlinearity (softmax over classes, sigmoid for regions)."""
        logits = logits.float()
        return torch.sigmoid(logits) if self.label_manager.has_regions else torch.softmax(logits, 1)

    def teacher_targets(self, unlabeled: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor], dict]:
        """The teacher's probabilities on its noisy view of the unlabeled patches, the mask of voxels that enter the
        consistency (None: all) and numbers for the log. Mean teacher: one pass, no dropout."""
        self.teacher.eval()
        return self.probabilities(self.teacher(self._teacher_view(unlabeled))), None, {}

    def _teacher_view(self, unlabeled: torch.Tensor) -> torch.Tensor:
        return teacher_input(unlabeled, self.ssl.teacher_noise_std, self.ssl.teacher_noise_clip)

    # ---- data -------------------------------------------------------------------------------------------------
    def _checked_unlabeled_cases(self) -> List[UnlabeledCase]:
        cases = self.unlabeled_cases()
        where = Path(self.output_folder_base) / RUN_CONFIG_FILE
        if not cases:
            raise StippleInputError(
                f"{type(self).__name__} trains on unlabeled patches, and fold {self.fold} has none: label_proportion "
                f"is {self.run_config.label_proportion:g} (no hidden training cases) and unlabeled_sources "
                f"{self.run_config.unlabeled_sources} give no imagesUnlabeled/ images. Lower label_proportion in "
                f"{where}, add images to nnUNet_raw/{self.plans_manager.dataset_name}/imagesUnlabeled, or train "
                f"nnUNetTrainer_LabelProportion (plain nnU-Net) instead.")
        _, val = self.fold_split()
        leaked = sorted({c.case for c in cases} & set(val))
        if leaked:   # cannot happen through collect_unlabeled_cases; validation must stay unseen
            raise StippleInputError(f"Validation cases {leaked[:5]} are among the unlabeled cases; rename the "
                                    f"imagesUnlabeled/ files that clash with them.")
        return cases

    def on_train_start(self):
        cases = self._checked_unlabeled_cases()   # before anything is built, trained or written
        super().on_train_start()
        transforms, initial_patch_size = nnunet_transforms(self, deep_supervision=False)
        u = unlabeled_batch_size(self.batch_size, self.ssl.unlabeled_batch_ratio)
        loader = UnlabeledDataLoader(UnlabeledImages(cases), u, initial_patch_size,
                                     self.configuration_manager.patch_size, self.label_manager, transforms=transforms)
        self.dataloader_unlabeled = nnunet_augmenter(self, loader)
        hidden = sum(c.hidden for c in cases)
        self.print_to_log_file(
            f"{type(self).__name__}: {len(cases)} unlabeled cases ({hidden} hidden training cases, "
            f"{len(cases) - hidden} from imagesUnlabeled), {self.batch_size} labeled + {u} unlabeled patches per "
            f"iteration; {self.prediction_network} predicts; settings {self.ssl.to_json(self.uses_uncertainty)}; "
            f"step {self.ssl_step} of {self.total_steps}")

    def on_train_end(self):
        super().on_train_end()
        finish = getattr(self.dataloader_unlabeled, "_finish", None)
        if finish is not None:
            finish()

    # ---- training step ------------------------------------------------------------------------------------------
    def train_step(self, batch: dict) -> dict:
        # nnUNetTrainer.train_step (nnunetv2 2.8.1) with the unlabeled patches and the consistency term added
        data = batch['data'].to(self.device, non_blocking=True)
        target = batch['target']
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) else \
            target.to(self.device, non_blocking=True)
        unlabeled = next(self.dataloader_unlabeled)['data'].to(self.device, non_blocking=True)
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
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        ema_update(self.teacher, unwrap_network(self.network), self.ssl.ema_decay, self.ssl_step)
        self.ssl_step += 1
        return {'loss': loss.detach().cpu().numpy(), 'supervised_loss': float(supervised.detach().cpu()),
                'consistency_loss': float(consistency.detach().cpu()), 'consistency_weight': weight, **info}

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        keys = [k for k in train_outputs[0] if k != 'loss']
        means = {k: float(np.mean([o[k] for o in train_outputs])) for k in keys}
        self.print_to_log_file("teacher-student: " + ", ".join(f"{k} {v:.4g}" for k, v in means.items()))

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

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        self._restore_student_weights()
        super().on_validation_epoch_end(val_outputs)

    def perform_actual_validation(self, save_probabilities: bool = False):
        self._use_prediction_weights()
        try:
            super().perform_actual_validation(save_probabilities)
        finally:
            self._restore_student_weights()

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0 or self.disable_checkpointing or self.teacher is None:
            return super().save_checkpoint(filename)
        # nnU-Net writes its checkpoint (of the student, the network it optimises) to a temporary file; the
        # predicting network's weights become network_weights, the other's go under CHECKPOINT_KEY, and the result
        # replaces `filename` at once
        with atomic_path(filename) as tmp:
            super().save_checkpoint(str(tmp))
            checkpoint = torch.load(tmp, map_location="cpu", weights_only=False)
            student = checkpoint["network_weights"]
            teacher = {k: v.detach().cpu().clone() for k, v in self.teacher.state_dict().items()}
            other = "student" if self.prediction_network == "teacher" else "teacher"
            checkpoint["network_weights"] = teacher if self.prediction_network == "teacher" else student
            checkpoint[CHECKPOINT_KEY] = {
                "prediction_network": self.prediction_network, "other_network": other,
                "other_network_weights": student if other == "student" else teacher, "step": self.ssl_step,
                "settings": self.ssl.to_json(self.uses_uncertainty)}
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)    # network_weights -> self.network, optimizer, logger
        checkpoint = filename_or_checkpoint if isinstance(filename_or_checkpoint, dict) else \
            torch.load(filename_or_checkpoint, map_location=self.device, weights_only=False)
        extra = checkpoint.get(CHECKPOINT_KEY)
        net = unwrap_network(self.network)
        if extra is None:   # a checkpoint of a plain nnU-Net training: start the teacher from its weights
            self.teacher.load_state_dict(net.state_dict())
            self.ssl_step = 0
            self.print_to_log_file(f"{filename_or_checkpoint if isinstance(filename_or_checkpoint, str) else 'The'} "
                                   f"checkpoint has no teacher: the teacher starts as a copy of its network.")
            return
        if extra["prediction_network"] == "teacher":
            self.teacher.load_state_dict(checkpoint["network_weights"])
            net.load_state_dict(extra["other_network_weights"])
        else:
            self.teacher.load_state_dict(extra["other_network_weights"])
        self.ssl_step = int(extra["step"])

