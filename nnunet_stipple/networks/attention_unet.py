"""Attention U-Net (Oktay et al. 2018, "Attention U-Net: Learning Where to Look for the Pancreas") on nnU-Net's
plain convolutional U-Net.

Every skip connection passes through an additive attention gate before it is concatenated with the upsampled
decoder features. The gating signal ``g`` is the decoder's output one level coarser (the bottleneck for the
deepest skip), as in the paper's Fig. 1. The gate, following the paper's Eq. 1-2 and its grid-attention code:

* ``theta_x``: a convolution of the skip ``x`` with kernel = stride = the level's downsampling stride (so ``x``
  meets ``g`` on ``g``'s grid, anisotropic nnU-Net strides included), no bias;
* ``phi_g``: a 1x1 convolution of ``g`` (with the bias ``b_g``);
* ``alpha = sigmoid(psi(relu(theta_x + phi_g)))``, ``psi`` a 1x1 convolution to one channel (bias ``b_psi``):
  one coefficient in (0, 1) per voxel of ``g``'s grid, resampled (bi/trilinear) to the skip's grid;
* ``y = W(alpha * x)``, ``W`` a 1x1 convolution plus the network's normalisation (the paper's output transform;
  nnU-Net's instance norm in place of batch norm). No bias before the normalisation, which would remove it.

Intermediate channels: the skip's channels // ``gate_inter_channels_divisor`` (2 in the paper's code). The rest
(encoder, transposed convolutions, decoder blocks, deep supervision, initialisation) is nnU-Net's
``PlainConvUNet``. 2D or 3D from ``conv_op``.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_stipple.networks.blocks import SkipFilteringUNet


def linear_mode(spatial_dims: int) -> str:
    return {2: "bilinear", 3: "trilinear"}[spatial_dims]


class AttentionGate(nn.Module):
    """Additive attention gate of one skip connection (see the module docstring)."""

    def __init__(self, conv_op, skip_channels: int, gating_channels: int, inter_channels: int, stride: List[int],
                 norm: nn.Module):
        super().__init__()
        self.theta_x = conv_op(skip_channels, inter_channels, kernel_size=stride, stride=stride, bias=False)
        self.phi_g = conv_op(gating_channels, inter_channels, kernel_size=1, bias=True)
        self.psi = conv_op(inter_channels, 1, kernel_size=1, bias=True)
        self.output_transform = nn.Sequential(conv_op(skip_channels, skip_channels, kernel_size=1, bias=False), norm)
        self.mode = linear_mode(len(stride))

    def coefficients(self, skip: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        """alpha in (0, 1), shape (B, 1, *skip's spatial shape)."""
        theta = self.theta_x(skip)
        phi = self.phi_g(gating)
        if phi.shape[2:] != theta.shape[2:]:   # only when a patch is not divisible by the strides
            phi = F.interpolate(phi, size=theta.shape[2:], mode=self.mode, align_corners=False)
        alpha = torch.sigmoid(self.psi(F.relu(theta + phi)))
        return F.interpolate(alpha, size=skip.shape[2:], mode=self.mode, align_corners=False)

    def forward(self, skip: torch.Tensor, gating: torch.Tensor, return_attention: bool = False):
        alpha = self.coefficients(skip, gating)
        out = self.output_transform(alpha * skip)
        return (out, {"gate": alpha}) if return_attention else out


class AttentionUNet(SkipFilteringUNet):
    """nnU-Net's ``PlainConvUNet`` with an additive attention gate on every skip connection.

    Arguments: those of ``PlainConvUNet`` (what nnU-Net's plans hold in ``arch_kwargs``) plus
    ``gate_inter_channels_divisor``: intermediate channels of a gate = skip channels // this (at least 1).
    ``forward_with_attention(x)`` returns ``(outputs, {"skip<level>_gate": alpha})``."""

    def __init__(self, input_channels: int, n_stages: int, features_per_stage, conv_op, kernel_sizes, strides,
                 n_conv_per_stage, num_classes: int, n_conv_per_stage_decoder, conv_bias: bool = False,
                 norm_op=None, norm_op_kwargs: dict = None, dropout_op=None, dropout_op_kwargs: dict = None,
                 nonlin=None, nonlin_kwargs: dict = None, deep_supervision: bool = False,
                 nonlin_first: bool = False, gate_inter_channels_divisor: int = 2):
        super().__init__(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
                         n_conv_per_stage, num_classes, n_conv_per_stage_decoder, conv_bias, norm_op, norm_op_kwargs,
                         dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs, deep_supervision, nonlin_first)
        if gate_inter_channels_divisor < 1:
            raise ValueError(f"gate_inter_channels_divisor must be >= 1, got {gate_inter_channels_divisor}")
        gates = []
        for stage in range(self.num_decoder_stages):
            level = self.skip_level(stage)
            skip_channels = self.level_channels(level)
            gates.append(AttentionGate(conv_op, skip_channels, gating_channels=self.level_channels(level + 1),
                                       inter_channels=max(1, skip_channels // gate_inter_channels_divisor),
                                       stride=self.level_stride(level), norm=self.norm(skip_channels)))
        self.build_decoder(gates)
