"""Mean teacher / UA-MT pieces against values computed by hand (nnunet_stipple.semi_supervised.consistency)."""
from __future__ import annotations

import math

import pytest
import torch

from nnunet_stipple.semi_supervised.consistency import ChannelDropout, add_mc_dropout, certain_mask, \
    consistency_mse, ema_decay_at, ema_update, predictive_entropy, sigmoid_rampup, teacher_input, \
    uncertainty_threshold


def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5))            # 0.006738
    assert sigmoid_rampup(5, 10) == pytest.approx(math.exp(-1.25))         # 0.286505
    assert sigmoid_rampup(8, 10) == pytest.approx(math.exp(-5 * 0.04))     # 0.818731
    assert sigmoid_rampup(10, 10) == 1.0 and sigmoid_rampup(25, 10) == 1.0  # clipped after the ramp
    assert sigmoid_rampup(-3, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(0, 0) == 1.0                                       # no ramp-up


def test_ema_decay_warm_up_then_constant():
    assert [ema_decay_at(s, 0.99) for s in (0, 1, 3, 49)] == pytest.approx([0.0, 0.5, 0.75, 0.98])
    assert ema_decay_at(99, 0.99) == pytest.approx(0.99) and ema_decay_at(5000, 0.99) == 0.99


def test_ema_update_by_hand():
    student, teacher = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([[1.0, 2.0]]))
        student.bias.fill_(4.0)
        teacher.weight.copy_(torch.tensor([[3.0, -2.0]]))
        teacher.bias.fill_(0.0)
    a = ema_update(teacher, student, decay=0.99, step=1)      # a = min(1 - 1/2, 0.99) = 0.5
    assert a == 0.5
    assert torch.allclose(teacher.weight, torch.tensor([[2.0, 0.0]])) and torch.allclose(teacher.bias, torch.tensor([2.0]))
    a = ema_update(teacher, student, decay=0.6, step=10)     # a = 0.6: 0.6 * 2 + 0.4 * 1 = 1.6, 0.6 * 0 + 0.4 * 2
    assert a == 0.6
    assert torch.allclose(teacher.weight, torch.tensor([[1.6, 0.8]])) and torch.allclose(teacher.bias, torch.tensor([2.8]))
    assert not teacher.weight.requires_grad or teacher.weight.grad is None
    ema_update(teacher, student, decay=0.99, step=0)          # the first step copies the student
    assert torch.equal(teacher.weight, student.weight) and torch.equal(teacher.bias, student.bias)


def test_teacher_input_noise_is_clipped_and_off_at_zero_std():
    x = torch.zeros(4, 1, 16, 16)
    torch.manual_seed(0)
    noisy = teacher_input(x, std=0.1, clip=0.2)
    assert noisy.abs().max() <= 0.2 + 1e-7 and noisy.std() > 0.05
    assert (noisy.abs() == 0.2).any()           # N(0, 0.1^2) passes 0.2 on ~5 % of 1024 voxels: clipped there
    assert torch.equal(teacher_input(x, std=0.0, clip=0.2), x)


def test_consistency_mse_plain_and_masked():
    s = torch.tensor([[[0.9, 0.5]], [[0.1, 0.5]]]).permute(1, 0, 2)      # (N=1, C=2, 2 voxels)
    t = torch.tensor([[[0.6, 0.5]], [[0.4, 0.5]]]).permute(1, 0, 2)
    # squared differences: voxel 0: 0.09, 0.09; voxel 1: 0, 0 -> mean 0.045
    assert consistency_mse(s, t).item() == pytest.approx(0.045)
    m = torch.tensor([[[1.0, 0.0]]])
    assert consistency_mse(s, t, m).item() == pytest.approx(0.18 / 2)     # only voxel 0: (0.09 + 0.09) / (2 * 1)
    m = torch.tensor([[[0.0, 1.0]]])
    assert consistency_mse(s, t, m).item() == pytest.approx(0.0)
    assert consistency_mse(s, t, torch.zeros(1, 1, 2)).item() == 0.0     # nothing certain: no consistency
    assert consistency_mse(s, t, torch.ones(1, 1, 2)).item() == pytest.approx(0.045)


