"""nnUNetTrainer_INERRANT: nnU-Net training on a partially labeled dataset (O. Petit's thesis, ch. 3, INERRANT0).

What it changes in nnUNetTrainer, hook by hook:

* ``build_network_architecture``: nnU-Net's network (1 + K output channels, as nnU-Net plans it) with channel 0
  fixed at logit 0, so channels 1..K are K per-class sigmoid logits and nnU-Net's softmax-argmax is INERRANT's
  "highest sigmoid, background below 0.5" (:mod:`nnunet_stipple.partial_labels.network`). Plain
  ``nnUNetv2_predict`` therefore predicts with it, on the unchanged dataset.json.
* ``initialize``: reads and checks ``nnUNet_raw/<Dataset>/partial_labels.json`` (the declaration of which classes
  each case annotates; absent: every case fully annotated) before anything is trained.
* ``_build_loss``: masked BCE - masked soft Dice per class (:mod:`nnunet_stipple.partial_labels.loss`), wrapped in
  nnU-Net's DeepSupervisionWrapper with nnU-Net's own weights.
* ``train_step`` / ``validation_step``: the batch's case keys (``batch['keys']``, nnU-Net's loader) select each
  case's annotated classes for the loss (the ambiguity maps are built from them at every output resolution).

The learned confidence network and the curriculum relabeling of the missing organs (the thesis's full INERRANT,
Algorithm 2) are not part of this trainer (see README, 'Partially labeled datasets').
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_stipple.atomic import write_json_atomic
from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.partial_labels.declaration import DECLARATION_FILE, PartialLabels, foreground_classes, \
    load_declaration
from nnunet_stipple.partial_labels.loss import PartialLabelLoss
from nnunet_stipple.partial_labels.network import fix_background_logit
from nnunet_stipple.trainers.label_proportion import LabelProportionMixin

PARTIAL_LABELS_RECORD = "partial_labels_used.json"   # fold_<f>/: the declaration the fold was trained with


class PartialLabelsMixin:
    """The partial-label machinery shared by the INERRANT trainers (with and without prior)."""

    _partial_labels: Optional[PartialLabels] = None

    @property
    def partial_labels(self) -> PartialLabels:
        """The dataset's declaration, read and checked once (also before a resume's checkpoint is loaded)."""
        if self._partial_labels is None:
            foreground_classes(self.dataset_json, "dataset.json")   # regions are refused before anything else
            decl = load_declaration(self.plans_manager.dataset_name, self.dataset_json)
            labels = list(decl.classes)
            if labels != list(range(1, len(labels) + 1)):
                # channel c of the network is label c (nnU-Net requires consecutive labels; checked, not assumed)
                raise StippleInputError(f"dataset.json: INERRANT needs the foreground labels 1..K, got {labels}.")
            self._partial_labels = decl
        return self._partial_labels

    def trained_settings(self) -> dict:
        # the declaration changes what the model learns from: a resume with another one is refused
        return {**super().trained_settings(), "partial_labels": self.partial_labels.to_json()["annotated"]}

    def resume_keys(self):
        return tuple(super().resume_keys()) + ("partial_labels",)

    # ---- nnU-Net hooks: the declaration checked first, the partial-label loss fed with each batch's cases ----
    def initialize(self):
        _ = self.partial_labels   # a bad declaration stops the run here, before the network, prior or data exist
        super().initialize()

    def _build_loss(self):
        return self._build_partial_loss(super()._build_loss())

    def train_step(self, batch: dict) -> dict:
        self._set_batch_annotation(batch)
        return super().train_step(batch)

    def validation_step(self, batch: dict) -> dict:
        self._set_batch_annotation(batch)
        return super().validation_step(batch)

    def _set_batch_annotation(self, batch: dict) -> None:
        mask = torch.from_numpy(self.partial_labels.annotation_mask([str(k) for k in batch['keys']]))
        self._partial_loss.set_annotation(mask.to(self.device))

    def _build_partial_loss(self, base_loss):
        lm = self.label_manager
        if lm.has_regions:
            raise StippleInputError("dataset.json defines nnU-Net regions; the INERRANT trainers learn one sigmoid "
                                    "per label and do not support regions.")
        self._partial_loss = PartialLabelLoss(lm.foreground_labels, lm.ignore_label,
                                              batch_dice=self.configuration_manager.batch_dice)
        if isinstance(base_loss, DeepSupervisionWrapper):   # nnU-Net's deep-supervision weights, unchanged
            return DeepSupervisionWrapper(self._partial_loss, base_loss.weight_factors)
        return self._partial_loss

    def _report_partial_labels(self) -> None:
        decl = self.partial_labels
        if decl.source is None:
            self.print_to_log_file(f"partial labels: no {DECLARATION_FILE} in nnUNet_raw/{self.plans_manager.dataset_name}"
                                   f" (or nnUNet_raw unset): every case is taken as fully annotated.",
                                   also_print_to_console=True)
        else:
            self.print_to_log_file(decl.summary(), also_print_to_console=True)
        for w in decl.warnings:
            self.print_to_log_file(f"WARNING: {w}", also_print_to_console=True)
        self.print_to_log_file(
            "partial labels: the online 'Pseudo dice' and the final validation compare with the validation cases' "
            "label files as they are, so a class missing from a partially annotated validation case counts its "
            "(correct) predictions as false positives there.")


class nnUNetTrainer_INERRANT(PartialLabelsMixin, LabelProportionMixin, nnUNetTrainer):
    """INERRANT0: per-class sigmoids trained with ambiguity maps from ``partial_labels.json``."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._read_run_config()

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        network = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager,
                                                           num_input_channels, num_output_channels,
                                                           enable_deep_supervision)
        return fix_background_logit(network)

    def on_train_start(self):
        super().on_train_start()
        self._report_partial_labels()
        if self.local_rank == 0:
            write_json_atomic(Path(self.output_folder) / PARTIAL_LABELS_RECORD,
                              {**self.partial_labels.to_json(), "warnings": list(self.partial_labels.warnings)})
