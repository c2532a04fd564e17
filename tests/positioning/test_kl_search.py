"""Tests of the exhaustive KL translation search (nnunet_stipple.positioning.kl_search)."""

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from nnunet_stipple.positioning.kl_search import (
    PreparedReference,
    TranslationSearchResult,
    brute_force_kl_translation_search,
    kl_translation_search,
    mm_to_voxel_radius,
    prepare_reference,
)

# --------------------------------------------------------------------------------------------------
# fast == brute force
# --------------------------------------------------------------------------------------------------

# (volume shape, template shape, coarse start, radius, binary reference)
EQUIVALENCE_CASES = [
    pytest.param((9, 10, 11), (3, 4, 5), (3, 3, 3), (2, 2, 2), False, id="inside"),
    pytest.param((9, 10, 11), (3, 4, 5), (3, 3, 3), (0, 0, 0), False, id="radius0"),
    pytest.param((9, 10, 11), (3, 4, 5), (-2, -3, 4), (2, 1, 0), False, id="radius0-one-axis-border"),
    pytest.param((9, 10, 11), (4, 4, 4), (-1, -2, -3), (3, 3, 3), False, id="low-borders"),
    pytest.param((9, 10, 11), (4, 4, 4), (7, 8, 9), (3, 3, 3), True, id="high-borders"),
    pytest.param((6, 7, 8), (9, 10, 12), (-2, -2, -2), (2, 2, 2), False, id="template-larger-than-volume"),
    pytest.param((8, 8, 8), (3, 3, 3), (-6, 2, 9), (3, 2, 2), True, id="some-windows-invisible"),
    pytest.param((1, 12, 13), (1, 5, 3), (0, 4, 5), (1, 3, 4), False, id="single-slice"),
    pytest.param((10, 9, 8), (1, 1, 1), (5, 4, 3), (4, 4, 4), True, id="single-voxel-template"),
    pytest.param((12, 11, 10), (5, 6, 4), (4, 3, 3), (5, 1, 3), False, id="anisotropic-radius"),
]


def random_case(vol_shape, ref_shape, binary: bool, seed: int):
    """Probabilities and a reference (binary or not) for one case of EQUIVALENCE_CASES."""
    rng = np.random.default_rng(seed)
    q = rng.random(vol_shape)
    return q, (rng.random(ref_shape) > 0.5).astype(np.float64) if binary else rng.random(ref_shape)


