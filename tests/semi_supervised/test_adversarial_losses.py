"""The adversarial methods' pieces (nnunet_stipple.semi_supervised.adversarial) against hand-computed values, and the
shapes of their networks in 2D and 3D."""
from __future__ import annotations

import math

import pytest
import torch

from nnunet_stipple.semi_supervised.adversarial import ConfidenceNetwork, FeatureTap, SDMDiscriminator, SDMHead, \
    confidence_adversarial_loss, confidence_discriminator_loss, confident_self_training_ce, discriminator_loss, \
    generator_loss, masked_mse


def _ce(logits, target):
    """-log softmax(logits)[target] of one sample, by hand."""
    return -(logits[target] - math.log(sum(math.exp(v) for v in logits)))


def _bce(x, y):
    p = 1 / (1 + math.exp(-x))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_discriminator_and_generator_losses():
    lab = torch.tensor([[0.0, 2.0], [1.0, 1.0]])            # labeled patches: class 1 ("labeled") is right
    unl = torch.tensor([[3.0, 0.0]])                        # one unlabeled patch: class 0 is right
    d = 0.5 * ((_ce([0, 2], 1) + _ce([1, 1], 1)) / 2 + _ce([3, 0], 0))
    assert float(discriminator_loss(lab, unl)) == pytest.approx(d)
    assert float(generator_loss(unl)) == pytest.approx(_ce([3, 0], 1))          # fool D: -log D(labeled)
    assert float(generator_loss(torch.tensor([[0.0, 0.0]]))) == pytest.approx(math.log(2))


@pytest.mark.parametrize("mask, expected", [
    (None, (0.25 + 1 + 0 + 0.09) / 4),
    (torch.tensor([[[1.0, 0.0]]]), (0.25 + 0) / 2),          # 2 classes x 1 annotated voxel
    (torch.zeros(1, 1, 2), 0.0),
])
def test_masked_mse(mask, expected):
    pred = torch.tensor([[[0.5, -1.0], [0.2, 0.3]]])          # (N=1, K=2, 2 voxels)
    target = torch.tensor([[[0.0, 0.0], [0.2, 0.0]]])
    assert float(masked_mse(pred, target, mask)) == pytest.approx(expected)


def test_confidence_losses():
    on_labels = torch.tensor([[[2.0, -1.0]]])                # (N=1, 1, 2 voxels)
    on_pred = torch.tensor([[[0.5, 3.0]]])
    expected = 0.5 * ((_bce(2, 1) + _bce(-1, 1)) / 2 + (_bce(0.5, 0) + _bce(3, 0)) / 2)
    assert float(confidence_discriminator_loss(on_labels, on_pred)) == pytest.approx(expected)
    mask = torch.tensor([[[1.0, 0.0]]])
    assert float(confidence_discriminator_loss(on_labels, on_pred, mask)) == pytest.approx(
        0.5 * (_bce(2, 1) + _bce(0.5, 0)))
    assert float(confidence_adversarial_loss(on_pred)) == pytest.approx((_bce(0.5, 1) + _bce(3, 1)) / 2)


def test_confidence_masked_self_training_ce():
    logits = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 1.0, 1.0]]])   # (N=1, C=2, 3 voxels): argmax 0, 1, 0 (tie -> 0)
    confidence = torch.tensor([[[0.9, 0.1, 0.5]]])
    loss, mask = confident_self_training_ce(logits, confidence, threshold=0.2)
    assert mask.tolist() == [[1.0, 0.0, 1.0]]
    assert float(loss) == pytest.approx((_ce([2, 0], 0) + _ce([1, 1], 0)) / 2)
    loss, mask = confident_self_training_ce(logits, confidence, threshold=0.95)
    assert float(loss) == 0.0 and not mask.any()
    logits.requires_grad_(True)
    confident_self_training_ce(logits, confidence, 0.2)[0].backward()
    assert logits.grad[0, :, 1].abs().sum() == 0             # an unselected voxel gets no gradient


@pytest.mark.parametrize("conv_op, patch", [(torch.nn.Conv2d, (32, 24)), (torch.nn.Conv2d, (8, 40)),
                                            (torch.nn.Conv3d, (16, 12, 20)), (torch.nn.Conv3d, (1, 32, 32))])
def test_networks_fit_any_patch(conv_op, patch):
    image, sdm = torch.randn(3, 2, *patch), torch.rand(3, 4, *patch) * 2 - 1
    assert SDMDiscriminator(conv_op, 4, 2, patch, features=4)(sdm, image).shape == (3, 2)
    assert ConfidenceNetwork(conv_op, 2 + 4, patch, features=4)(image, sdm).shape == (3, 1, *patch)
    head = SDMHead(conv_op, 5, 3)
    out = head(torch.randn(2, 5, *patch))
    assert out.shape == (2, 3, *patch) and out.abs().max() < 1


def test_feature_tap_keeps_the_output_only_while_active():
    module, tap = torch.nn.Identity(), FeatureTap()
    module.register_forward_hook(tap)
    x = torch.ones(2)
    module(x)
    assert tap.features is None
    tap.active = True
    assert module(x) is x and tap.pop() is x and tap.features is None
    with pytest.raises(RuntimeError, match="did not run"):
        tap.pop()
