"""Pieces shared by the backbones: a U-Net decoder whose skip connections pass through a filter, multi-head
attention on flattened feature maps, a sinusoidal positional encoding for 2D and 3D grids, and the argument
handling of dynamic-network-architectures' ``PlainConvUNet``.

The encoder is dynamic-network-architectures' ``PlainConvEncoder`` and the decoder subclasses its ``UNetDecoder``
(same transposed convolutions, ``StackedConvBlocks`` and segmentation layers, same parameter names), so nnU-Net's
``set_deep_supervision_enabled`` (``network.decoder.deep_supervision``), its weight initialisation and the
project's hooks on ``encoder.stages`` / ``decoder.stages`` (UA-MT's Monte-Carlo dropout) work unchanged.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.abstract_arch import AbstractDynamicNetworkArchitectures
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn

AttentionMaps = Dict[str, torch.Tensor]


class PassThroughSkip(nn.Module):
    """The plain U-Net skip connection, for levels a backbone leaves unfiltered."""

    def forward(self, skip: torch.Tensor, gating: torch.Tensor, return_attention: bool = False):
        return (skip, {}) if return_attention else skip


class SkipFilteringUNetDecoder(UNetDecoder):
    """nnU-Net's ``UNetDecoder`` with one filter module per skip connection, applied before the concatenation.

    ``skip_filters[s]`` belongs to decoder stage ``s`` (deepest first, as ``stages``): it is called as
    ``filter(skip, gating)`` with the encoder's skip of that level and ``gating``, the decoder's features one level
    coarser (the bottleneck for the deepest skip), and returns a tensor shaped like ``skip``; with
    ``return_attention=True`` it returns ``(filtered, {name: map})``. Outputs and deep supervision are exactly
    ``UNetDecoder``'s: a list, full resolution first, when ``deep_supervision`` is on, else one tensor."""

    def __init__(self, encoder: PlainConvEncoder, num_classes: int, n_conv_per_stage, deep_supervision: bool,
                 skip_filters: Sequence[nn.Module], nonlin_first: bool = False):
        super().__init__(encoder, num_classes, n_conv_per_stage, deep_supervision, nonlin_first=nonlin_first)
        if len(skip_filters) != len(self.stages):
            raise ValueError(f"{len(skip_filters)} skip filters for {len(self.stages)} decoder stages")
        self.skip_filters = nn.ModuleList(skip_filters)

    def skip_level(self, stage: int) -> int:
        """Encoder stage index of the skip that decoder stage ``stage`` consumes (0 = full resolution)."""
        return len(self.stages) - 1 - stage

    def forward(self, skips: List[torch.Tensor], attention_maps: Optional[AttentionMaps] = None):
        """``attention_maps``: a dict to fill with every filter's maps, keys prefixed ``skip<level>_``."""
        lres_input = skips[-1]
        seg_outputs = []
        for s in range(len(self.stages)):
            skip = skips[-(s + 2)]
            if attention_maps is None:
                skip = self.skip_filters[s](skip, lres_input)
            else:
                skip, maps = self.skip_filters[s](skip, lres_input, return_attention=True)
                attention_maps.update({f"skip{self.skip_level(s)}_{k}": v for k, v in maps.items()})
            x = torch.cat((self.transpconvs[s](lres_input), skip), 1)
            x = self.stages[s](x)
            if self.deep_supervision:
                seg_outputs.append(self.seg_layers[s](x))
            elif s == len(self.stages) - 1:
                seg_outputs.append(self.seg_layers[-1](x))
            lres_input = x
        seg_outputs = seg_outputs[::-1]   # full resolution first, as nnU-Net's loss and DS weights expect
        return seg_outputs if self.deep_supervision else seg_outputs[0]

    def compute_conv_feature_map_size(self, input_size):
        """``UNetDecoder``'s estimate plus one filtered copy of every filtered skip (nnU-Net's planner uses such
        estimates to size patches; the backbone plans keep nnU-Net's patch and batch sizes)."""
        output = super().compute_conv_feature_map_size(input_size)
        size = list(input_size)
        for level in range(len(self.stages)):
            f = self.skip_filters[len(self.stages) - 1 - level]
            if not isinstance(f, PassThroughSkip):
                output += np.prod([self.encoder.output_channels[level], *size], dtype=np.int64)
            size = [i // j for i, j in zip(size, self.encoder.strides[level + 1])]
        return output


class SkipFilteringUNet(AbstractDynamicNetworkArchitectures):
    """``PlainConvUNet`` (encoder, arguments, initialisation) with a :class:`SkipFilteringUNetDecoder`.

    The constructor builds the encoder; a subclass then builds its skip filters (one per decoder stage, deepest
    first: they need the encoder's channels and strides) and calls :meth:`build_decoder`, and may transform the
    bottleneck in :meth:`transform_bottleneck`."""

    def __init__(self, input_channels: int, n_stages: int, features_per_stage, conv_op, kernel_sizes, strides,
                 n_conv_per_stage, num_classes: int, n_conv_per_stage_decoder, conv_bias: bool = False,
                 norm_op=None, norm_op_kwargs: dict = None, dropout_op=None, dropout_op_kwargs: dict = None,
                 nonlin=None, nonlin_kwargs: dict = None, deep_supervision: bool = False,
                 nonlin_first: bool = False):
        super().__init__()
        # the keys nnU-Net's pretraining / fine-tuning utilities look up, as in PlainConvUNet
        self.key_to_encoder = "encoder.stages"
        self.key_to_stem = "encoder.stages.0"
        self.keys_to_in_proj = ("encoder.stages.0.0.convs.0.all_modules.0", "encoder.stages.0.0.convs.0.conv")
        if isinstance(n_conv_per_stage, int):
            n_conv_per_stage = [n_conv_per_stage] * n_stages
        if isinstance(n_conv_per_stage_decoder, int):
            n_conv_per_stage_decoder = [n_conv_per_stage_decoder] * (n_stages - 1)
        if n_stages < 2:
            raise ValueError(f"a U-Net needs at least 2 stages, got n_stages={n_stages}")
        if len(n_conv_per_stage) != n_stages or len(n_conv_per_stage_decoder) != n_stages - 1:
            raise ValueError(f"n_conv_per_stage needs {n_stages} entries and n_conv_per_stage_decoder "
                             f"{n_stages - 1}; got {list(n_conv_per_stage)} and {list(n_conv_per_stage_decoder)}")
        self.encoder = PlainConvEncoder(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
                                        n_conv_per_stage, conv_bias, norm_op, norm_op_kwargs, dropout_op,
                                        dropout_op_kwargs, nonlin, nonlin_kwargs, return_skips=True,
                                        nonlin_first=nonlin_first)
        self._decoder_arguments = dict(num_classes=num_classes, n_conv_per_stage=list(n_conv_per_stage_decoder),
                                       deep_supervision=deep_supervision, nonlin_first=nonlin_first)

    def build_decoder(self, skip_filters: Sequence[nn.Module]) -> None:
        self.decoder = SkipFilteringUNetDecoder(self.encoder, skip_filters=skip_filters, **self._decoder_arguments)

    @property
    def spatial_dims(self) -> int:
        return convert_conv_op_to_dim(self.encoder.conv_op)

    @property
    def num_decoder_stages(self) -> int:
        return len(self.encoder.output_channels) - 1

    def skip_level(self, stage: int) -> int:
        """Encoder stage index of the skip that decoder stage ``stage`` (deepest first) consumes."""
        return self.num_decoder_stages - 1 - stage

    def transform_bottleneck(self, bottleneck: torch.Tensor, attention_maps: Optional[AttentionMaps]) -> torch.Tensor:
        return bottleneck

    def forward(self, x):
        skips = self.encoder(x)
        skips[-1] = self.transform_bottleneck(skips[-1], None)
        return self.decoder(skips)

    def forward_with_attention(self, x) -> Tuple[object, AttentionMaps]:
        """The outputs of :meth:`forward` and every attention map computed on the way (explicit attention
        matrices: memory grows with the square of the token count; for inspection and tests)."""
        maps: AttentionMaps = {}
        skips = self.encoder(x)
        skips[-1] = self.transform_bottleneck(skips[-1], maps)
        return self.decoder(skips, attention_maps=maps), maps

    def compute_conv_feature_map_size(self, input_size):
        assert len(input_size) == self.spatial_dims, "give the image size without batch and channel axes"
        return self.encoder.compute_conv_feature_map_size(input_size) + \
            self.decoder.compute_conv_feature_map_size(input_size)

    @staticmethod
    def initialize(module):
        InitWeights_He(1e-2)(module)

    # ---- helpers for subclasses -------------------------------------------------------------------------------
    def level_channels(self, level: int) -> int:
        return int(self.encoder.output_channels[level])

    def level_stride(self, level: int) -> List[int]:
        """The stride from encoder level ``level`` down to ``level + 1`` (per axis)."""
        return [int(s) for s in self.encoder.strides[level + 1]]

    def norm(self, channels: int) -> nn.Module:
        """The encoder's normalisation for ``channels`` features (identity without one)."""
        enc = self.encoder
        if enc.norm_op is None:
            return nn.Identity()
        return enc.norm_op(channels, **(enc.norm_op_kwargs or {}))


def heads_for(channels: int, requested_heads: int) -> int:
    """The number of heads: the largest divisor of ``channels`` not above ``requested_heads``, so any planned
    feature count works (nnU-Net's are multiples of 32; a reduced plan may use others)."""
    if requested_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {requested_heads}")
    return max(h for h in range(1, min(requested_heads, channels) + 1) if channels % h == 0)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product multi-head attention (Vaswani et al. 2017, thesis Eq. 5.1) on token sequences.

    Queries and keys are embedded from one input (``query_key``), values from another (``value``), so the same
    module serves self-attention (both the same) and U-Transformer's cross-attention (queries and keys from the
    coarse decoder features, values from the skip). The key embedding has no bias: it would add ``q . b`` to every
    score of a query, which the softmax over keys removes, so it could never learn (a gradient of zero)."""

    def __init__(self, query_key_channels: int, value_channels: int, embed_channels: int, num_heads: int,
                 out_channels: int, out_bias: bool = True):
        super().__init__()
        self.num_heads = heads_for(embed_channels, num_heads)
        self.head_channels = embed_channels // self.num_heads
        self.to_query = nn.Linear(query_key_channels, embed_channels)
        self.to_key = nn.Linear(query_key_channels, embed_channels, bias=False)
        self.to_value = nn.Linear(value_channels, embed_channels)
        self.to_out = nn.Linear(embed_channels, out_channels, bias=out_bias)

    def _split_heads(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, _ = tokens.shape
        return tokens.view(b, n, self.num_heads, self.head_channels).transpose(1, 2)   # (B, heads, N, C/heads)

    def forward(self, query_key: torch.Tensor, value: torch.Tensor, return_attention: bool = False):
        """query_key: (B, N, Cqk), value: (B, N, Cv) -> (B, N, out_channels) [and weights (B, heads, N, N),
        each row summing to 1 over the keys]."""
        q = self._split_heads(self.to_query(query_key))
        k = self._split_heads(self.to_key(query_key))
        v = self._split_heads(self.to_value(value))
        if return_attention:
            weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_channels), dim=-1)
            out = weights @ v
        else:
            # torch's fused kernels (flash / memory-efficient on GPU) never store the N x N matrix
            weights, out = None, F.scaled_dot_product_attention(q, k, v)
        b, _, n, _ = out.shape
        out = self.to_out(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_channels))
        return (out, weights) if return_attention else out


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) -> (B, N, C), N the number of voxels."""
    return x.flatten(2).transpose(1, 2)


