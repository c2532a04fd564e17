"""Prior-driven prediction functions (paper Eq. 2 and Eq. 3), as offsets added to the network's logits.

* Softmax (Eq. 2):  softmax(s + ln p)  ==  s_k p_k / sum_c s_c p_c
* Sigmoid (Eq. 3):  sigmoid(s + ln p - ln(1 - p))

Expressing the prior as an additive logit offset lets nnU-Net's own losses (Dice + CE, Dice + BCE, which
take logits), its ignore label, test-time mirroring and export all run unchanged on prior-driven logits.
Offsets are computed in float32; ``p`` must already be floored (0 < p, and p < 1 for regions).
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch

Region = Union[int, Tuple[int, ...]]


def softmax_offset(class_probs: torch.Tensor) -> torch.Tensor:
    """ln p for the prior-driven softmax; ``class_probs`` sums to one over dim 1 (or dim 0 unbatched)."""
    return torch.log(class_probs.float())


def region_probabilities(class_probs: torch.Tensor, regions: Sequence[Region], floor: float,
                         channel_dim: int = 1) -> torch.Tensor:
    """Prior of each nnU-Net region (a union of labels): p_r = sum of its labels' p, clipped to [floor, 1-floor]."""
    out = []
    for r in regions:
        labels = [r] if isinstance(r, int) else list(r)
        out.append(class_probs.index_select(channel_dim, torch.as_tensor(labels, device=class_probs.device))
                   .sum(channel_dim, keepdim=True))
    return torch.cat(out, channel_dim).clamp(floor, 1 - floor)


def sigmoid_offset(region_probs: torch.Tensor) -> torch.Tensor:
    """ln p - ln(1 - p) for the prior-driven sigmoid."""
    p = region_probs.float()
    return torch.log(p) - torch.log1p(-p)


def prior_driven_softmax(logits: torch.Tensor, class_probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    return torch.softmax(logits.float() + softmax_offset(class_probs), dim)


def prior_driven_sigmoid(logits: torch.Tensor, region_probs: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits.float() + sigmoid_offset(region_probs))


def class_sigmoid_offsets(class_probs: torch.Tensor, floor: float, channel_dim: int = 1) -> torch.Tensor:
    """Offsets for a network with one sigmoid per class behind a fixed background logit (the INERRANT trainers,
    :mod:`nnunet_stipple.partial_labels.network`): 0 on channel 0 (it must stay the fixed 0 logit that makes
    nnU-Net's argmax the "highest sigmoid, background below 0.5" rule), Eq. 3's ln p_k - ln(1 - p_k) on class k,
    with p_k the class's prior clipped to [floor, 1 - floor]."""
    num = class_probs.shape[channel_dim]
    off = sigmoid_offset(region_probabilities(class_probs, list(range(1, num)), floor, channel_dim))
    return torch.cat([torch.zeros_like(off.narrow(channel_dim, 0, 1)), off], channel_dim)
