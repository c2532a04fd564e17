"""Algorithm 1 (organ boxes, alignment, z-binned histograms) against an independent loop-based implementation.

The reference below is deliberately written voxel by voxel with plain Python loops and no code from
``nnunet_stipple``: bounding box per case and class, box centre, box start ``floor(c - (E - 1) / 2)``, every box
slice inside the volume goes to bin ``floor(s * B / Ez)`` and adds its in-plane crop (zero outside the image),
and each bin is divided by the number of slices it received.
"""
import math

import numpy as np
import pytest

from nnunet_stipple.priors.algorithm import (
    box_start,
    build_histograms,
    class_bounding_boxes,
    largest_extents,
    organ_centre,
)


# ---- independent reference ---------------------------------------------------------------------------------
def reference_algorithm_1(labels, classes, num_bins, axial_axis):
    """Returns {class: (hist with axial axis = num_bins, slice_counts, box_size, num_cases)}."""
    per_class = {}
    for case, lab in enumerate(labels):
        for c in classes:
            where = np.argwhere(lab == c)
            if len(where) == 0:
                continue  # absent class: skipped for this case
            lo = [int(v) for v in where.min(0)]
            hi = [int(v) for v in where.max(0)]
            per_class.setdefault(c, []).append((case, lo, hi))

    out = {}
    for c, entries in per_class.items():
        extent = [max(hi[d] - lo[d] + 1 for _, lo, hi in entries) for d in range(3)]
        a = axial_axis
        p, q = [d for d in range(3) if d != a]
        hist = np.zeros((num_bins, extent[p], extent[q]), dtype=np.float64)  # axial first
        counts = [0] * num_bins
        for case, lo, hi in entries:
            lab = labels[case]
            centre = [(lo[d] + hi[d]) / 2 for d in range(3)]
            start = [math.floor(centre[d] - (extent[d] - 1) / 2) for d in range(3)]
            for s in range(extent[a]):
                z = start[a] + s
                if z < 0 or z >= lab.shape[a]:
                    continue  # box slice outside the volume: not counted
                b = (s * num_bins) // extent[a]
                counts[b] += 1
                for i in range(extent[p]):
                    for j in range(extent[q]):
                        idx = [0, 0, 0]
                        idx[a], idx[p], idx[q] = z, start[p] + i, start[q] + j
                        if all(0 <= idx[d] < lab.shape[d] for d in range(3)):
                            hist[b, i, j] += 1.0 if lab[tuple(idx)] == c else 0.0
                        # in-plane outside the image: counts as organ absent (adds 0)
        for b in range(num_bins):
            if counts[b] > 0:
                hist[b] /= counts[b]
        # back to the array's own axis order
        hist = np.moveaxis(hist, 0, a)
        out[c] = (hist, np.array(counts), tuple(extent), len(entries))
    return out


def random_labels(seed, num_cases, classes, axial_axis, absent=()):
    """Small volumes of varying shape with random blobs, some at the borders; ``absent`` = (case, class) pairs."""
    rng = np.random.default_rng(seed)
    labels = []
    for case in range(num_cases):
        shape = [int(rng.integers(6, 10)) for _ in range(3)]
        shape[axial_axis] = int(rng.integers(7, 12))
        lab = np.zeros(shape, dtype=np.int16)
        for c in classes:
            if (case, c) in absent:
                continue
            lo = [int(rng.integers(0, s - 1)) for s in shape]
            # every other case pushes the organ against a border
            if case % 2 == 0:
                d = int(rng.integers(0, 3))
                lo[d] = 0
            size = [int(rng.integers(1, 5)) for _ in range(3)]
            hi = [min(l + sz, s) for l, sz, s in zip(lo, size, shape)]
            region = tuple(slice(l, h) for l, h in zip(lo, hi))
            fill = rng.random([h - l for l, h in zip(lo, hi)]) < 0.7
            fill.flat[0] = True
            sub = lab[region]
            sub[fill] = c
        # a stray voxel at the far corner of the last class for the odd cases (organ touching the end border)
        if case % 2 == 1 and (case, classes[-1]) not in absent:
            lab[tuple(s - 1 for s in shape)] = classes[-1]
        labels.append(lab)
    return labels


def assert_matches_reference(labels, classes, num_bins, axial_axis):
    hists = build_histograms(labels, classes, num_bins, axial_axis)
    ref = reference_algorithm_1(labels, classes, num_bins, axial_axis)
    assert sorted(hists) == sorted(ref)
    for c, (r_hist, r_counts, r_box, r_cases) in ref.items():
        h = hists[c]
        assert tuple(h.box_size) == r_box
        assert h.num_cases == r_cases
        np.testing.assert_array_equal(h.slice_counts, r_counts)
        np.testing.assert_allclose(h.normalised(), r_hist, rtol=0, atol=1e-6)
    return hists, ref


