"""The torch searches (positioning/device_search.py) against the numpy ones and the brute-force references,
over the tables of cases of test_kl_search.py and test_joint_search.py (windows past the borders, templates
larger than the volume, windows that see nothing, anisotropic radii, coarse grids)."""
import math

import numpy as np
import pytest
import torch

from nnunet_stipple.positioning.device_search import Spectrum, block_mean, joint_costs, region_slices, \
    translation_search, window_sums
from nnunet_stipple.positioning.joint_search import _grid_inputs, brute_force_joint_costs
from nnunet_stipple.positioning.joint_search import block_mean as numpy_block_mean
from nnunet_stipple.positioning.joint_search import joint_costs as numpy_joint_costs
from nnunet_stipple.positioning.kl_search import brute_force_kl_translation_search, kl_translation_search
from tests.positioning.test_joint_search import COST_CASES, _noisy
from tests.positioning.test_kl_search import EQUIVALENCE_CASES, RADIUS, SHIFT_CASES, _blob_label, \
    _probabilities, _template, random_case
from tests.positioning.test_place import _label, _prior


def _search(q: np.ndarray, reference: np.ndarray, start, radius, eps=1e-4):
    """The torch search as the placement calls it: the region's part inside the volume, float32 probabilities."""
    spectrum = Spectrum.of(torch.from_numpy(np.asarray(reference, np.float64)), radius)
    region = [s - k for s, k in zip(start, radius)], [e + 2 * k for e, k in zip(reference.shape, radius)]
    slices = region_slices(q.shape, *region)
    crop, dst = (None, None) if slices is None else (torch.from_numpy(q)[slices[0]], slices[1])
    return translation_search(crop, dst, q.shape, start, spectrum, eps)


@pytest.mark.parametrize("vol_shape, ref_shape, start, radius, binary", EQUIVALENCE_CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_torch_search_equals_numpy_and_brute_force(vol_shape, ref_shape, start, radius, binary, seed):
    q, r = random_case(vol_shape, ref_shape, binary, seed)
    fast = _search(q, r, start, radius)
    for oracle in (kl_translation_search(q, r, start, radius), brute_force_kl_translation_search(q, r, start, radius)):
        costs = fast.costs.numpy()
        np.testing.assert_array_equal(np.isfinite(costs), np.isfinite(oracle.costs))
        finite = np.isfinite(oracle.costs)
        np.testing.assert_allclose(costs[finite], oracle.costs[finite], rtol=1e-9, atol=1e-12)
        assert (fast.offset, fast.start) == (oracle.offset, oracle.start)
        assert fast.cost == pytest.approx(oracle.cost, rel=1e-9) or math.isinf(fast.cost) == math.isinf(oracle.cost)
        assert fast.confidence == pytest.approx(oracle.confidence, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("kind", ["onehot", "noisy", "blurred"])
@pytest.mark.parametrize("offset", SHIFT_CASES)
def test_torch_search_recovers_known_shifts_like_numpy(offset, kind):
    label = _blob_label(center=(12, 15, 13), semi_axes=(4, 6, 5))
    template, true_start = _template(label, margin=2)
    q = _probabilities(label, kind).astype(np.float32)
    coarse = tuple(s - o for s, o in zip(true_start, offset))
    fast = _search(q, template, coarse, RADIUS)
    assert fast.offset == kl_translation_search(q, template, coarse, RADIUS).offset == offset


def test_nothing_visible_gives_inf_and_the_zero_offset():
    result = _search(np.full((5, 5, 5), 0.3), np.ones((2, 2, 2)), (20, 0, 0), (2, 2, 2))
    assert torch.isinf(result.costs).all() and result.offset == (0, 0, 0) and result.confidence == 0.0


@pytest.mark.parametrize("offset, window, n_out", [((0, 0, 0), (2, 3, 1), (3, 2, 5)), ((2, 1, 0), (3, 3, 3), (6, 5, 4)),
                                                   ((4, 0, 3), (1, 2, 2), (2, 4, 3))])
def test_window_sums_by_definition(offset, window, n_out):
    a = torch.from_numpy(np.random.default_rng(5).random((3, 4, 2)))
    region = np.zeros([max(o + s, n + w - 1) for o, s, n, w in zip(offset, a.shape, n_out, window)])
    region[tuple(slice(o, o + s) for o, s in zip(offset, a.shape))] = a.numpy()
    expected = np.zeros(n_out)
    for idx in np.ndindex(*n_out):
        expected[idx] = region[tuple(slice(i, i + w) for i, w in zip(idx, window))].sum()
    np.testing.assert_allclose(window_sums(a, offset, window, n_out).numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape, factors", [((7, 5, 3), (2, 2, 1)), ((6, 6, 6), (3, 2, 6)), ((4, 4, 4), (1, 1, 1)),
                                           ((3, 5, 2), (4, 2, 3))])
def test_block_mean_equals_numpy(shape, factors):
    a = np.random.default_rng(6).random(shape).astype(np.float32)
    np.testing.assert_allclose(block_mean(torch.from_numpy(a), factors).numpy(), numpy_block_mean(a, factors),
                               rtol=1e-6)


@pytest.mark.parametrize("factors, around, radius, classes, shift", COST_CASES)
def test_torch_joint_costs_equal_numpy_and_brute_force(factors, around, radius, classes, shift):
    prior = _prior([_label(), _label(shift=2)])
    q = _noisy(_label(shape=(36, 24, 24), shift=shift), seed=shift + 10).astype(np.float32)
    inputs = _grid_inputs(prior, q, classes, factors)
    on_device = [(torch.from_numpy(np.ascontiguousarray(qc)), Spectrum.of(torch.from_numpy(r.astype(np.float64)), radius),
                  start) for qc, r, start in inputs.values()]
    fast = joint_costs(on_device, around, radius, 1e-4).numpy()
    np.testing.assert_allclose(fast, numpy_joint_costs(inputs, around, radius), rtol=1e-9, atol=1e-8)
    np.testing.assert_allclose(fast, brute_force_joint_costs(inputs, around, radius), rtol=1e-9, atol=1e-8)