def test_uncertainty_mask_on_a_hand_built_tensor():
    # 3 voxels, K = 2, mean of T = 2 passes: certain (0.99/0.01 twice), split (0.5/0.5), disagreeing passes
    passes = torch.tensor([[[0.99, 0.5, 0.9]], [[0.99, 0.5, 0.1]]])       # (T=2, N=1, voxels) probability of class 1
    probs = torch.stack([1 - passes, passes], dim=2)                      # (T, N, C=2, voxels)
    u = predictive_entropy(probs.mean(0))                                  # (N, 1, voxels)
    h = lambda p: -(p * math.log(p + 1e-6) + (1 - p) * math.log(1 - p + 1e-6))   # noqa: E731
    assert u[0, 0].tolist() == pytest.approx([h(0.99), h(0.5), h(0.5)], abs=1e-5)   # 0.0560, 0.6931, 0.6931
    # threshold at the start of training: (0.75 + 0.25 e^-5) ln 2 = 0.5210
    threshold = uncertainty_threshold(0, 100, num_classes=2)
    assert threshold == pytest.approx((0.75 + 0.25 * math.exp(-5)) * math.log(2))
    assert certain_mask(u, threshold)[0, 0].tolist() == [1.0, 0.0, 0.0]
    # at the end the threshold is ln 2 = 0.6931 (+ the 1e-6 of the entropy keeps h(0.5) just below it)
    assert uncertainty_threshold(100, 100, num_classes=2) == pytest.approx(math.log(2))
    assert certain_mask(u, 0.69)[0, 0].tolist() == [1.0, 0.0, 0.0]
    assert certain_mask(u, 0.70)[0, 0].tolist() == [1.0, 1.0, 1.0]


def test_threshold_schedule_with_k_classes():
    k = 14                                                                 # BTCV: 13 organs + background
    assert uncertainty_threshold(50, 100, k) == pytest.approx((0.75 + 0.25 * math.exp(-1.25)) * math.log(14))
    assert uncertainty_threshold(100, 100, k) == pytest.approx(math.log(14))
    assert uncertainty_threshold(0, 100, k, start=0.5) == pytest.approx((0.5 + 0.5 * math.exp(-5)) * math.log(14))
    values = [uncertainty_threshold(s, 100, k) for s in range(0, 101, 10)]
    assert values == sorted(values)


def test_channel_dropout_only_in_training_mode():
    conv = torch.nn.Conv3d(1, 8, 1)
    hook = ChannelDropout(0.5)
    x = torch.ones(2, 8, 3, 3, 3)
    conv.eval()
    assert torch.equal(hook(conv, (), x), x)
    conv.train()
    torch.manual_seed(0)
    y = hook(conv, (), x)
    per_channel = y.flatten(2)
    # whole channels dropped (0) or kept and scaled by 1 / (1 - p) = 2
    assert set(per_channel.unique().tolist()) <= {0.0, 2.0}
    assert torch.all(per_channel.min(2).values == per_channel.max(2).values)
    assert (per_channel[..., 0] == 0).any() and (per_channel[..., 0] == 2).any()


def test_mc_dropout_hooks_keep_the_standard_network():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    net = PlainConvUNet(1, 3, (4, 8, 16), torch.nn.Conv2d, 3, (1, 2, 2), 2, 2, (2, 2), conv_bias=True,
                        norm_op=torch.nn.InstanceNorm2d, norm_op_kwargs={"affine": True},
                        nonlin=torch.nn.LeakyReLU, deep_supervision=False)
    plain_state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(2, 1, 16, 16)
    net.eval()
    before = net(x)
    handles = add_mc_dropout(net, 0.5)
    assert len(handles) == 2
    assert net.state_dict().keys() == plain_state.keys()                 # no parameters added
    assert torch.equal(net(x), before)                                    # eval: dropout off
    net.train()
    torch.manual_seed(1)
    a = net(x)
    b = net(x)
    assert not torch.allclose(a, b)                                       # train: stochastic passes
    with pytest.raises(TypeError, match="encoder.stages"):
        add_mc_dropout(torch.nn.Conv2d(1, 1, 1), 0.5)


def test_labeled_outputs_do_not_depend_on_the_unlabeled_patches_in_the_batch():
    """The trainer runs labeled and unlabeled patches through the student in one forward: with nnU-Net's instance
    norms (per sample) the labeled outputs, and so nnU-Net's loss on them, are those of a labeled-only forward."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    net = PlainConvUNet(1, 3, (4, 8, 16), torch.nn.Conv2d, 3, (1, 2, 2), 2, 3, (2, 2), conv_bias=True,
                        norm_op=torch.nn.InstanceNorm2d, norm_op_kwargs={"affine": True, "eps": 1e-5},
                        nonlin=torch.nn.LeakyReLU, deep_supervision=True)
    labeled, unlabeled = torch.randn(2, 1, 16, 16), 5 * torch.randn(3, 1, 16, 16) + 2
    alone = net(labeled)
    together = net(torch.cat((labeled, unlabeled)))
    assert len(alone) == len(together) == 2                      # 3 stages: 2 deep-supervision outputs
    for a, t in zip(alone, together):
        assert torch.allclose(a, t[:2], atol=1e-5)
