"""U-Transformer (O. Petit's thesis, chapter 5; Petit, Thome, Rambour, Soler 2021) on nnU-Net's plain
convolutional U-Net, in 2D (as in the thesis) and 3D.

Two attention modules are added to nnU-Net's ``PlainConvUNet`` (encoder, transposed convolutions, decoder blocks,
deep supervision and initialisation unchanged):

* **MHSA** (Section 5.3.1, Fig. 5.5) at the bottleneck: a sinusoidal positional encoding is added to the
  bottleneck features X, queries, keys and values are learnt embeddings (W_q, W_k, W_v) of every voxel,
  ``softmax(Q K^T / sqrt(d_k)) V`` (Eq. 5.1) is computed in ``num_heads`` heads and recombined by an output
  embedding. Every bottleneck voxel sees every other: a receptive field covering the whole patch.
* **MHCA** (Section 5.3.2, Fig. 5.6) on the skip connections: the keys and the queries come from the high-level
  feature map Y (the decoder's features one level coarser, the bottleneck for the deepest skip), the values from
  the skip S, embedded (1x1 convolution, normalisation, ReLU) and max-pooled onto Y's grid; positional encodings
  are added to Y and S. The attention output goes through a 1x1 convolution, normalisation and a sigmoid: the
  filter Z in (0, 1), upsampled (bi/trilinear) to S's grid. ``Z * S`` (Hadamard product) is concatenated with
  the upsampled Y, as the thesis describes ("a gating operation of the skip connection S based on the attention
  given to a high level feature map Y").

Adaptations, and why:

* **3D**: the same modules on 3D grids (tokens are voxels, the positional encoding splits its channels between
  the three axes). nnU-Net's anisotropic strides are respected: the value pooling uses the level's own stride.
* **Cross-attention only on the coarser skips** (``cross_attention_levels``): the attention matrix of a skip has
  (number of voxels of Y)^2 entries per head, which at the fine levels of a 3D patch (e.g. 40x80x64 voxels one
  level below full resolution) does not fit in any GPU memory. The thesis's Table 5.4 shows that attention on
  several levels beats one level, not that every level is needed. The levels are fixed when the network is
  built (so its parameters do not depend on the input size); ``nnUNetv2_stipple_backbone_plans`` chooses them
  from the plans' patch size and a token budget. Skips without MHCA are plain U-Net skips.
* **Residual MHSA**: the bottleneck becomes ``X + MHSA(X)``: the convolutional path of the U-Net stays intact at
  initialisation and the gradients reach the encoder directly (the transformer's residual connection).
* **Normalisation**: the network's own (nnU-Net's instance norm) where the thesis's figures show batch norm.
* **Positional encoding**: fixed sine/cosine (no parameters tied to the patch size). nnU-Net trains and predicts
  on patches, so it encodes positions within the patch; the absolute position in the body the thesis mentions is
  what STIPPLE's prior adds.
* **Heads**: ``num_heads`` (8 by default), reduced to the largest divisor of a module's channels when needed.
* Upsampling of Y: nnU-Net's transposed convolution (the decoder's own), not a separate upsampling branch.
* Training calls torch's fused ``scaled_dot_product_attention`` (memory-efficient kernels on GPU);
  ``forward_with_attention`` computes the attention matrices explicitly and returns them.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.helper import get_matching_pool_op
from torch import nn

from nnunet_stipple.networks.attention_unet import linear_mode
from nnunet_stipple.networks.blocks import (AttentionMaps, MultiHeadAttention, PassThroughSkip, SkipFilteringUNet,
                                            from_tokens, sinusoidal_positional_encoding, to_tokens)


def with_positional_encoding(x: torch.Tensor, enabled: bool) -> torch.Tensor:
    if not enabled:
        return x
    return x + sinusoidal_positional_encoding(x.shape[1], x.shape[2:], device=x.device, dtype=x.dtype)[None]


class BottleneckSelfAttention(nn.Module):
    """MHSA: multi-head self-attention over every bottleneck voxel, with positional encoding, residual."""

    def __init__(self, channels: int, num_heads: int, positional_encoding: bool = True):
        super().__init__()
        self.positional_encoding = positional_encoding
        self.attention = MultiHeadAttention(channels, channels, channels, num_heads, channels)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        tokens = to_tokens(with_positional_encoding(x, self.positional_encoding))
        result = self.attention(tokens, tokens, return_attention=return_attention)
        attended, weights = result if return_attention else (result, None)
        out = x + from_tokens(attended, x.shape[2:])
        return (out, {"self_attention": weights}) if return_attention else out


class SkipCrossAttention(nn.Module):
    """MHCA: the skip S filtered by Z = sigmoid(norm(conv(attention(Q, K from Y; V from pooled S)))), Z in (0, 1)."""

    def __init__(self, conv_op, skip_channels: int, gating_channels: int, stride: List[int], num_heads: int,
                 value_norm: nn.Module, filter_norm: nn.Module, nonlin_kwargs: Optional[dict] = None,
                 positional_encoding: bool = True):
        super().__init__()
        self.positional_encoding = positional_encoding
        # no bias before a normalisation: it would be removed by it
        self.value_embedding = nn.Sequential(conv_op(skip_channels, skip_channels, kernel_size=1, bias=False),
                                             value_norm, nn.ReLU())
        self.value_pool = get_matching_pool_op(conv_op, pool_type="max")(kernel_size=stride, stride=stride)
        # the attention's output embedding is the thesis's 1x1 convolution before the sigmoid (same weights on
        # every token), hence no bias before filter_norm
        self.attention = MultiHeadAttention(gating_channels, skip_channels, skip_channels, num_heads, skip_channels,
                                            out_bias=False)
        self.filter_norm = filter_norm
        self.mode = linear_mode(len(stride))

    def forward(self, skip: torch.Tensor, gating: torch.Tensor, return_attention: bool = False):
        y = with_positional_encoding(gating, self.positional_encoding)
        values = self.value_pool(self.value_embedding(with_positional_encoding(skip, self.positional_encoding)))
        if values.shape[2:] != y.shape[2:]:    # only when a patch is not divisible by the strides
            values = F.interpolate(values, size=y.shape[2:], mode=self.mode, align_corners=False)
        result = self.attention(to_tokens(y), to_tokens(values), return_attention=return_attention)
        attended, weights = result if return_attention else (result, None)
        z = torch.sigmoid(self.filter_norm(from_tokens(attended, y.shape[2:])))
        z = F.interpolate(z, size=skip.shape[2:], mode=self.mode, align_corners=False)
        out = z * skip
        return (out, {"cross_attention": weights, "filter": z}) if return_attention else out


class UTransformer(SkipFilteringUNet):
    """nnU-Net's ``PlainConvUNet`` with MHSA at the bottleneck and MHCA on the chosen skip connections.

    Arguments: those of ``PlainConvUNet`` (what nnU-Net's plans hold in ``arch_kwargs``) plus
    ``num_heads`` (8), ``positional_encoding`` (True), ``cross_attention_levels``: the encoder levels whose skip
    gets MHCA (0 = full resolution; None = every skip, the thesis's multi-level setting).
    ``forward_with_attention(x)`` returns ``(outputs, maps)`` with ``bottleneck_self_attention``,
    ``skip<level>_cross_attention`` (B, heads, N, N) and ``skip<level>_filter`` (Z on the skip's grid)."""

    def __init__(self, input_channels: int, n_stages: int, features_per_stage, conv_op, kernel_sizes, strides,
                 n_conv_per_stage, num_classes: int, n_conv_per_stage_decoder, conv_bias: bool = False,
                 norm_op=None, norm_op_kwargs: dict = None, dropout_op=None, dropout_op_kwargs: dict = None,
                 nonlin=None, nonlin_kwargs: dict = None, deep_supervision: bool = False,
                 nonlin_first: bool = False, num_heads: int = 8, positional_encoding: bool = True,
                 cross_attention_levels: Optional[Sequence[int]] = None):
        super().__init__(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
                         n_conv_per_stage, num_classes, n_conv_per_stage_decoder, conv_bias, norm_op, norm_op_kwargs,
                         dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs, deep_supervision, nonlin_first)
        skip_levels = list(range(n_stages - 1))
        if cross_attention_levels is None:
            cross_attention_levels = skip_levels
        unknown = sorted(set(int(v) for v in cross_attention_levels) - set(skip_levels))
        if unknown:
            raise ValueError(f"cross_attention_levels {unknown} are not skip levels of a {n_stages}-stage U-Net "
                             f"(0 .. {n_stages - 2})")
        self.cross_attention_levels = sorted(int(v) for v in cross_attention_levels)
        self.bottleneck_attention = BottleneckSelfAttention(self.level_channels(n_stages - 1), num_heads,
                                                            positional_encoding)
        filters = []
        for stage in range(self.num_decoder_stages):
            level = self.skip_level(stage)
            if level not in self.cross_attention_levels:
                filters.append(PassThroughSkip())
                continue
            channels = self.level_channels(level)
            filters.append(SkipCrossAttention(conv_op, channels, gating_channels=self.level_channels(level + 1),
                                              stride=self.level_stride(level), num_heads=num_heads,
                                              value_norm=self.norm(channels), filter_norm=self.norm(channels),
                                              positional_encoding=positional_encoding))
        self.build_decoder(filters)

    def transform_bottleneck(self, bottleneck: torch.Tensor, attention_maps: Optional[AttentionMaps]) -> torch.Tensor:
        if attention_maps is None:
            return self.bottleneck_attention(bottleneck)
        out, maps = self.bottleneck_attention(bottleneck, return_attention=True)
        attention_maps["bottleneck_self_attention"] = maps["self_attention"]
        return out