# ---- hand-computed example -------------------------------------------------------------------------------
def hand_example():
    """Two cases of shape (5, 2, 2), axial axis 0.

    Class 1, case A: voxels (0,0,0), (1,0,0), (2,0,0), (2,0,1): box (3,1,2), centre (1, 0, 0.5), start (0,0,0)
      slices (rows 0, cols 0..1): s0 [1,0], s1 [1,0], s2 [1,1]
    Class 1, case B: voxel (4,1,0): box (1,1,1), centre (4,1,0), start (3, 1, -1) with E = (3,1,2)
      s0 (z=3) [0 (outside), 0], s1 (z=4) [0 (outside), 1], s2 (z=5) outside the volume: not counted
    Class 2, case B only: voxel (0,1,1). Class 3: absent everywhere.
    """
    a = np.zeros((5, 2, 2), dtype=np.uint8)
    a[0, 0, 0] = a[1, 0, 0] = a[2, 0, 0] = a[2, 0, 1] = 1
    b = np.zeros((5, 2, 2), dtype=np.uint8)
    b[4, 1, 0] = 1
    b[0, 1, 1] = 2
    return [a, b]


@pytest.mark.parametrize("num_bins, expected, counts", [
    (3, [[[0.5, 0.0]], [[0.5, 0.5]], [[1.0, 1.0]]], [2, 2, 1]),
    # bins of s = 0, 1, 2 with B = 2: 0, 0, 1
    (2, [[[0.5, 0.25]], [[1.0, 1.0]]], [4, 1]),
    # B = 1: sum [3, 2] over 5 slices
    (1, [[[0.6, 0.4]]], [5]),
])
def test_hand_computed_example(num_bins, expected, counts):
    labels = hand_example()
    hists = build_histograms(labels, [1, 2, 3], num_bins, axial_axis=0)
    assert sorted(hists) == [1, 2]  # class 3 is absent from every case
    h = hists[1]
    assert h.box_size == (3, 1, 2)
    assert h.num_cases == 2
    np.testing.assert_array_equal(h.slice_counts, counts)
    np.testing.assert_allclose(h.normalised(), np.array(expected, dtype=np.float32), atol=1e-7)
    assert hists[2].box_size == (1, 1, 1)
    assert hists[2].num_cases == 1
    # the reference agrees with the hand computation too
    assert_matches_reference(labels, [1, 2, 3], num_bins, 0)


def test_hand_example_boxes_and_starts():
    labels = hand_example()
    boxes = class_bounding_boxes(labels[1], [1, 2, 3])
    assert sorted(boxes) == [1, 2]
    np.testing.assert_array_equal(boxes[1][0], [4, 1, 0])
    np.testing.assert_array_equal(box_start(organ_centre(*boxes[1]), (3, 1, 2)), [3, 1, -1])
    np.testing.assert_array_equal(box_start([1.0, 0.0, 0.5], (3, 1, 2)), [0, 0, 0])
    # even box around a half-integer centre and odd box around an integer centre are symmetric
    np.testing.assert_array_equal(box_start([2.5, 3.0, 0.0], (4, 3, 1)), [1, 2, 0])


@pytest.mark.parametrize("slice_idx, depth, num_bins, expected", [
    ([0, 1, 2, 3, 4], 5, 1, [0, 0, 0, 0, 0]),
    ([0, 1, 2, 3, 4], 5, 5, [0, 1, 2, 3, 4]),
    ([0, 1, 2, 3, 4], 5, 2, [0, 0, 0, 1, 1]),
    ([0, 1, 2, 3, 4, 5, 6], 7, 3, [0, 0, 0, 1, 1, 2, 2]),
])
def test_bin_of_slice_matches_floor_formula(slice_idx, depth, num_bins, expected):
    from nnunet_stipple.priors.algorithm import bin_of_slice
    got = bin_of_slice(np.array(slice_idx), depth, num_bins)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, [math.floor(s * num_bins / depth) for s in slice_idx])


# ---- random volumes against the reference -----------------------------------------------------------------
CASES = [
    # seed, axial axis, B, absent (case, class) pairs
    (0, 0, 1, ()),
    (1, 1, 1, ((1, 2),)),
    (2, 2, 1, ((0, 1), (3, 3))),
    (3, 0, 2, ((2, 3),)),
    (4, 1, 3, ()),
    (5, 2, 2, ((1, 1), (2, 1))),
    (6, 0, "depth", ()),
    (7, 1, "depth", ((0, 2),)),
    (8, 2, "depth", ((3, 1),)),
]


