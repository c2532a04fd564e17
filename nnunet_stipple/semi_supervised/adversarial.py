"""The networks and loss pieces of the two adversarial semi-supervised methods, as small units tested against
hand-computed values:

* SASSNet (Li, Zhang, He, MICCAI 2020): :class:`SDMHead`, :class:`FeatureTap`, :class:`SDMDiscriminator`,
  :func:`discriminator_loss`, :func:`generator_loss`, :func:`masked_mse`;
* adversarial confidence (Nie et al., ASDNet, MICCAI 2018): :class:`ConfidenceNetwork`,
  :func:`confidence_discriminator_loss`, :func:`confidence_adversarial_loss`, :func:`confident_self_training_ce`.

Both networks take nnU-Net's ``conv_op`` (``nn.Conv2d`` / ``nn.Conv3d``), so they follow the configuration.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

LEAKY_SLOPE = 0.2      # both discriminators (SASSNet's code; Hung et al.'s)
LABELED, UNLABELED = 1, 0   # SASSNet's discriminator classes (its code's Dtarget: labeled 1, unlabeled 0)


# ---- SASSNet ----------------------------------------------------------------------------------------------------
class SDMHead(nn.Module):
    """SASSNet's SDM head (sec. 2.2): a 1x1 convolution on the features the segmentation layer reads, then tanh
    (its code's ``out_conv2`` + ``Tanh``), one output channel per foreground class / region."""

    def __init__(self, conv_op, in_channels: int, num_maps: int):
        super().__init__()
        self.conv = conv_op(in_channels, num_maps, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(features))


class FeatureTap:
    """Forward hook keeping the output of a module while ``active`` (the decoder's last stage: the full-resolution
    features nnU-Net's segmentation layer reads). A hook, not a change of the network: the network's parameters,
    state dict and outputs stay nnU-Net's, so its checkpoint is a plain nnU-Net one."""

    def __init__(self):
        self.active = False
        self.features: Optional[torch.Tensor] = None

    def __call__(self, module: nn.Module, inputs, output):
        if self.active:
            self.features = output

    def pop(self) -> torch.Tensor:
        features, self.features = self.features, None
        if features is None:
            raise RuntimeError("the decoder's last stage did not run while the tap was active")
        return features


def decoder_last_stage(network: nn.Module) -> Tuple[nn.Module, int]:
    """The decoder's last stage of an nnU-Net U-Net and its output channels (those of its last segmentation layer)."""
    try:
        return network.decoder.stages[-1], network.decoder.seg_layers[-1].in_channels
    except (AttributeError, IndexError, TypeError) as e:
        raise TypeError(f"{type(network).__name__} has no decoder.stages / decoder.seg_layers (nnU-Net's U-Nets "
                        f"have); the SDM head reads the decoder's last features") from e


def _downsampling_geometry(size: Sequence[int], layers: int) -> List[Tuple[Tuple[int, ...], Tuple[int, ...],
                                                                              Tuple[int, ...]]]:
    """Kernel, stride and padding of ``layers`` stride-2 convolutions (kernel 4, padding 1, halving a size) on a
    patch of ``size``; an axis already down to 1 voxel keeps a 1-voxel kernel (small patches, pseudo-2D axes)."""
    geometry, size = [], list(size)
    for _ in range(layers):
        k, s, p = [], [], []
        for i, n in enumerate(size):
            if n >= 2:
                k.append(4), s.append(2), p.append(1)
                size[i] = n // 2
            else:
                k.append(1), s.append(1), p.append(0)
        geometry.append((tuple(k), tuple(s), tuple(p)))
    return geometry


def _dropout_op(conv_op):
    return nn.Dropout3d if conv_op is nn.Conv3d else nn.Dropout2d


class SDMDiscriminator(nn.Module):
    """SASSNet's discriminator (sec. 2.3 "5 convolution layers followed by an MLP", sec. 3 "4x4x4 kernels with stride
    2"; its code's ``FC3DDiscriminator``): the SDM and the image each through a stride-2 convolution, added, then three
    more stride-2 convolutions (widths f, 2f, 4f, 8f), LeakyReLU(0.2) and channel dropout after each but the last,
    an average over space and a linear layer to two logits (unlabeled, labeled). Its code's fixed average pool
    (7, 7, 5) of its 112x112x80 patches becomes the global average, for any patch size."""

    def __init__(self, conv_op, sdm_channels: int, image_channels: int, patch_size: Sequence[int],
                 features: int = 64, dropout: float = 0.5):
        super().__init__()
        geometry = _downsampling_geometry(patch_size, 4)
        widths = [features, features * 2, features * 4, features * 8]
        k, s, p = geometry[0]
        self.sdm_conv = conv_op(sdm_channels, widths[0], k, s, p)
        self.image_conv = conv_op(image_channels, widths[0], k, s, p)
        self.convs = nn.ModuleList(conv_op(widths[i], widths[i + 1], *geometry[i + 1]) for i in range(3))
        self.dropout = _dropout_op(conv_op)(dropout)
        self.classifier = nn.Linear(widths[-1], 2)

    def forward(self, sdm: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.sdm_conv(sdm) + self.image_conv(image), LEAKY_SLOPE)
        x = self.dropout(x)
        for i, conv in enumerate(self.convs):
            x = F.leaky_relu(conv(x), LEAKY_SLOPE)
            if i < len(self.convs) - 1:
                x = self.dropout(x)
        return self.classifier(x.flatten(2).mean(2))


def discriminator_loss(logits_labeled: torch.Tensor, logits_unlabeled: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss, -L_a of SASSNet's Eq. 4 as cross-entropies (its code): the mean of the mean
    cross-entropy of the labeled patches' logits against "labeled" and of the unlabeled ones' against "unlabeled"
    (with as many of each, its code's plain mean over the batch)."""
    lab = F.cross_entropy(logits_labeled.float(), torch.full((logits_labeled.shape[0],), LABELED,
                                                             device=logits_labeled.device))
    unl = F.cross_entropy(logits_unlabeled.float(), torch.full((logits_unlabeled.shape[0],), UNLABELED,
                                                               device=logits_unlabeled.device))
    return 0.5 * (lab + unl)


def generator_loss(logits_unlabeled: torch.Tensor) -> torch.Tensor:
    """The segmentation network's adversarial term (Eq. 6, the non-saturating surrogate): the mean cross-entropy of
    the unlabeled patches' logits against "labeled", i.e. -mean log D(X_m, S_m)."""
    return F.cross_entropy(logits_unlabeled.float(), torch.full((logits_unlabeled.shape[0],), LABELED,
                                                                device=logits_unlabeled.device))


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """L_sdm (Eq. 3): the mean squared error over classes and voxels; with ``mask`` (N, 1, ...) over the voxels where
    it is 1 (annotated voxels), 0 where none is."""
    d = (prediction.float() - target.float()) ** 2
    if mask is None:
        return d.mean()
    return (mask * d).sum() / (d.shape[1] * mask.sum()).clamp_min(1)


# ---- adversarial confidence (ASDNet) ------------------------------------------------------------------------------
class ConfidenceNetwork(nn.Module):
    """A fully convolutional confidence network: (image, class map) concatenated, four stride-2 convolutions
    (kernel 4, widths f, 2f, 4f, 8f, LeakyReLU(0.2)), a stride-2 convolution to one channel, the logits upsampled
    (linearly) to the patch: one confidence logit per voxel, high where the map looks like a label. The layout of
    Hung et al.'s fully convolutional discriminator (BMVC 2018), which ASDNet's confidence network follows in spirit;
    ASDNet's exact layers are not in the project's paper files."""

    def __init__(self, conv_op, in_channels: int, patch_size: Sequence[int], features: int = 64):
        super().__init__()
        geometry = _downsampling_geometry(patch_size, 5)
        widths = [in_channels, features, features * 2, features * 4, features * 8]
        self.convs = nn.ModuleList(conv_op(widths[i], widths[i + 1], *geometry[i]) for i in range(4))
        self.classifier = conv_op(widths[-1], 1, *geometry[4])
        self.mode = "trilinear" if conv_op is nn.Conv3d else "bilinear"

    def forward(self, image: torch.Tensor, class_map: torch.Tensor) -> torch.Tensor:
        x = torch.cat((image, class_map.to(image.dtype)), 1)
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LEAKY_SLOPE)
        return F.interpolate(self.classifier(x), size=image.shape[2:], mode=self.mode, align_corners=False)


def _masked_mean(values: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    if mask is None:
        return values.mean()
    return (values * mask).sum() / mask.sum().clamp_min(1)


def confidence_discriminator_loss(logits_on_labels: torch.Tensor, logits_on_predictions: torch.Tensor,
                                  mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The confidence network's loss: voxel-wise binary cross-entropy, (image, one-hot label) -> 1 and
    (image, prediction) -> 0, the mean of the two means (over the voxels where ``mask`` is 1: annotated ones)."""
    real = F.binary_cross_entropy_with_logits(logits_on_labels.float(), torch.ones_like(logits_on_labels.float()),
                                              reduction="none")
    fake = F.binary_cross_entropy_with_logits(logits_on_predictions.float(),
                                              torch.zeros_like(logits_on_predictions.float()), reduction="none")
    return 0.5 * (_masked_mean(real, mask) + _masked_mean(fake, mask))


def confidence_adversarial_loss(logits_on_predictions: torch.Tensor) -> torch.Tensor:
    """The segmentation network's adversarial term: voxel-wise binary cross-entropy of the confidence of its
    prediction against 1 (make the prediction look like a label), mean over voxels."""
    logits = logits_on_predictions.float()
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def confident_self_training_ce(logits: torch.Tensor, confidence: torch.Tensor,
                               threshold: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """The semi-supervised term on unlabeled patches: cross-entropy of the (N, C, ...) ``logits`` against their own
    argmax, averaged over the voxels whose ``confidence`` (N, 1, ...) (probability, no gradient) exceeds
    ``threshold``; 0 where none does. Returns (loss, mask)."""
    logits = logits.float()
    pseudo = logits.detach().argmax(1)
    mask = (confidence.detach()[:, 0] > threshold).to(logits.dtype)
    ce = F.cross_entropy(logits, pseudo, reduction="none")
    return (ce * mask).sum() / mask.sum().clamp_min(1), mask
