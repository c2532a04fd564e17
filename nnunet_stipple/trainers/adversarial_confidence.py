"""Adversarial confidence learning (Nie, Gao, Wang, Shen: "ASDNet: Attention based semi-supervised deep networks for
medical image segmentation", MICCAI 2018; the STIPPLE paper's "Adversarial [12]") as an nnU-Net trainer:
``-tr nnUNetTrainer_AdversarialConfidence``.

ASDNet is not among the project's paper files: this follows its published description (a fully convolutional
confidence network trained adversarially against the segmentation network; its confidence map selects the regions
of unlabeled images that train the segmentation network on its own prediction) with the loss layout and values of
Hung et al. (BMVC 2018), which ASDNet builds on, from memory (see
:class:`~nnunet_stipple.semi_supervised.settings.AdversarialConfidenceSettings`). ASDNet's "sample attention"
re-weighting of the supervised loss is left out: nnU-Net's supervised loss is kept, as in the other trainers.

Hook by hook (shared parts: :mod:`.semi_supervised_base`):

* ``initialize``: the confidence network
  (:class:`~nnunet_stipple.semi_supervised.adversarial.ConfidenceNetwork`, input: image + class probabilities) and its
  Adam optimizer.
* ``train_step``: nnU-Net's B labeled and U unlabeled patches in one forward. Segmentation network loss: nnU-Net's
  deep-supervised Dice + CE on the labeled patches + ``adversarial_weight`` * BCE(confidence of its labeled
  prediction, 1) + ``semi_weight`` * CE of the unlabeled patches against their own argmax on the voxels whose
  confidence (the confidence network's sigmoid on the unlabeled prediction) exceeds ``confidence_threshold``, from
  ``semi_start`` of the training on. Then the confidence network's step: voxel-wise BCE, (image, one-hot label) -> 1,
  (image, detached labeled prediction) -> 0, ignored voxels left out.
* ``save_checkpoint`` / ``load_checkpoint``: ``network_weights`` are nnU-Net's plain network (``nnUNetv2_predict`` uses
  them unchanged); the confidence network, its optimizer (and grad scaler on CUDA) and the step counter go under
  :data:`CHECKPOINT_KEY`. A checkpoint without it (plain nnU-Net) starts a fresh confidence network.

Softmax datasets only: the self-training target is the argmax over classes (regions train sigmoids).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast

from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.priors.prior_module import unwrap_network
from nnunet_stipple.semi_supervised.adversarial import ConfidenceNetwork, confidence_adversarial_loss, \
    confidence_discriminator_loss, confident_self_training_ce
from nnunet_stipple.semi_supervised.settings import AdversarialConfidenceSettings
from nnunet_stipple.trainers.label_proportion import nnUNetTrainer_LabelProportion
from nnunet_stipple.trainers.semi_supervised_base import UnlabeledTrainingMixin

CHECKPOINT_KEY = "stipple_adversarial_confidence"
CONFIDENCE_BETAS = (0.9, 0.99)      # Hung et al.'s code (Adam)


def one_hot_labels(seg: torch.Tensor, num_classes: int, ignore_label: Optional[int]):
    """(N, 1, ...) labels -> (N, C, ...) one-hot float map and the (N, 1, ...) mask of annotated voxels (None without
    ignore label; ignored voxels get an all-zero one-hot vector)."""
    labels = seg[:, 0].long()
    mask = None
    if ignore_label is not None:
        mask = (labels != ignore_label)
        labels = torch.where(mask, labels, torch.zeros_like(labels))
        mask = mask[:, None].float()
    one_hot = F.one_hot(labels, num_classes).movedim(-1, 1).float()
    return (one_hot if mask is None else one_hot * mask), mask


class AdversarialConfidenceMixin(UnlabeledTrainingMixin):
    checkpoint_key = CHECKPOINT_KEY
    log_prefix = "adversarial-confidence"

    def _setup_adversarial_confidence(self) -> None:
        self._setup_unlabeled_training(AdversarialConfidenceSettings.from_dict(self.run_config.semi_supervised,
                                                                               self._settings_source()))
        if self.label_manager.has_regions:
            raise StippleInputError(f"{type(self).__name__}: the self-training target is the argmax over a softmax of "
                                    f"classes; this dataset trains regions (sigmoids). Use nnUNetTrainer_SASSNet or "
                                    f"nnUNetTrainer_MeanTeacher.")
        self.confidence_network: Optional[torch.nn.Module] = None
        self.confidence_optimizer = None
        self.confidence_grad_scaler = None

    def initialize(self):
        super().initialize()
        conv_op = type(unwrap_network(self.network).decoder.seg_layers[-1])   # the plans' Conv2d / Conv3d
        num_classes = self.label_manager.num_segmentation_heads
        self.confidence_network = ConfidenceNetwork(conv_op, self.num_input_channels + num_classes,
                                                    self.configuration_manager.patch_size,
                                                    self.ssl.discriminator_features).to(self.device)
        self.confidence_optimizer = torch.optim.Adam(self.confidence_network.parameters(),
                                                     lr=self.ssl.discriminator_lr, betas=CONFIDENCE_BETAS)
        if self.device.type == "cuda":
            self.confidence_grad_scaler = torch.amp.GradScaler("cuda")

    def semi_weight(self) -> float:
        return self.ssl.semi_weight if self.ssl_step >= self.ssl.semi_start * self.total_steps else 0.0

    def train_step(self, batch: dict) -> dict:
        data, target = self.labeled_batch_on_device(batch)
        labels = target[0] if isinstance(target, list) else target
        unlabeled = self.next_unlabeled_batch()
        images = torch.cat((data, unlabeled))
        n = data.shape[0]
        semi_weight = self.semi_weight()
        amp = (lambda: autocast(self.device.type, enabled=True)) if self.device.type == 'cuda' else dummy_context

        # the segmentation network against a fixed confidence network (its gradients are zeroed before its own step)
        self.optimizer.zero_grad(set_to_none=True)
        with amp():
            output = self.network(images)
            deep = isinstance(output, (list, tuple))
            supervised = self.loss([o[:n] for o in output] if deep else output[:n], target)
            logits = (output[0] if deep else output).float()
            probabilities = torch.softmax(logits, 1)
            confidence_logits = self.confidence_network(images, probabilities)
        adversarial = confidence_adversarial_loss(confidence_logits[:n])
        semi, mask = confident_self_training_ce(logits[n:], torch.sigmoid(confidence_logits[n:].float()),
                                                self.ssl.confidence_threshold)
        loss = supervised + self.ssl.adversarial_weight * adversarial + semi_weight * semi
        self.optimizer_step(loss, self.optimizer, self.network.parameters(), self.grad_scaler)

        # the confidence network: one-hot labels -> 1, the labeled predictions -> 0, voxel by voxel
        self.confidence_optimizer.zero_grad(set_to_none=True)
        one_hot, annotated = one_hot_labels(labels, self.label_manager.num_segmentation_heads,
                                            self.label_manager.ignore_label)
        with amp():
            on_labels = self.confidence_network(data, one_hot)
            on_predictions = self.confidence_network(data, probabilities[:n].detach())
            d_loss = confidence_discriminator_loss(on_labels, on_predictions, annotated)
        self.optimizer_step(d_loss, self.confidence_optimizer, self.confidence_network.parameters(),
                            self.confidence_grad_scaler)
        self.ssl_step += 1
        return {'loss': loss.detach().cpu().numpy(), 'supervised_loss': float(supervised.detach().cpu()),
                'adversarial_loss': float(adversarial.detach().cpu()), 'semi_loss': float(semi.detach().cpu()),
                'semi_weight': semi_weight, 'confident_fraction': float(mask.mean().cpu()),
                'confidence_loss': float(d_loss.detach().cpu())}

    # ---- checkpoints ----------------------------------------------------------------------------------------------
    def has_checkpoint_extra(self) -> bool:
        return self.confidence_network is not None

    def checkpoint_extra(self, checkpoint: dict) -> dict:
        scaler = self.confidence_grad_scaler
        return {"confidence_network": {k: v.detach().cpu().clone()
                                       for k, v in self.confidence_network.state_dict().items()},
                "confidence_optimizer": self.confidence_optimizer.state_dict(),
                "confidence_grad_scaler": scaler.state_dict() if scaler is not None else None}

    def restore_checkpoint_extra(self, extra: Optional[dict], checkpoint: dict, source: str) -> None:
        if extra is None:
            self.print_to_log_file(f"{source} checkpoint has no confidence network: it starts untrained.")
            return
        self.confidence_network.load_state_dict(extra["confidence_network"])
        self.confidence_optimizer.load_state_dict(extra["confidence_optimizer"])
        if self.confidence_grad_scaler is not None and extra.get("confidence_grad_scaler") is not None:
            self.confidence_grad_scaler.load_state_dict(extra["confidence_grad_scaler"])


class nnUNetTrainer_AdversarialConfidence(AdversarialConfidenceMixin, nnUNetTrainer_LabelProportion):
    """nnU-Net on the labeled subset plus a confidence network: adversarial loss on labeled predictions and
    confidence-masked self-training on unlabeled patches. nnU-Net's network predicts."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._setup_adversarial_confidence()
