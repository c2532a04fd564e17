"""The backbones as nnU-Net builds them from plans arguments: deep-supervision outputs, gradients to every
parameter, attention weights that are distributions over the keys, gate and filter coefficients in (0, 1)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nnunet_stipple.networks import AttentionUNet, UTransformer
from nnunet_stipple.networks.blocks import heads_for, sinusoidal_positional_encoding

NUM_CLASSES = 3
CASES = {
    # dims: (patch, strides): anisotropic first stride in 3D as nnU-Net plans thick-slice data
    2: ((32, 24), [[1, 1], [2, 2], [2, 2], [2, 1]]),
    3: ((8, 16, 16), [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]),
}
NETWORKS = [AttentionUNet, UTransformer]


def plans_arguments(dims: int, deep_supervision: bool, conv_bias: bool = True) -> dict:
    """PlainConvUNet's arguments as nnU-Net's plans give them (classes already located), small features."""
    conv, norm = (nn.Conv2d, nn.InstanceNorm2d) if dims == 2 else (nn.Conv3d, nn.InstanceNorm3d)
    _, strides = CASES[dims]
    n = len(strides)
    return dict(input_channels=2, n_stages=n, features_per_stage=[8, 16, 24, 32], conv_op=conv,
                kernel_sizes=[[3] * dims] * n, strides=strides, n_conv_per_stage=[2] * n, num_classes=NUM_CLASSES,
                n_conv_per_stage_decoder=[1] * (n - 1), conv_bias=conv_bias, norm_op=norm,
                norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None, dropout_op_kwargs=None,
                nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=deep_supervision)


def build(cls, dims: int, deep_supervision: bool, conv_bias: bool = True, **extras):
    """``extras``: the backbone's own arguments."""
    torch.manual_seed(0)
    net = cls(**plans_arguments(dims, deep_supervision, conv_bias), **extras)
    net.apply(net.initialize)          # as nnU-Net's get_network_from_plans does
    return net


def expected_shapes(dims: int):
    patch, strides = CASES[dims]
    shapes, size = [], list(patch)
    for stride in strides[:-1]:        # one output per decoder stage: the resolutions of encoder levels 0..n-2
        size = [s // st for s, st in zip(size, stride)]
        shapes.append((2, NUM_CLASSES, *size))
    return shapes


@pytest.mark.parametrize("cls", NETWORKS)
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("deep_supervision", [True, False])
def test_output_shapes_at_every_deep_supervision_level(cls, dims, deep_supervision):
    net = build(cls, dims, deep_supervision)
    x = torch.randn(2, 2, *CASES[dims][0])
    out = net(x)
    if deep_supervision:
        assert isinstance(out, list)
        assert [tuple(o.shape) for o in out] == expected_shapes(dims)   # full resolution first
    else:
        assert torch.is_tensor(out) and tuple(out.shape) == expected_shapes(dims)[0]


@pytest.mark.parametrize("cls", NETWORKS)
def test_deep_supervision_toggle_as_nnunet_trainer_does(cls):
    """nnUNetTrainer.set_deep_supervision_enabled sets ``network.decoder.deep_supervision``; the full-resolution
    output is the same either way."""
    net = build(cls, 3, True).eval()
    x = torch.randn(2, 2, *CASES[3][0])
    with torch.no_grad():
        with_ds = net(x)
        net.decoder.deep_supervision = False
        without = net(x)
    assert isinstance(with_ds, list) and torch.is_tensor(without)
    assert torch.allclose(with_ds[0], without, atol=1e-5)


@pytest.mark.parametrize("cls", NETWORKS)
@pytest.mark.parametrize("dims", [2, 3])
def test_gradients_reach_every_parameter(cls, dims):
    """conv_bias False: a convolution bias followed by instance norm is removed by the norm (a zero gradient in
    nnU-Net's PlainConvUNet too), which says nothing about the backbone."""
    net = build(cls, dims, True, conv_bias=False)
    out = net(torch.randn(2, 2, *CASES[dims][0]))
    sum(o.sum() for o in out).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    zero = [n for n, p in net.named_parameters() if p.grad is not None and not torch.any(p.grad != 0)]
    assert not missing and not zero, (missing, zero)


@pytest.mark.parametrize("dims", [2, 3])
def test_attention_gate_coefficients_are_in_0_1_on_the_skip_grid(dims):
    net = build(AttentionUNet, dims, True)
    x = torch.randn(2, 2, *CASES[dims][0])
    out, maps = net.forward_with_attention(x)
    assert sorted(maps) == [f"skip{level}_gate" for level in range(len(CASES[dims][1]) - 1)]
    shapes = expected_shapes(dims)
    for level in range(len(shapes)):
        alpha = maps[f"skip{level}_gate"]
        assert tuple(alpha.shape) == (2, 1, *shapes[level][2:])
        assert torch.all(alpha > 0) and torch.all(alpha < 1)
    with torch.no_grad():
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(out, net(x)))


