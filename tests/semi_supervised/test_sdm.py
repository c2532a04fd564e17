"""SASSNet's signed distance maps (nnunet_stipple.semi_supervised.sdm) against a brute-force computation on small
hand-made labels: sign convention, per-class normalisation, inner boundary, empty and full classes."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from nnunet_stipple.semi_supervised.sdm import sdm_targets, signed_distance_map


def brute_force_sdm(mask: np.ndarray, spacing=None) -> np.ndarray:
    """Every voxel's Euclidean distance to the nearest voxel of the other kind, normalised by the largest one on its
    side; inner boundary (a face neighbour outside, not counting the patch border) set to 0."""
    mask = mask.astype(bool)
    spacing = np.ones(mask.ndim) if spacing is None else np.asarray(spacing, float)
    points = np.array(list(itertools.product(*map(range, mask.shape))))
    inside, outside = points[mask.ravel()], points[~mask.ravel()]
    dist = np.zeros(mask.shape)
    for p in points:
        others = outside if mask[tuple(p)] else inside
        dist[tuple(p)] = np.min(np.sqrt((((others - p) * spacing) ** 2).sum(1)))
    sdm = np.where(mask, -dist / dist[mask].max(), dist / dist[~mask].max())
    for p in map(tuple, inside):
        for axis in range(mask.ndim):
            for step in (-1, 1):
                q = list(p)
                q[axis] += step
                if 0 <= q[axis] < mask.shape[axis] and not mask[tuple(q)]:
                    sdm[p] = 0
    return sdm


def _square(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


MASKS = {
    "2d square": (_square((7, 8), (2, 2), (5, 6)), None),
    "2d square anisotropic": (_square((7, 8), (2, 2), (5, 6)), (2.0, 0.5)),
    "2d touching the border": (_square((6, 6), (0, 0), (3, 6)), None),
    "2d single voxel": (_square((5, 5), (2, 2), (3, 3)), None),
    "2d two blobs": (_square((8, 8), (1, 1), (3, 3)) | _square((8, 8), (5, 4), (8, 8)), None),
    "3d cube": (_square((5, 6, 7), (1, 2, 2), (4, 5, 6)), None),
}


@pytest.mark.parametrize("name", sorted(MASKS))
def test_sdm_matches_brute_force(name):
    mask, spacing = MASKS[name]
    sdm = signed_distance_map(mask, spacing)
    assert sdm.dtype == np.float32 and sdm.shape == mask.shape
    np.testing.assert_allclose(sdm, brute_force_sdm(mask, spacing), atol=1e-6)


def test_sign_and_range():
    mask = _square((9, 9), (2, 2), (7, 7))
    sdm = signed_distance_map(mask)
    assert sdm[4, 4] == -1.0                         # the deepest inside voxel
    assert sdm[0, 0] == 1.0                          # the farthest outside voxel
    assert sdm[2, 4] == 0.0 and sdm[1, 4] > 0        # inner boundary 0, just outside positive
    assert (sdm[mask] <= 0).all() and (sdm[~mask] > 0).all() and np.abs(sdm).max() <= 1


@pytest.mark.parametrize("mask", [np.zeros((4, 5), bool), np.ones((4, 5), bool), np.ones((2, 3, 4), bool)])
def test_empty_and_full_classes_have_zero_sdm(mask):
    sdm = signed_distance_map(mask)
    assert sdm.shape == mask.shape and not sdm.any()


def test_targets_per_class_region_and_ignore():
    seg = np.zeros((2, 1, 6, 6), np.int16)
    seg[0, 0, 1:3, 1:3] = 1
    seg[0, 0, 3:6, 3:6] = 2
    seg[1, 0, :, :] = 2
    seg[1, 0, 0, 0] = 3                              # the ignore label
    targets, mask = sdm_targets(seg, [1, 2, (1, 2)], ignore_label=3)
    assert targets.shape == (2, 3, 6, 6)
    np.testing.assert_array_equal(targets[0, 0], signed_distance_map(seg[0, 0] == 1))   # normalised per class
    np.testing.assert_array_equal(targets[0, 1], signed_distance_map(seg[0, 0] == 2))
    np.testing.assert_array_equal(targets[0, 2], signed_distance_map(seg[0, 0] > 0))    # the region {1, 2}
    assert not targets[1, 0].any()                   # class 1 absent from the second patch
    assert mask.shape == (2, 1, 6, 6) and mask[1, 0, 0, 0] == 0 and mask.sum() == 2 * 36 - 1
    assert sdm_targets(seg, [1], ignore_label=None)[1] is None
    with pytest.raises(ValueError, match=r"\(N, 1, ...\)"):
        sdm_targets(seg[:, 0], [1])