@pytest.mark.parametrize("vol_shape, ref_shape, start, radius, binary", EQUIVALENCE_CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_fast_matches_brute_force(vol_shape, ref_shape, start, radius, binary, seed):
    q, r = random_case(vol_shape, ref_shape, binary, seed)
    fast = kl_translation_search(q, r, start, radius)
    slow = brute_force_kl_translation_search(q, r, start, radius)
    assert fast.costs.shape == tuple(2 * k + 1 for k in radius)
    assert slow.costs.shape == fast.costs.shape
    finite = np.isfinite(slow.costs)
    np.testing.assert_array_equal(np.isfinite(fast.costs), finite)
    np.testing.assert_allclose(fast.costs[finite], slow.costs[finite], rtol=1e-9, atol=1e-12)
    assert fast.offset == slow.offset
    assert fast.start == slow.start == tuple(s + t for s, t in zip(start, fast.offset))
    assert fast.cost == pytest.approx(slow.cost, rel=1e-9)
    assert fast.confidence == pytest.approx(slow.confidence, rel=1e-9, abs=1e-12)
    assert 0.0 <= fast.confidence <= 1.0


def test_no_visible_window_gives_inf_everywhere():
    q = np.full((5, 5, 5), 0.3)
    r = np.ones((2, 2, 2))
    for fn in (kl_translation_search, brute_force_kl_translation_search):
        res = fn(q, r, (20, 0, 0), 2)
        assert np.isinf(res.costs).all()
        assert res.offset == (0, 0, 0) and math.isinf(res.cost) and res.confidence == 0.0


def test_prepared_reference_reuse_is_identical():
    rng = np.random.default_rng(3)
    r = rng.random((4, 5, 3))
    prep = prepare_reference(r, (2, 3, 1))
    assert isinstance(prep, PreparedReference)
    for seed in range(3):
        q = np.random.default_rng(10 + seed).random((11, 12, 9))
        a = kl_translation_search(q, prep, (3, 2, 4), (2, 3, 1))
        b = kl_translation_search(q, r, (3, 2, 4), (2, 3, 1))
        np.testing.assert_array_equal(a.costs, b.costs)
        assert a.offset == b.offset


def test_float32_and_int_inputs():
    rng = np.random.default_rng(4)
    q = rng.random((8, 9, 10)).astype(np.float32)
    r = (rng.random((3, 3, 3)) > 0.5).astype(np.uint8)
    fast = kl_translation_search(q, r, (2, 3, 4), 2)
    slow = brute_force_kl_translation_search(q, r, (2, 3, 4), 2)
    np.testing.assert_allclose(fast.costs, slow.costs, rtol=1e-9)
    assert fast.offset == slow.offset
    assert isinstance(fast, TranslationSearchResult)


# --------------------------------------------------------------------------------------------------
# a known shift is recovered exactly
# --------------------------------------------------------------------------------------------------

VOL = (24, 30, 28)
RADIUS = (3, 4, 3)


def _blob_label(center, semi_axes, shape=VOL):
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    d = sum(((g - c) / a) ** 2 for g, c, a in zip((zz, yy, xx), center, semi_axes))
    label = d <= 1.0
    # asymmetric bump so the shape has no mirror symmetry
    label |= ((zz - center[0]) ** 2 + (yy - center[1] - semi_axes[1]) ** 2 + (xx - center[2]) ** 2) <= 4
    return label.astype(np.float64)


def _template(label, margin):
    nz = np.argwhere(label > 0)
    lo = nz.min(axis=0) - margin
    hi = nz.max(axis=0) + 1 + margin
    true_start = tuple(int(v) for v in lo)
    padded = np.pad(label, [(margin, margin)] * 3)  # crop may leave the volume near the borders
    crop = padded[tuple(slice(a + margin, b + margin) for a, b in zip(lo, hi))]
    return crop, true_start


def _probabilities(label, kind):
    if kind == "onehot":
        return label.copy()
    if kind == "noisy":
        rng = np.random.default_rng(7)
        return np.clip(0.15 + 0.7 * label + rng.normal(0.0, 0.1, label.shape), 0.0, 1.0)
    if kind == "blurred":
        return np.clip(gaussian_filter(label, sigma=1.2), 0.0, 1.0)
    raise AssertionError(kind)


SHIFT_CASES = [(0, 0, 0), (1, -2, 1), (-3, 4, 3), (3, -4, -3), (0, 4, 0), (-1, 0, 2), (2, 3, -1)]


@pytest.mark.parametrize("kind", ["onehot", "noisy", "blurred"])
@pytest.mark.parametrize("offset", SHIFT_CASES)
def test_known_shift_recovered(offset, kind):
    label = _blob_label(center=(12, 15, 13), semi_axes=(4, 6, 5))
    template, true_start = _template(label, margin=2)
    q = _probabilities(label, kind)
    coarse = tuple(s - o for s, o in zip(true_start, offset))
    fast = kl_translation_search(q, template, coarse, RADIUS)
    assert fast.start == true_start
    assert fast.offset == offset
    if kind == "onehot":
        assert fast.confidence > 0.99


@pytest.mark.parametrize("kind", ["onehot", "noisy", "blurred"])
@pytest.mark.parametrize("offset", [(3, 4, 3), (-3, -4, -3), (0, 0, 0)])
def test_known_shift_recovered_at_border(offset, kind):
    """Organ touching the volume corner: the template box and many candidate windows leave the volume."""
    label = _blob_label(center=(4, 5, 4), semi_axes=(4, 5, 4))
    template, true_start = _template(label, margin=2)
    assert min(true_start) < 0
    q = _probabilities(label, kind)
    coarse = tuple(s - o for s, o in zip(true_start, offset))
    fast = kl_translation_search(q, template, coarse, RADIUS)
    slow = brute_force_kl_translation_search(q, template, coarse, RADIUS)
    assert fast.start == slow.start == true_start
    np.testing.assert_allclose(fast.costs, slow.costs, rtol=1e-8)


# --------------------------------------------------------------------------------------------------
# tie-breaking
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0.5, 0.3, 1e-6, 1.0])
@pytest.mark.parametrize("fn", [kl_translation_search, brute_force_kl_translation_search])
def test_uniform_probabilities_give_zero_offset(value, fn):
    q = np.full((20, 21, 22), value)
    r = np.random.default_rng(0).random((5, 6, 4))
    res = fn(q, r, (7, 7, 8), (3, 2, 4))
    assert res.offset == (0, 0, 0)
    assert res.start == (7, 7, 8)
    if value == 0.5:
        assert res.cost == pytest.approx(math.log(2.0))
        assert res.confidence == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("fn", [kl_translation_search, brute_force_kl_translation_search])
def test_uniform_probabilities_border_crossing_give_zero_offset(fn):
    # q = 0.5: every voxel costs log 2 whatever r is, so all offsets tie even when windows are clipped
    q = np.full((6, 7, 8), 0.5)
    r = np.random.default_rng(1).random((4, 4, 4))
    res = fn(q, r, (-1, 4, 6), 3)
    assert res.offset == (0, 0, 0)


