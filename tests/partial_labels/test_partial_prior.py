"""STIPPLE with partial labels: the prior of a class comes from the cases that annotate it, and the per-class
sigmoid offsets leave the fixed background logit at 0."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nnunet_stipple.activation.prior_driven import class_sigmoid_offsets
from tests.conftest import prior_from_labels


def _labels():
    a = np.zeros((4, 6, 6), np.uint8)
    a[1:3, 1:3, 1:3] = 1
    a[1:3, 3:5, 3:5] = 2
    b = np.zeros((4, 6, 6), np.uint8)
    b[0:2, 0:3, 0:2] = 1
    b[2:4, 2:5, 3:6] = 2
    return a, b


def test_prior_of_a_class_comes_from_the_cases_that_annotate_it():
    a, b = _labels()
    b_partial = np.where(b == 2, 0, b)      # class 2 not annotated in case b: no voxel of it (declaration check)
    names = {1: "liver", 2: "spleen"}
    full = prior_from_labels([a, b], names)
    partial = prior_from_labels([a, b_partial], names)
    only_a = prior_from_labels([a], names)
    assert partial.num_cases_per_class == {1: 2, 2: 1}
    assert np.array_equal(partial.histograms[2], only_a.histograms[2])      # spleen: case a only
    assert np.array_equal(partial.histograms[1], full.histograms[1])        # liver: both cases
    assert 2 not in partial.case_centres["case_1"]     # no organ box for the class the case does not annotate


@pytest.mark.parametrize("probs, expected", [
    ([0.5, 0.25, 0.25], [0.0, -math.log(3), -math.log(3)]),
    ([0.2, 0.8, 0.0], [0.0, math.log(4), math.log(0.01 / 0.99)]),    # 0 is clipped to the floor 0.01
    ([0.0, 1.0, 0.0], [0.0, math.log(0.99 / 0.01), math.log(0.01 / 0.99)]),
])
def test_class_sigmoid_offsets(probs, expected):
    p = torch.tensor(probs).view(1, 3, 1)
    off = class_sigmoid_offsets(p, floor=0.01)
    assert off.shape == (1, 3, 1)
    assert off.view(-1).tolist() == pytest.approx(expected, rel=1e-5)
    assert class_sigmoid_offsets(p.view(3, 1), 0.01, channel_dim=0).view(-1).tolist() == pytest.approx(expected,
                                                                                                       rel=1e-5)


def test_stipple_inerrant_offsets_leave_unannotated_classes_and_uniform_samples_without_prior():
    from types import SimpleNamespace

    from nnunet_stipple.partial_labels.declaration import PartialLabels
    from nnunet_stipple.trainers.stipple_inerrant import STIPPLETrainer_INERRANT
    decl = PartialLabels({1: "liver", 2: "spleen"}, {"b": frozenset({1})})
    fake = SimpleNamespace(stipple_floor=0.01, partial_labels=decl)
    pt = torch.tensor([0.2, 0.6, 0.2]).view(1, 3, 1, 1).repeat(3, 1, 2, 2)        # (B=3, 1+K, 2, 2)
    uniform = torch.zeros(3, 4, 4, dtype=torch.bool)
    uniform[2] = True                                                               # prior dropout on sample 3
    off = STIPPLETrainer_INERRANT.output_offset(fake, pt, uniform, (2, 2), {"keys": ["a", "b", "a"]})
    assert torch.all(off[:, 0] == 0)                                                # fixed background logit
    assert torch.allclose(off[0, 1], torch.tensor(math.log(1.5))) and torch.allclose(off[0, 2], torch.tensor(
        math.log(0.25)))
    assert torch.allclose(off[1, 1], torch.tensor(math.log(1.5))) and torch.all(off[1, 2] == 0)   # b: no spleen
    assert torch.all(off[2] == 0)
