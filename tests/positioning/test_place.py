"""Placement of a prior from a first prediction: coarse centre + KL search, missing classes, small volumes."""
import numpy as np
import pytest
import torch
from conftest import prior_from_labels

from nnunet_stipple.positioning.place import centres_from_label, position_from_probabilities
from nnunet_stipple.positioning.settings import PositioningSettings


def _label(shape=(30, 24, 24), shift=0):
    lab = np.zeros(shape, np.uint8)
    lab[8 + shift:18 + shift, 4:10, 4:12] = 1
    lab[12 + shift:20 + shift, 14:20, 12:18] = 2
    return lab


def _prior(labels):
    """Two organs, B = 2, built from ``labels`` as a fold's prior is."""
    return prior_from_labels(labels, {1: "a", 2: "b"})


def _onehot(label, k=3):
    return np.stack([(label == c).astype(np.float32) for c in range(k)])


@pytest.mark.parametrize("shift", [-5, 0, 3, 7])
def test_recovers_organ_centres_of_a_shifted_volume(shift):
    prior = _prior([_label(), _label()])
    target = _label(shift=shift)
    placement = position_from_probabilities(prior, _onehot(target), PositioningSettings(search_radius_mm=10))
    assert placement.ok
    for c, centre in centres_from_label(target, [1, 2]).items():
        assert placement.centres[c] == pytest.approx(centre)
        assert placement.classes[c].method == "kl"
        assert 0 < placement.classes[c].confidence <= 1


def test_missing_class_moves_with_the_found_ones():
    prior = _prior([_label(), _label()])
    target = _label(shift=4)
    target[target == 2] = 0  # the first prediction missed class 2
    placement = position_from_probabilities(prior, _onehot(target), PositioningSettings(search_radius_mm=10))
    assert placement.classes[2].method == "relative"
    assert placement.centres[2] == pytest.approx(list(np.asarray(prior.mean_centres[2]) + [4, 0, 0]))


def test_nothing_found_means_no_placement():
    prior = _prior([_label(), _label()])
    probs = _onehot(np.zeros((30, 24, 24), np.uint8))
    placement = position_from_probabilities(prior, probs, PositioningSettings(search_radius_mm=10))
    assert not placement.ok and all(c is None for c in placement.centres.values())


def test_volume_smaller_than_the_prior_boxes():
    prior = _prior([_label(), _label()])
    small = _label()[10:16, 5:9, 5:9]  # a 6x4x4 volume, smaller than both boxes
    placement = position_from_probabilities(prior, _onehot(small), PositioningSettings(search_radius_mm=5))
    p = prior.probabilities_on_grid(small.shape, placement.centres)
    assert np.all(np.isfinite(np.log(p))) and np.allclose(p.sum(0), 1, atol=1e-5)


def label_predictor():
    """A STIPPLEPredictor without a network, for its positioning (labels background, a, b)."""
    from nnunet_stipple.inference.predictor import STIPPLEPredictor
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    predictor = STIPPLEPredictor(device=torch.device("cpu"))
    predictor.label_manager = LabelManager({"background": 0, "a": 1, "b": 2}, regions_class_order=None)
    return predictor


def test_predictor_offsets_are_finite_and_fallback_is_uniform():
    from nnunet_stipple.inference.predictor import FoldPrior
    prior = FoldPrior(_prior([_label(), _label()]), 1e-3, PositioningSettings(search_radius_mm=5.0, coarse_placement="joint"))
    predictor = label_predictor()
    logits = torch.from_numpy(_onehot(_label(shift=2)) * 5)
    offsets, report = predictor.prior_offsets(prior, logits, "case")
    assert torch.isfinite(offsets).all() and report["method"] == "kl_search"
    assert report["repositioning_steps"] == 1 and report["joint"]["displacement"] == [2, 0, 0]  # labels shifted by 2
    with pytest.warns(UserWarning, match="uniform prior"):
        offsets, report = predictor.prior_offsets(prior, torch.zeros((3, 30, 24, 24)) + torch.tensor([5., 0, 0])[:, None, None, None], "empty")
    assert report["method"] == "uniform_fallback" and torch.count_nonzero(offsets) == 0
