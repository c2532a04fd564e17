"""The network of the INERRANT trainers: nnU-Net's network with its background channel fixed at logit 0.

INERRANT predicts, per voxel, the class with the highest sigmoid among the K classes, and background when every
sigmoid is below 0.5 (thesis ch. 3, section 3.3.1). With channel 0 fixed at 0 and channels 1..K the per-class
sigmoid logits s_k, nnU-Net's plain softmax-argmax over [0, s_1, ..., s_K] is exactly that rule
(sigmoid(s_k) > 0.5 iff s_k > 0, and the sigmoid is monotonic). So ``nnUNetv2_predict``, its label manager,
export, mirroring, sliding windows and fold averaging (all linear in the logits, channel 0 stays 0) work
unchanged on an unchanged dataset.json, with no nnU-Net regions (which would need a re-preprocessed dataset and
threshold each region independently instead of taking the argmax).

The probabilities nnU-Net exports (``--save_probabilities``) are the softmax over [0, s]; each class's
sigmoid is recovered from them as p_k / (p_k + p_0).

The fix is a forward hook installed by ``build_network_architecture``, which nnU-Net's trainer and predictor both
call, so it is part of the network everywhere; the state dict is nnU-Net's own (the hook holds no weights).
"""
from __future__ import annotations

import torch
from torch import nn

_HOOK_ATTRIBUTE = "_inerrant_background_hook"


def _zero_background(output: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros_like(output[:, :1]), output[:, 1:]], 1)


def _hook(module, inputs, output):
    if isinstance(output, (list, tuple)):
        return type(output)(_zero_background(o) for o in output)
    return _zero_background(output)


def fix_background_logit(network: nn.Module) -> nn.Module:
    """Install (once) the hook that sets channel 0 of every output (deep supervision included) to 0."""
    if getattr(network, _HOOK_ATTRIBUTE, None) is None:
        setattr(network, _HOOK_ATTRIBUTE, network.register_forward_hook(_hook))
    return network


def class_sigmoids_from_softmax(probabilities: torch.Tensor) -> torch.Tensor:
    """Per-class sigmoids (K, ...) from nnU-Net's exported softmax (1 + K, ...) of an INERRANT network."""
    p0 = probabilities[:1]
    return probabilities[1:] / (probabilities[1:] + p0).clamp_min(1e-12)
