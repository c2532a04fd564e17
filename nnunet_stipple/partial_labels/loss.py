"""Ambiguity maps and the masked per-class loss of INERRANT (thesis ch. 3, section 3.3.1, Eq. 3.1-3.2).

The (K + 1)-class problem becomes K binary problems, one sigmoid per class. For class k in case b the ambiguity map
w_k selects the voxels whose label is known to be correct for k:

* k annotated in b: every voxel (background is truly "not k", organ k is truly k);
* k not annotated in b: only the voxels labeled as another *annotated* class (they are certainly not k); the
  voxels labeled background may be an unlabeled k and are left out of k's loss ("false negatives" of Table 3.1).

nnU-Net's ignore label removes a voxel from every class's loss. The loss is BCE (Eq. 3.2, averaged over the
selected voxel-class pairs so that its scale does not depend on how much is ambiguous) plus a soft Dice per class
over the selected voxels (the thesis trains with BCE; the Dice term keeps nnU-Net's Dice + CE recipe and its
robustness to class imbalance), as nnU-Net's MemoryEfficientSoftDiceLoss (smooth 1e-5, -Dice as the loss term).

All functions take the integer label map as nnU-Net's loader produces it, (B, 1, *spatial), and a (B, K) boolean
``annotated`` mask whose column j belongs to foreground label ``labels[j]``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _labels_map(target: torch.Tensor) -> torch.Tensor:
    return target[:, 0] if target.ndim >= 3 and target.shape[1] == 1 else target


def _per_sample(mask_bk: torch.Tensor, ndim_spatial: int) -> torch.Tensor:
    return mask_bk.view(mask_bk.shape + (1,) * ndim_spatial)


def class_targets(target: torch.Tensor, labels: Sequence[int]) -> torch.Tensor:
    """(B, K, *spatial) float: 1 where the voxel is labeled ``labels[j]``."""
    t = _labels_map(target)
    return torch.stack([(t == c) for c in labels], 1).float()


def ambiguity_weights(target: torch.Tensor, annotated: torch.Tensor, labels: Sequence[int],
                      ignore_label: Optional[int] = None) -> torch.Tensor:
    """(B, K, *spatial) float in {0, 1}: w_k of the thesis for every case of the batch (see the module docstring)."""
    t = _labels_map(target)
    annotated = annotated.to(device=t.device, dtype=torch.bool)
    spatial = t.ndim - 1
    onehot = torch.stack([(t == c) for c in labels], 1)                        # (B, K, ...)
    ann = _per_sample(annotated, spatial)                                      # (B, K, 1, ...)
    labeled_annotated = (onehot & ann).any(1, keepdim=True)                    # voxel labeled as an annotated class
    w = ann | (labeled_annotated & ~onehot)                                    # annotated k, or certainly not k
    if ignore_label is not None:
        w = w & (t != ignore_label).unsqueeze(1)
    return w.float()


def masked_bce(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Eq. 3.2 normalised by the number of selected voxel-class pairs (0 with a graph when none is selected)."""
    per_voxel = F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none")
    return (per_voxel * w).sum() / w.sum().clamp_min(1.0)


def masked_soft_dice(probs: torch.Tensor, y: torch.Tensor, w: torch.Tensor, batch_dice: bool,
                     smooth: float = 1e-5) -> torch.Tensor:
    """Mean soft Dice over the classes (per case too unless ``batch_dice``) that have at least one selected voxel.

    A class whose voxels are all ambiguous is left out of the mean: counting it would add a constant
    (smooth / smooth = 1) that carries no gradient and makes the value depend on the batch's annotation."""
    axes = tuple(range(2, probs.ndim))
    inter = (probs * y * w).sum(axes)
    pred = (probs * w).sum(axes)
    gt = (y * w).sum(axes)
    selected = w.sum(axes)
    if batch_dice:
        inter, pred, gt, selected = (v.sum(0) for v in (inter, pred, gt, selected))
    dice = (2 * inter + smooth) / (pred + gt + smooth).clamp_min(1e-8)
    keep = selected > 0
    if not keep.any():
        return probs.sum() * 0.0
    return dice[keep].mean()


class PartialLabelLoss(nn.Module):
    """Masked BCE - masked soft Dice on the class channels of an INERRANT network.

    ``output``: logits (B, 1 + K, *spatial) whose channel 0 is the fixed background logit (ignored here; see
    :mod:`nnunet_stipple.partial_labels.network`). The batch's annotation mask is set with :meth:`set_annotation`
    before each forward (the trainer does it from the batch's case keys), because nnU-Net's
    DeepSupervisionWrapper only passes (output, target) pairs."""

    def __init__(self, labels: Sequence[int], ignore_label: Optional[int], batch_dice: bool,
                 weight_bce: float = 1.0, weight_dice: float = 1.0):
        super().__init__()
        self.labels = [int(c) for c in labels]
        self.ignore_label = ignore_label
        self.batch_dice = batch_dice
        self.weight_bce = weight_bce
        self.weight_dice = weight_dice
        self._annotated: Optional[torch.Tensor] = None

    def set_annotation(self, annotated: Optional[torch.Tensor]) -> None:
        self._annotated = annotated

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self._annotated is None:
            raise RuntimeError("PartialLabelLoss: set_annotation(mask) must be called with the batch's annotated "
                               "classes before the loss is computed.")
        logits = output[:, 1:]
        if logits.shape[1] != len(self.labels):
            raise RuntimeError(f"PartialLabelLoss: {logits.shape[1]} class channels for {len(self.labels)} labels")
        w = ambiguity_weights(target, self._annotated, self.labels, self.ignore_label)
        y = class_targets(target, self.labels)
        bce = masked_bce(logits, y, w)
        dice = masked_soft_dice(torch.sigmoid(logits.float()), y, w, self.batch_dice)
        return self.weight_bce * bce - self.weight_dice * dice
