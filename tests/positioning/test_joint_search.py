"""Joint placement of all organs by one displacement of the field of view (positioning/joint_search.py).

The FFT costs against the definition evaluated offset by offset (windows partly or wholly outside the
volume included), recovery of known displacements through both passes, and what the joint search changes
in ``position_from_probabilities``: a far false positive no longer decides where its organ's search starts.
"""
import numpy as np
import pytest

from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.positioning.api import position_prior
from nnunet_stipple.positioning.joint_search import _grid_inputs, block_mean, brute_force_joint_costs, \
    coarse_factors, joint_costs, joint_displacement
from nnunet_stipple.positioning.place import centres_from_label, position_from_probabilities
from nnunet_stipple.positioning.settings import PositioningSettings
from tests.positioning.test_anatomical_consistency import _with_far_false_positive
from tests.positioning.test_place import _label, _onehot, _prior


def _noisy(label, seed, weight=0.7):
    rng = np.random.default_rng(seed)
    q = weight * _onehot(label).astype(np.float64) + (1 - weight) * rng.random((3, *label.shape))
    return q / q.sum(0)


@pytest.mark.parametrize("spacing, coarse_mm, factors", [
    ([1, 1, 1], 6, [6, 6, 6]), ([3, 0.8, 0.8], 6, [2, 8, 8]), ([8, 12, 12], 6, [1, 1, 1]), ([2, 2, 2], 1, [1, 1, 1]),
])
def test_coarse_factors(spacing, coarse_mm, factors):
    assert coarse_factors(spacing, coarse_mm) == factors


def test_block_mean_by_hand():
    a = np.arange(2 * 3 * 1, dtype=float).reshape(2, 3, 1)      # [[0, 1, 2], [3, 4, 5]]
    out = block_mean(a, (2, 2, 1))                              # the partial block of axis 1 is padded with 0
    assert out.shape == (1, 2, 1)
    assert out[0, :, 0] == pytest.approx([(0 + 1 + 3 + 4) / 4, (2 + 0 + 5 + 0) / 4])


COST_CASES = [
    # (factors, around, radius, classes, shift of the target layout)
    ((1, 1, 1), (0, 0, 0), (4, 3, 2), [1, 2], 3),
    ((1, 1, 1), (-12, 0, 0), (5, 2, 2), [1, 2], 0),      # most windows leave the volume along axis 0
    ((2, 3, 1), (1, -1, 0), (4, 3, 2), [1, 2], -4),
    ((3, 2, 2), (0, 0, 0), (12, 12, 12), [2], 5),         # every window wholly outside at the extremes
]


@pytest.mark.parametrize("factors, around, radius, classes, shift", COST_CASES)
def test_fft_costs_match_the_definition(factors, around, radius, classes, shift):
    prior = _prior([_label(), _label(shift=2)])
    q = _noisy(_label(shape=(36, 24, 24), shift=shift), seed=shift + 10)
    inputs = _grid_inputs(prior, q, classes, factors)
    fast = joint_costs(inputs, around, radius)
    slow = brute_force_joint_costs(inputs, around, radius)
    assert fast.shape == tuple(2 * k + 1 for k in radius)
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("shift", [-7, 0, 4, 11])
@pytest.mark.parametrize("coarse_mm", [1.0, 3.0, 5.0])
def test_recovers_the_displacement_of_the_whole_layout(shift, coarse_mm):
    # mean training centres are those of shift 1 (labels shifted by 0 and 2): the displacement is shift - 1
    prior = _prior([_label(), _label(shift=2)])
    q = _noisy(_label(shape=(40, 24, 24), shift=shift), seed=3)
    result = joint_displacement(prior, q, [1, 2], coarse_mm=coarse_mm)
    assert result.displacement == [shift - 1, 0, 0]
    assert result.displacement_mm == pytest.approx([shift - 1.0, 0.0, 0.0])
    assert result.factors == [int(round(coarse_mm))] * 3


def test_the_larger_organ_decides_against_a_far_false_positive():
    """Class 1 (480 voxels) where it belongs, class 2 only as a far blob (360 voxels, 30 slices away): the
    layout follows class 1, and class 2's box is not dragged to the blob."""
    prior = _prior([_label(), _label()])
    target, first = _with_far_false_positive()
    result = joint_displacement(prior, _onehot(first).astype(np.float64), [1, 2], coarse_mm=1.0)
    true_shift = np.asarray(centres_from_label(target, [1])[1]) - prior.mean_centres[1]
    assert result.displacement == [int(v) for v in true_shift]