@pytest.mark.parametrize("dims", [2, 3])
def test_u_transformer_attention_weights_sum_to_one_over_keys(dims):
    net = build(UTransformer, dims, True)
    x = torch.randn(2, 2, *CASES[dims][0])
    out, maps = net.forward_with_attention(x)
    n_skips = len(CASES[dims][1]) - 1
    assert set(maps) == {"bottleneck_self_attention"} | {f"skip{l}_{kind}" for l in range(n_skips)
                                                         for kind in ("cross_attention", "filter")}
    shapes = expected_shapes(dims)
    grid = [int(torch.tensor(s[2:]).prod()) for s in shapes] + [None]
    # the bottleneck: the last level's voxels
    patch, strides = CASES[dims]
    bottleneck = torch.tensor(patch)
    for stride in strides:
        bottleneck = bottleneck // torch.tensor(stride)
    grid[-1] = int(bottleneck.prod())
    for name, weights in maps.items():
        if name.endswith("_filter"):
            level = int(name[4:].split("_")[0])
            assert tuple(weights.shape[2:]) == shapes[level][2:]
            assert torch.all(weights > 0) and torch.all(weights < 1)
            continue
        tokens = grid[-1] if name == "bottleneck_self_attention" else grid[int(name[4:].split("_")[0]) + 1]
        assert weights.shape[0] == 2 and weights.shape[2:] == (tokens, tokens), name
        assert torch.all(weights >= 0)
        assert torch.allclose(weights.sum(-1), torch.ones(()), atol=1e-5), name
    with torch.no_grad():   # the fused attention of forward() gives the same outputs
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(out, net(x)))


def test_u_transformer_cross_attention_only_on_the_chosen_levels():
    net = build(UTransformer, 3, True, cross_attention_levels=[1, 2])
    _, maps = net.forward_with_attention(torch.randn(2, 2, *CASES[3][0]))
    assert sorted(k for k in maps if k.endswith("cross_attention")) == ["skip1_cross_attention",
                                                                         "skip2_cross_attention"]
    assert not any(k.startswith("skip0") for k in maps)
    with pytest.raises(ValueError, match="not skip levels"):
        build(UTransformer, 3, True, cross_attention_levels=[3])


def test_heads_divide_the_channels():
    assert heads_for(320, 8) == 8 and heads_for(24, 8) == 8 and heads_for(20, 8) == 5 and heads_for(7, 8) == 7
    with pytest.raises(ValueError):
        heads_for(8, 0)


@pytest.mark.parametrize("spatial", [(5, 7), (3, 4, 6)])
def test_positional_encoding_distinguishes_every_position(spatial):
    pe = sinusoidal_positional_encoding(24, spatial)
    assert pe.shape == (24, *spatial)
    codes = pe.reshape(24, -1).t()
    assert torch.unique(codes, dim=0).shape[0] == codes.shape[0]
    assert torch.all(pe.abs() <= 1)


@pytest.mark.parametrize("cls", NETWORKS)
def test_mc_dropout_hooks_of_ua_mt_find_the_stages(cls):
    """UA-MT's Monte-Carlo dropout hooks nnU-Net's ``encoder.stages[-1]`` and ``decoder.stages[-1]``."""
    from nnunet_stipple.semi_supervised.consistency import add_mc_dropout
    net = build(cls, 3, True)
    handles = add_mc_dropout(net, 0.5)
    assert len(handles) == 2
    for h in handles:
        h.remove()
