"""Ambiguity maps and masked losses of INERRANT (thesis ch. 3, Eq. 3.1-3.2) against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from nnunet_stipple.partial_labels.loss import PartialLabelLoss, ambiguity_weights, class_targets, masked_bce, \
    masked_soft_dice
from nnunet_stipple.partial_labels.network import class_sigmoids_from_softmax, fix_background_logit

LABELS = [1, 2, 3]


@pytest.mark.parametrize("target, annotated, ignore, expected", [
    # everything annotated: every voxel counts for every class
    ([0, 1, 2, 3, 0], [1, 1, 1], None, [[1, 1, 1, 1, 1]] * 3),
    # class 2 missing: its background voxels are ambiguous, the voxels of annotated organs 1 and 3 are "not 2"
    ([0, 1, 1, 3, 0], [1, 0, 1], None, [[1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1]]),
    # nnU-Net's ignore label (4) leaves a voxel out of every class
    ([0, 1, 4, 3, 0], [1, 0, 1], 4, [[1, 1, 0, 1, 1], [0, 1, 0, 1, 0], [1, 1, 0, 1, 1]]),
    # only class 1 annotated: classes 2 and 3 learn "not here" on the liver voxels only
    ([0, 1, 1, 0, 0], [1, 0, 0], None, [[1, 1, 1, 1, 1], [0, 1, 1, 0, 0], [0, 1, 1, 0, 0]]),
    # nothing annotated (an unlabeled case): nothing is learned from it
    ([0, 0, 0, 0, 0], [0, 0, 0], None, [[0, 0, 0, 0, 0]] * 3),
    # a voxel of a class declared missing (the declaration check refuses such files) is no evidence for anything
    ([0, 2, 0, 0, 0], [1, 0, 1], None, [[1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]),
])
def test_ambiguity_weights(target, annotated, ignore, expected):
    t = torch.tensor(target).view(1, 1, -1)
    w = ambiguity_weights(t, torch.tensor([annotated], dtype=torch.bool), LABELS, ignore)
    assert w.shape == (1, 3, 5)
    assert w[0].tolist() == expected


def test_ambiguity_weights_per_case_of_the_batch():
    t = torch.tensor([[0, 1, 2], [0, 1, 2]]).view(2, 1, 3)
    w = ambiguity_weights(t, torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool), LABELS)
    assert w[0].tolist() == [[1, 1, 1]] * 3
    assert w[1].tolist() == [[1, 1, 1], [1, 1, 1], [0, 1, 1]]


def test_class_targets():
    y = class_targets(torch.tensor([0, 1, 3, 2]).view(1, 1, 4), LABELS)
    assert y[0].tolist() == [[0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]]


LN2, LN43 = math.log(2.0), math.log(4.0 / 3.0)


@pytest.mark.parametrize("w, expected", [
    ([1, 1], (LN2 + LN43) / 2),   # bce(0 | y=0) = ln 2, bce(ln 3 | y=1) = -ln(3/4)
    ([1, 0], LN2),
    ([0, 1], LN43),
    ([0, 0], 0.0),                # no selected voxel: no loss (and no NaN)
])
def test_masked_bce(w, expected):
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 1, 2)
    got = masked_bce(logits, torch.tensor([0.0, 1.0]).view(1, 1, 2), torch.tensor(w, dtype=torch.float).view(1, 1, 2))
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("w, expected", [
    ([1, 1], 1.5 / 2.25),   # p = (0.5, 0.75), y = (0, 1): 2 * 0.75 / (1.25 + 1)
    ([0, 1], 1.5 / 1.75),   # the ambiguous voxel's 0.5 no longer counts as a false positive
])
def test_masked_soft_dice_one_class(w, expected):
    p = torch.tensor([0.5, 0.75]).view(1, 1, 2)
    y = torch.tensor([0.0, 1.0]).view(1, 1, 2)
    got = masked_soft_dice(p, y, torch.tensor(w, dtype=torch.float).view(1, 1, 2), batch_dice=False)
    assert got.item() == pytest.approx(expected, rel=1e-4)


def test_masked_soft_dice_leaves_out_fully_ambiguous_classes_and_does_batch_dice():
    p = torch.tensor([[[0.5, 0.75], [0.9, 0.9]], [[1.0, 0.0], [0.2, 0.2]]])   # (B=2, K=2, 2)
    y = torch.tensor([[[0.0, 1.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]])
    w = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]])    # class 2 ambiguous everywhere
    per_case = masked_soft_dice(p, y, w, batch_dice=False)
    assert per_case.item() == pytest.approx((1.5 / 2.25 + 2.0 / 2.0) / 2, rel=1e-4)
    batch = masked_soft_dice(p, y, w, batch_dice=True)
    assert batch.item() == pytest.approx(2 * 1.75 / (2.25 + 2.0), rel=1e-4)
    assert masked_soft_dice(p, y, torch.zeros_like(w), batch_dice=True).item() == 0.0


def test_partial_label_loss_masks_gradients_of_ambiguous_voxels():
    loss = PartialLabelLoss(LABELS, ignore_label=None, batch_dice=False)
    out = torch.zeros(1, 4, 5, requires_grad=True)
    target = torch.tensor([0, 1, 1, 3, 0]).view(1, 1, 5)
    with pytest.raises(RuntimeError, match="set_annotation"):
        loss(out, target)
    loss.set_annotation(torch.tensor([[True, False, True]]))
    value = loss(out, target)
    value.backward()
    g = out.grad[0]
    assert torch.all(g[0] == 0)                       # the fixed background channel takes no part
    assert g[2, 0] == 0 and g[2, 4] == 0              # class 2: its background voxels are ambiguous
    assert torch.all(g[2, 1:4] != 0) and torch.all(g[1] != 0) and torch.all(g[3] != 0)
    # value: all logits 0 -> every selected BCE term is ln 2; Dice per class from p = 0.5 on selected voxels
    dice = [(2 * 1.0 + 1e-5) / (2.5 + 2 + 1e-5), (1e-5) / (1.5 + 1e-5), (2 * 0.5 + 1e-5) / (2.5 + 1 + 1e-5)]
    assert value.item() == pytest.approx(LN2 - sum(dice) / 3, rel=1e-5)


def test_fixed_background_logit_gives_argmax_with_threshold():
    conv = torch.nn.Conv1d(1, 4, 1)

    class DS(torch.nn.Module):   # a network with deep-supervision outputs, as nnU-Net's
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return [self.conv(x), self.conv(x[..., ::2])]

    net = fix_background_logit(fix_background_logit(DS()))   # installing twice installs once
    outs = net(torch.randn(2, 1, 6))
    assert all(torch.all(o[:, 0] == 0) for o in outs)
    # the softmax argmax over [0, s] is the INERRANT rule: argmax sigmoid, background when all < 0.5
    s = torch.tensor([[-1.0, -0.5, -2.0], [-1.0, 0.3, 0.2], [2.0, 0.0, 3.0]])
    logits = torch.cat([torch.zeros(3, 1), s], 1)
    assert logits.argmax(1).tolist() == [0, 2, 3]
    probs = torch.softmax(logits, 1).T
    assert torch.allclose(class_sigmoids_from_softmax(probs), torch.sigmoid(s).T)
