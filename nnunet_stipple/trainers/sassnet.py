"""SASSNet (Li, Zhang, He: "Shape-aware Semi-supervised 3D Semantic Segmentation for Medical Images", MICCAI 2020;
a competitor of the STIPPLE paper's Table 3) as an nnU-Net trainer: ``-tr nnUNetTrainer_SASSNet``.

What it changes in nnU-Net's trainer, hook by hook (shared parts: :mod:`.semi_supervised_base`):

* ``configure_optimizers`` (called by nnU-Net's ``initialize`` once the network is built): the SDM head
  (:class:`~nnunet_stipple.semi_supervised.adversarial.SDMHead`, 1x1 convolution + tanh, sec. 2.2) on the decoder's
  last features, read by a forward hook (:class:`~nnunet_stipple.semi_supervised.adversarial.FeatureTap`) so that the
  network stays nnU-Net's; the head joins nnU-Net's SGD as a second parameter group (same learning rate and poly
  schedule: the paper trains the whole multi-task network with one SGD). The discriminator
  (:class:`~nnunet_stipple.semi_supervised.adversarial.SDMDiscriminator`, sec. 2.3 / 3) with its own Adam.
* ``train_step``: nnU-Net's B labeled and U unlabeled patches in one forward (nnU-Net's instance norms are per sample,
  so the labeled outputs are those of a labeled-only forward). Segmentation network loss (Eq. 6):
  nnU-Net's deep-supervised Dice + CE on the labeled patches (the paper's L_seg is a Dice loss; nnU-Net's loss is
  kept so the methods of the study differ only by what they add) + alpha * MSE(SDM head, SDM of the label) on the
  labeled patches (Eq. 2-3, :mod:`~nnunet_stipple.semi_supervised.sdm`) + beta(t) * (-log D(X_m, S_m)) on the
  unlabeled ones (the discriminator in eval mode, as its code). Then the discriminator's step (Eq. 4 as
  cross-entropies, labeled vs unlabeled) on the SDMs of that same forward, detached: the public code runs the network
  a second time after the update for them; reusing the first pass saves a third of an iteration, and the
  discriminator then sees SDMs one optimizer step older.
* beta(t) = ``adversarial_weight`` * exp(-5 (1 - t)^2), t = step / (``adversarial_rampup`` * total steps) (sec. 3).
* ``save_checkpoint`` / ``load_checkpoint``: ``network_weights`` are nnU-Net's plain network (``nnUNetv2_predict``
  uses them unchanged: the SDM head is for training only, prediction is the segmentation output); the head, the
  discriminator, its optimizer (and grad scaler on CUDA) and the step counter go under :data:`CHECKPOINT_KEY`.
  nnU-Net's optimizer state includes the head's group, so ``--c`` needs a checkpoint of this trainer.

SDMs are computed on the CPU from the augmented full-resolution label patches (scipy's exact distance transform,
per class or region and per patch), in the training process: on large 3D patches with many classes they add a
noticeable part to an iteration (see the study's ``relative_cost``).
"""
from __future__ import annotations

from typing import Optional

import torch
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast

from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.priors.prior_module import unwrap_network
from nnunet_stipple.semi_supervised.adversarial import FeatureTap, SDMDiscriminator, SDMHead, decoder_last_stage, \
    discriminator_loss, generator_loss, masked_mse
from nnunet_stipple.semi_supervised.consistency import sigmoid_rampup
from nnunet_stipple.semi_supervised.sdm import sdm_targets
from nnunet_stipple.semi_supervised.settings import SASSNetSettings
from nnunet_stipple.trainers.label_proportion import nnUNetTrainer_LabelProportion
from nnunet_stipple.trainers.semi_supervised_base import UnlabeledTrainingMixin

CHECKPOINT_KEY = "stipple_sassnet"
DISCRIMINATOR_BETAS = (0.9, 0.99)     # SASSNet's public code (the paper gives Adam and its learning rate only)