@pytest.mark.parametrize("coarse, class2_error", [("joint", 0.0), ("components", None)])
def test_false_positive_no_longer_decides_where_its_organ_search_starts(coarse, class2_error):
    prior = _prior([_label(), _label()])
    target, first = _with_far_false_positive()
    settings = PositioningSettings(search_radius_mm=3, anatomy_tolerance_mm=0.0, coarse_placement=coarse)
    placement = position_from_probabilities(prior, _onehot(first), settings)
    truth = centres_from_label(target, [1, 2])
    assert placement.centres[1] == pytest.approx(truth[1])
    error = np.abs(np.asarray(placement.centres[2]) - truth[2]).max()
    if class2_error is None:
        assert error > 20 and placement.joint is None          # its search started on the blob
    else:
        assert error == pytest.approx(class2_error)             # it started from the organs' layout
        assert placement.joint["classes"] == [1, 2] and placement.joint["displacement"] == [3, 0, 0]


def _organs_moved_apart(extra: int):
    """The layout of ``_label`` shifted by 3 slices, with organ 2 moved ``extra`` further slices away from organ 1:
    the relative motion between scans that one common displacement cannot follow."""
    lab = np.zeros((40, 24, 24), np.uint8)
    lab[11:21, 4:10, 4:12] = 1
    lab[15 + extra:23 + extra, 14:20, 12:18] = 2
    return lab


# (coarse placement, anatomy tolerance mm, first prediction, whose start class 2's search uses: "component" of the
# first prediction or "joint" start)
HYBRID_CASES = [
    ("hybrid", 10.0, "moved apart", "component"),     # the components' displacements 4 mm apart: they agree
    ("hybrid", 3.0, "moved apart", "joint"),          # beyond a 3 mm tolerance: the larger organ 1 wins the vote
    ("hybrid", 10.0, "far false positive", "joint"),  # the blob is 30 slices away
    ("hybrid", 0.0, "far false positive", "component"),   # tolerance 0: components always
    ("joint", 10.0, "moved apart", "joint"),
    ("components", 10.0, "far false positive", "component"),
]


@pytest.mark.parametrize("coarse, tolerance_mm, volume, expected_start", HYBRID_CASES)
def test_hybrid_takes_the_components_that_agree_with_each_other(coarse, tolerance_mm, volume, expected_start):
    prior = _prior([_label(), _label()])
    first = _organs_moved_apart(4) if volume == "moved apart" else _with_far_false_positive()[1]
    # radius 0: each class stays at its start, so the start is what the placement shows
    settings = PositioningSettings(search_radius_mm=0, anatomy_tolerance_mm=tolerance_mm, coarse_placement=coarse)
    placement = position_from_probabilities(prior, _onehot(first), settings)
    component = centres_from_label(first, [1, 2])
    assert placement.classes[2].coarse_centre is not None
    if expected_start == "component":
        assert placement.classes[2].coarse_centre == pytest.approx(component[2])
    else:
        joint_start = np.asarray(prior.mean_centres[2]) + placement.joint["displacement"]
        assert placement.classes[2].coarse_centre == pytest.approx(joint_start.tolist())
        assert np.abs(np.asarray(component[2]) - joint_start).max() >= 3
    # the joint search runs for the joint start, and for the hybrid one only when a component disagrees
    assert (placement.joint is None) == (expected_start == "component")


def test_classes_without_predicted_voxels_are_placed_from_the_others():
    prior = _prior([_label(), _label()])
    target = _label(shift=4)
    target[target == 2] = 0
    placement = position_from_probabilities(prior, _onehot(target), PositioningSettings(search_radius_mm=10,
                                                                                     coarse_placement="joint"))
    assert placement.joint["classes"] == [1]
    assert placement.classes[1].method == "kl" and placement.classes[2].method == "relative"
    assert placement.centres[2] == pytest.approx(list(np.asarray(prior.mean_centres[2]) + [4, 0, 0]))


def test_unknown_coarse_method_is_refused():
    with pytest.raises(StippleInputError, match="coarse_placement must be one of joint, components, hybrid"):
        PositioningSettings(coarse_placement="centre")


def test_position_prior_reports_the_joint_displacement():
    prior = _prior([_label(), _label()])
    probabilities = _onehot(_label(shift=5)).astype(np.float32)
    out = position_prior(prior, probabilities=probabilities,
                         settings=PositioningSettings(search_radius_mm=5, coarse_placement="joint"))
    assert out["settings"]["coarse_placement"] == "joint" and out["joint"]["displacement"] == [5, 0, 0]
    # the default start (hybrid): the components agree, so the joint search does not run
    out = position_prior(prior, probabilities=probabilities, settings=PositioningSettings(search_radius_mm=5))
    assert out["settings"]["coarse_placement"] == "hybrid" and out["joint"] is None
    out = position_prior(prior, probabilities=probabilities,
                         settings=PositioningSettings(search_radius_mm=5, coarse_placement="components"))
    assert out["settings"]["coarse_placement"] == "components" and out["joint"] is None