@pytest.mark.parametrize("seed, axial_axis, num_bins, absent", CASES)
def test_random_volumes_match_reference(seed, axial_axis, num_bins, absent):
    classes = [1, 2, 3]
    labels = random_labels(seed, 4, classes, axial_axis, absent)
    if num_bins == "depth":
        # B = depth of the shallowest class (every bin of every class then gets slices)
        extents = largest_extents([class_bounding_boxes(l, classes) for l in labels], classes)
        num_bins = min(e[axial_axis] for e in extents.values())
    assert_matches_reference(labels, classes, num_bins, axial_axis)


@pytest.mark.parametrize("seed, axial_axis", [(10, 0), (11, 1), (12, 2)])
def test_b_equal_to_class_depth_gives_one_slice_per_bin(seed, axial_axis):
    """With B = Ez each bin is one box slice: the histogram is the mean aligned mask (the template)."""
    classes = [1, 2]
    labels = random_labels(seed, 5, classes, axial_axis)
    extents = largest_extents([class_bounding_boxes(l, classes) for l in labels], classes)
    for c in classes:
        depth = extents[c][axial_axis]
        hists = build_histograms(labels, [c], depth, axial_axis)
        ref = reference_algorithm_1(labels, [c], depth, axial_axis)
        np.testing.assert_allclose(hists[c].normalised(), ref[c][0], atol=1e-6)
        assert hists[c].slice_counts.max() <= len(labels)


@pytest.mark.parametrize("seed, axial_axis", [(20, 0), (21, 1), (22, 2)])
def test_b1_is_the_mean_over_all_box_slices(seed, axial_axis):
    """B = 1 is the 2D prior: the slice-count weighted mean of the B = depth histogram."""
    classes = [1, 2, 3]
    labels = random_labels(seed, 4, classes, axial_axis, absent=((1, 3),))
    h1 = build_histograms(labels, classes, 1, axial_axis)
    for c, h in h1.items():
        depth = h.box_size[axial_axis]
        hd = build_histograms(labels, [c], depth, axial_axis)[c]
        weights = hd.slice_counts.astype(np.float64)
        full = np.moveaxis(hd.normalised().astype(np.float64), axial_axis, 0)
        mean = np.tensordot(weights, full, axes=(0, 0)) / weights.sum()
        np.testing.assert_allclose(np.moveaxis(h.normalised(), axial_axis, 0)[0], mean, atol=1e-6)
        assert h.slice_counts[0] == hd.slice_counts.sum()
        # and it equals the plain mean over every counted box slice of every case
        ref = reference_algorithm_1(labels, [c], 1, axial_axis)[c]
        np.testing.assert_allclose(h.normalised(), ref[0], atol=1e-6)


@pytest.mark.parametrize("seed, axial_axis", [(30, 0), (31, 1), (32, 2), (33, 0)])
def test_box_sizes_are_largest_extents_and_every_organ_fits(seed, axial_axis):
    classes = [1, 2, 3]
    labels = random_labels(seed, 5, classes, axial_axis, absent=((0, 2), (4, 1)))
    hists = build_histograms(labels, classes, 1, axial_axis)
    for c, h in hists.items():
        extents = []
        for lab in labels:
            where = np.argwhere(lab == c)
            if len(where) == 0:
                continue
            lo, hi = where.min(0), where.max(0)
            extents.append(hi - lo + 1)
            start = box_start(organ_centre(lo, hi), h.box_size)
            stop = start + np.array(h.box_size) - 1
            assert np.all(start <= lo) and np.all(hi <= stop), (c, lo, hi, start, stop)
        assert h.box_size == tuple(int(v) for v in np.max(extents, axis=0))


@pytest.mark.parametrize("values", [[0, 1, 2], [-1, 0, 2, 5], [255, 3]])
def test_class_bounding_boxes_ignore_other_values(values):
    """The ignore label / padding values never make a class box; classes not requested are left out."""
    rng = np.random.default_rng(len(values))
    lab = rng.choice(values, size=(6, 7, 8)).astype(np.int16)
    boxes = class_bounding_boxes(lab, [1, 2, 3])
    for c in (1, 2, 3):
        where = np.argwhere(lab == c)
        if len(where) == 0:
            assert c not in boxes
        else:
            np.testing.assert_array_equal(boxes[c][0], where.min(0))
            np.testing.assert_array_equal(boxes[c][1], where.max(0))


def test_values_stay_in_unit_interval_and_absent_class_left_out():
    labels = random_labels(40, 4, [1, 2, 3], 0, absent=tuple((i, 3) for i in range(4)))
    hists = build_histograms(labels, [1, 2, 3], 2, 0)
    assert 3 not in hists
    for h in hists.values():
        n = h.normalised()
        assert n.dtype == np.float32
        assert n.min() >= 0 and n.max() <= 1