class SASSNetMixin(UnlabeledTrainingMixin):
    checkpoint_key = CHECKPOINT_KEY
    log_prefix = "sassnet"

    def _setup_sassnet(self) -> None:
        self._setup_unlabeled_training(SASSNetSettings.from_dict(self.run_config.semi_supervised,
                                                                 self._settings_source()))
        self.sdm_head: Optional[torch.nn.Module] = None
        self.discriminator: Optional[torch.nn.Module] = None
        self.discriminator_optimizer = None
        self.discriminator_grad_scaler = None
        self._tap = FeatureTap()

    # ---- networks -----------------------------------------------------------------------------------------
    def sdm_classes(self) -> list:
        """What each SDM channel is the distance map of: the foreground labels (regions for region training)."""
        lm = self.label_manager
        return [tuple(r) if isinstance(r, (list, tuple)) else int(r) for r in lm.foreground_regions] \
            if lm.has_regions else [int(c) for c in lm.foreground_labels]

    def _build_sassnet_networks(self) -> None:
        net = unwrap_network(self.network)
        stage, channels = decoder_last_stage(net)
        conv_op = type(net.decoder.seg_layers[-1])    # the plans' conv_op (Conv2d / Conv3d)
        k = len(self.sdm_classes())
        self.sdm_head = SDMHead(conv_op, channels, k).to(self.device)
        stage.register_forward_hook(self._tap)
        self.discriminator = SDMDiscriminator(conv_op, k, self.num_input_channels, self.configuration_manager.patch_size,
                                              self.ssl.discriminator_features,
                                              self.ssl.discriminator_dropout).to(self.device)
        self.discriminator_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=self.ssl.discriminator_lr,
                                                        betas=DISCRIMINATOR_BETAS)
        if self.device.type == "cuda":
            self.discriminator_grad_scaler = torch.amp.GradScaler("cuda")

    def configure_optimizers(self):
        # nnU-Net's initialize builds the network, then asks for its optimizer: the head must exist by then to be
        # optimised with it (a second parameter group, which nnU-Net's poly schedule sets like the first)
        if self.sdm_head is None:
            self._build_sassnet_networks()
        optimizer, lr_scheduler = super().configure_optimizers()
        optimizer.add_param_group({"params": list(self.sdm_head.parameters())})
        return optimizer, lr_scheduler

    def adversarial_weight(self) -> float:
        return self.ssl.adversarial_weight * sigmoid_rampup(self.ssl_step,
                                                            self.ssl.adversarial_rampup * self.total_steps)

    # ---- training step ------------------------------------------------------------------------------------------
    def train_step(self, batch: dict) -> dict:
        labels = batch['target'][0] if isinstance(batch['target'], list) else batch['target']
        sdm_target, sdm_mask = sdm_targets(labels.numpy(), self.sdm_classes(), self.label_manager.ignore_label,
                                           self.configuration_manager.spacing)
        sdm_target = torch.from_numpy(sdm_target).to(self.device, non_blocking=True)
        sdm_mask = None if sdm_mask is None else torch.from_numpy(sdm_mask).to(self.device, non_blocking=True)
        data, target = self.labeled_batch_on_device(batch)
        unlabeled = self.next_unlabeled_batch()
        images = torch.cat((data, unlabeled))
        n = data.shape[0]
        beta = self.adversarial_weight()
        amp = (lambda: autocast(self.device.type, enabled=True)) if self.device.type == 'cuda' else dummy_context

        # the segmentation network (and SDM head) against a fixed discriminator
        self.optimizer.zero_grad(set_to_none=True)
        self.discriminator.eval()
        self._tap.active = True
        try:
            with amp():
                output = self.network(images)
                sdm = self.sdm_head(self._tap.pop())
        finally:
            self._tap.active = False
        with amp():
            deep = isinstance(output, (list, tuple))
            supervised = self.loss([o[:n] for o in output] if deep else output[:n], target)
            adversarial = generator_loss(self.discriminator(sdm[n:], unlabeled))
        sdm_loss = masked_mse(sdm[:n], sdm_target, sdm_mask)
        loss = supervised + self.ssl.sdm_weight * sdm_loss + beta * adversarial
        self.optimizer_step(loss, self.optimizer,
                            list(self.network.parameters()) + list(self.sdm_head.parameters()), self.grad_scaler)

        # the discriminator: labeled vs unlabeled SDMs of this forward
        self.discriminator.train()
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        with amp():
            logits = self.discriminator(sdm.detach(), images)
            d_loss = discriminator_loss(logits[:n], logits[n:])
        self.optimizer_step(d_loss, self.discriminator_optimizer, self.discriminator.parameters(),
                            self.discriminator_grad_scaler)
        self.ssl_step += 1
        accuracy = float((logits.detach().argmax(1) == torch.tensor([1] * n + [0] * (len(logits) - n),
                                                                    device=logits.device)).float().mean())
        return {'loss': loss.detach().cpu().numpy(), 'supervised_loss': float(supervised.detach().cpu()),
                'sdm_loss': float(sdm_loss.detach().cpu()), 'adversarial_loss': float(adversarial.detach().cpu()),
                'adversarial_weight': beta, 'discriminator_loss': float(d_loss.detach().cpu()),
                'discriminator_accuracy': accuracy}

    # ---- checkpoints ----------------------------------------------------------------------------------------------
    def has_checkpoint_extra(self) -> bool:
        return self.discriminator is not None

    def checkpoint_extra(self, checkpoint: dict) -> dict:
        scaler = self.discriminator_grad_scaler
        return {"sdm_head": _cpu(self.sdm_head.state_dict()), "discriminator": _cpu(self.discriminator.state_dict()),
                "discriminator_optimizer": self.discriminator_optimizer.state_dict(),
                "discriminator_grad_scaler": scaler.state_dict() if scaler is not None else None}

    def before_load_checkpoint(self, checkpoint: dict, source: str) -> None:
        if CHECKPOINT_KEY not in checkpoint:
            raise StippleInputError(
                f"{source} checkpoint was not written by nnUNetTrainer_SASSNet (no '{CHECKPOINT_KEY}' key): its "
                f"optimizer has no SDM-head group and there is no discriminator to resume. Train this fold from "
                f"scratch, or continue the training that wrote it with its own trainer.")

    def restore_checkpoint_extra(self, extra: Optional[dict], checkpoint: dict, source: str) -> None:
        self.sdm_head.load_state_dict(extra["sdm_head"])
        self.discriminator.load_state_dict(extra["discriminator"])
        self.discriminator_optimizer.load_state_dict(extra["discriminator_optimizer"])
        if self.discriminator_grad_scaler is not None and extra.get("discriminator_grad_scaler") is not None:
            self.discriminator_grad_scaler.load_state_dict(extra["discriminator_grad_scaler"])


def _cpu(state: dict) -> dict:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


class nnUNetTrainer_SASSNet(SASSNetMixin, nnUNetTrainer_LabelProportion):
    """nnU-Net on the labeled subset plus SASSNet's SDM head, SDM regression and adversarial SDM loss on unlabeled
    patches. nnU-Net's network predicts (``nnUNetv2_predict`` as for plain nnU-Net)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._setup_sassnet()