@pytest.mark.parametrize(
    "hot_offsets, expected",
    [
        ([(1, 0, 0), (-1, 0, 0)], (-1, 0, 0)),  # equal norm: lexicographic
        ([(0, 2, 0), (1, 1, 0)], (1, 1, 0)),  # smaller norm wins
        ([(0, 0, 1), (0, 1, 0), (1, 0, 0)], (0, 0, 1)),
        ([(2, 0, 0), (0, -2, 0), (0, 0, 2)], (0, -2, 0)),
    ],
)
@pytest.mark.parametrize("fn", [kl_translation_search, brute_force_kl_translation_search])
def test_tie_breaking(hot_offsets, expected, fn):
    s0 = (5, 5, 5)
    q = np.full((11, 11, 11), 0.1)
    for t in hot_offsets:
        q[tuple(s + o for s, o in zip(s0, t))] = 0.9
    r = np.ones((1, 1, 1))
    res = fn(q, r, s0, 2)
    assert res.offset == expected


# --------------------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------------------

_Q = np.full((6, 6, 6), 0.5)
_R = np.ones((2, 2, 2))
_Q_NAN = _Q.copy()
_Q_NAN[0, 0, 0] = np.nan
_R_INF = _R.copy()
_R_INF[1, 1, 1] = np.inf

BAD_INPUTS = [
    pytest.param(np.full((6, 6), 0.5), _R, (0, 0, 0), 1, 1e-4, id="2d-target"),
    pytest.param(np.full((2, 6, 6, 6), 0.5), _R, (0, 0, 0), 1, 1e-4, id="4d-target"),
    pytest.param(np.zeros((0, 6, 6)), _R, (0, 0, 0), 1, 1e-4, id="empty-target"),
    pytest.param(_Q, np.ones((2, 2)), (0, 0, 0), 1, 1e-4, id="2d-reference"),
    pytest.param(_Q, np.ones((2, 0, 2)), (0, 0, 0), 1, 1e-4, id="empty-reference"),
    pytest.param(_Q_NAN, _R, (0, 0, 0), 1, 1e-4, id="nan-target"),
    pytest.param(_Q, _R_INF, (0, 0, 0), 1, 1e-4, id="inf-reference"),
    pytest.param(_Q, _R * 2.0, (0, 0, 0), 1, 1e-4, id="reference-above-1"),
    pytest.param(_Q * 3.0, _R, (0, 0, 0), 1, 1e-4, id="target-above-1"),
    pytest.param(_Q, _R, (0, 0, 0), -1, 1e-4, id="negative-radius"),
    pytest.param(_Q, _R, (0, 0, 0), (1, -1, 1), 1e-4, id="negative-radius-axis"),
    pytest.param(_Q, _R, (0, 0, 0), 1.5, 1e-4, id="fractional-radius"),
    pytest.param(_Q, _R, (0, 0, 0), (1, 1), 1e-4, id="radius-2-entries"),
    pytest.param(_Q, _R, (0, 0), 1, 1e-4, id="start-2-entries"),
    pytest.param(_Q, _R, (0, 0.5, 0), 1, 1e-4, id="fractional-start"),
    pytest.param(_Q, _R, 3, 1, 1e-4, id="scalar-start"),
    pytest.param(_Q, _R, (0, 0, 0), 1, 0.0, id="eps-zero"),
    pytest.param(_Q, _R, (0, 0, 0), 1, 0.7, id="eps-too-large"),
]


@pytest.mark.parametrize("q, r, start, radius, eps", BAD_INPUTS)
@pytest.mark.parametrize("fn", [kl_translation_search, brute_force_kl_translation_search])
def test_bad_input_raises(q, r, start, radius, eps, fn):
    with pytest.raises(ValueError):
        fn(q, r, start, radius, eps=eps)


def test_prepared_reference_radius_mismatch_raises():
    prep = prepare_reference(_R, 2)
    with pytest.raises(ValueError, match="radius"):
        kl_translation_search(_Q, prep, (0, 0, 0), 1)


# --------------------------------------------------------------------------------------------------
# mm -> voxel radius
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "radius_mm, spacing, expected",
    [
        (20.0, (3.0, 1.3, 1.3), (7, 16, 16)),
        (3.9, (1.3, 1.3, 1.3), (3, 3, 3)),
        ((6.0, 2.0, 0.0), (3.0, 0.8, 1.0), (2, 3, 0)),
        (0.1, (5.0, 5.0, 5.0), (1, 1, 1)),
    ],
)
def test_mm_to_voxel_radius(radius_mm, spacing, expected):
    assert mm_to_voxel_radius(radius_mm, spacing) == expected


@pytest.mark.parametrize(
    "radius_mm, spacing", [(-1.0, (1, 1, 1)), (5.0, (1, 0, 1)), (5.0, (1, 1)), ((1, 2), (1, 1, 1))]
)
def test_mm_to_voxel_radius_bad(radius_mm, spacing):
    with pytest.raises(ValueError):
        mm_to_voxel_radius(radius_mm, spacing)
