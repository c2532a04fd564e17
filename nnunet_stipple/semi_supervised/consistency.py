"""The pieces of mean teacher (Tarvainen & Valpola 2017) and UA-MT (Yu et al. 2019), as small functions tested
against hand-computed values. Formulas follow UA-MT's public code (github.com/yulequan/UA-MT), which implements
both methods.
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

ENTROPY_EPS = 1e-6       # UA-MT's code: -sum p log(p + 1e-6)


def sigmoid_rampup(current: float, length: float) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = current / length`` clipped to [0, 1] (Laine & Aila's ramp-up, used by
    both papers); 1 when ``length`` is 0 (no ramp-up)."""
    if length <= 0:
        return 1.0
    t = min(max(float(current) / float(length), 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def ema_decay_at(step: int, decay: float) -> float:
    """Decay of the EMA update after optimizer step ``step`` (0-based): the true average of the student's weights
    until ``1 - 1 / (step + 1)`` exceeds ``decay`` (mean teacher's code; step 0 copies the student)."""
    return min(1.0 - 1.0 / (step + 1), decay)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float, step: int) -> float:
    """teacher <- a * teacher + (1 - a) * student for every floating-point entry of the state dict (parameters and
    float buffers; nnU-Net's instance norms have none), a = :func:`ema_decay_at`; other entries are copied.
    Returns a."""
    a = ema_decay_at(step, decay)
    teacher_state = teacher.state_dict()
    for name, value in student.state_dict().items():
        target = teacher_state[name]
        if target.is_floating_point():
            target.mul_(a).add_(value.detach().to(target.dtype), alpha=1.0 - a)
        else:
            target.copy_(value)
    return a


def teacher_input(x: torch.Tensor, std: float, clip: float) -> torch.Tensor:
    """The student's (augmented) patch plus clipped Gaussian noise ``clip(N(0, std^2), -clip, clip)``: the
    different noise of the teacher's view (UA-MT's code: std 0.1, clip 0.2)."""
    if std == 0:
        return x
    return x + torch.clamp(torch.randn_like(x) * std, -clip, clip)


def consistency_mse(student_probs: torch.Tensor, teacher_probs: torch.Tensor,
                    mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean squared difference of the class probabilities (N, C, ...) over classes and the voxels where ``mask``
    (N, 1, ...) is 1: ``sum(mask * (s - t)^2) / (C * sum(mask) + 1e-16)`` as UA-MT's code; without a mask the
    plain mean (mean teacher). A mask of zeros gives 0."""
    d = (student_probs - teacher_probs) ** 2
    if mask is None:
        return d.mean()
    return (mask * d).sum() / (d.shape[1] * mask.sum() + 1e-16)


def predictive_entropy(mean_probs: torch.Tensor) -> torch.Tensor:
    """UA-MT's uncertainty from the mean ``mean_probs`` (N, C, ...) of T stochastic predictions -> (N, 1, ...):
    ``-sum_c mu_c log(mu_c + 1e-6)``, natural log (the caller averages the T passes as they come, so T maps of
    probabilities are never held at once)."""
    return -(mean_probs * torch.log(mean_probs + ENTROPY_EPS)).sum(1, keepdim=True)


def uncertainty_threshold(step: int, total_steps: float, num_classes: int, start: float = 0.75) -> float:
    """UA-MT's threshold H: from ``start`` * U_max to U_max with the sigmoid ramp-up over ``total_steps``
    (the whole training in the paper's code), U_max = ln K, the largest entropy over K classes."""
    return (start + (1.0 - start) * sigmoid_rampup(step, total_steps)) * math.log(num_classes)


def certain_mask(uncertainty: torch.Tensor, threshold: float) -> torch.Tensor:
    """1 where the teacher's uncertainty is below the threshold (those voxels enter the consistency loss)."""
    return (uncertainty < threshold).to(uncertainty.dtype)


class ChannelDropout:
    """Forward hook: channel dropout (``Dropout3d`` / ``Dropout2d`` by the feature's dimensions) on a module's
    output while the module is in training mode, as the ``nn.Dropout3d(p=0.5)`` of UA-MT's V-Net."""

    def __init__(self, p: float):
        self.p = float(p)

    def __call__(self, module: nn.Module, inputs, output):
        if not module.training or self.p == 0:
            return output
        drop = F.dropout3d if output.ndim == 5 else F.dropout2d
        return drop(output, self.p, training=True)


def add_mc_dropout(network: nn.Module, p: float) -> List[torch.utils.hooks.RemovableHandle]:
    """Channel dropout where UA-MT's V-Net has it: on the bottleneck (the output of the encoder's deepest stage)
    and on the features the full-resolution segmentation layer reads (the decoder's last stage). Hooks, no new
    parameters: the state dict, and so the checkpoint, is the standard network's, and dropout is off in eval mode
    (nnU-Net's validation and prediction)."""
    try:
        modules = [network.encoder.stages[-1], network.decoder.stages[-1]]
    except (AttributeError, IndexError, TypeError) as e:
        raise TypeError(f"{type(network).__name__} has no encoder.stages / decoder.stages (nnU-Net's U-Nets have); "
                        f"UA-MT's Monte-Carlo dropout needs them") from e
    hook = ChannelDropout(p)
    return [m.register_forward_hook(hook) for m in modules]