def from_tokens(tokens: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """(B, N, C) -> (B, C, *spatial)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *spatial)


def sinusoidal_positional_encoding(channels: int, spatial: Sequence[int], device=None,
                                   dtype=torch.float32) -> torch.Tensor:
    """Fixed sine/cosine positional encoding (Vaswani et al. 2017) of an N-D grid, shape (channels, *spatial).

    The channels are split evenly between the axes (an even number per axis, the remainder left at zero); axis
    ``a`` gets ``sin(p / 10000^(2i/c)), cos(...)`` of its voxel index ``p``. Fixed rather than learned, so it has
    no parameters tied to the patch size and the same network runs on any input size."""
    dims = len(spatial)
    per_axis = (channels // dims) // 2 * 2
    encoding = torch.zeros((channels, *spatial), device=device, dtype=dtype)
    if per_axis == 0:
        return encoding
    frequencies = torch.exp(torch.arange(0, per_axis, 2, device=device, dtype=torch.float32)
                            * (-math.log(10000.0) / per_axis))
    for axis, length in enumerate(spatial):
        angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * frequencies[None]  # (L, c/2)
        values = torch.stack((angles.sin(), angles.cos()), dim=2).reshape(length, per_axis).t()          # (c, L)
        shape = [per_axis] + [1] * dims
        shape[axis + 1] = length
        encoding[axis * per_axis:(axis + 1) * per_axis] = values.reshape(shape).to(dtype)
    return encoding
