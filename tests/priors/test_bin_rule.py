"""One bin-of-slice rule for the numpy prior builder and the torch lookup of training (priors/algorithm.py's
``bin_of_slice``): both variants give ``floor(s * B / depth)`` on a table of cases, and the training-time
lookup of :class:`PriorModule` reads, at every slice of a box, the bin the builder filled."""
import math

import numpy as np
import pytest
import torch

from nnunet_stipple.priors.algorithm import DEFAULT_NUM_BINS, bin_of_slice
from nnunet_stipple.priors.prior_module import PriorModule
from nnunet_stipple.priors.spatial_prior import SpatialPrior
from conftest import handmade_prior

# (depth of the box in slices, B)
TABLE = [(5, 1), (5, 5), (5, 2), (7, 3), (10, 4), (3, 3), (13, DEFAULT_NUM_BINS), (64, 5), (1, 1)]


@pytest.mark.parametrize("depth, num_bins", TABLE)
def test_numpy_and_torch_variants_agree_with_the_formula(depth, num_bins):
    slices = list(range(depth))
    expected = [math.floor(s * num_bins / depth) for s in slices]
    from_numpy = bin_of_slice(np.array(slices), depth, num_bins)
    from_list = bin_of_slice(slices, depth, num_bins)
    from_torch = bin_of_slice(torch.tensor(slices, dtype=torch.int32), depth, num_bins)
    assert isinstance(from_numpy, np.ndarray) and isinstance(from_torch, torch.Tensor)
    assert from_numpy.tolist() == from_list.tolist() == from_torch.tolist() == expected
    assert from_torch.dtype == torch.int64


def _one_class_prior(depth: int, num_bins: int, axial_axis: int) -> SpatialPrior:
    """One class whose box is ``depth`` slices deep along ``axial_axis``; bin b holds the value (b + 1) / (B + 1),
    so every bin can be told apart."""
    box = [2, 3, 2]
    box[axial_axis] = depth
    hist_shape = list(box)
    hist_shape[axial_axis] = num_bins
    values = (np.arange(num_bins, dtype=np.float32) + 1) / (num_bins + 1)
    shape = [1, 1, 1]
    shape[axial_axis] = num_bins
    hist = np.broadcast_to(values.reshape(shape), hist_shape).copy()
    return handmade_prior({1: hist}, {1: np.full(box, 255, dtype=np.uint8)}, {1: [(b - 1) / 2 for b in box]},
                          {1: "organ"}, dataset="Dataset997_Bins", axial_axis=axial_axis)


@pytest.mark.parametrize("axial_axis", [0, 2])
@pytest.mark.parametrize("depth, num_bins", [(d, b) for d, b in TABLE if b <= d])
def test_training_lookup_reads_the_bin_of_the_rule(depth, num_bins, axial_axis):
    prior = _one_class_prior(depth, num_bins, axial_axis)
    box = prior.box_size(1)
    module = PriorModule()
    module.set_prior(prior)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in box], indexing="ij"))
    looked_up = module.organ_probabilities_at(grid[None], {1: torch.zeros((1, 3), dtype=torch.long)},
                                              {1: torch.tensor([True])})[0, 1].numpy()
    per_slice = np.moveaxis(looked_up, axial_axis, 0).reshape(depth, -1)
    expected = prior.histograms[1].take(bin_of_slice(np.arange(depth), depth, num_bins), axis=axial_axis)
    np.testing.assert_array_equal(looked_up, expected)
    np.testing.assert_array_equal(looked_up, prior.expanded_histogram(1))
    for s in range(depth):
        assert np.all(per_slice[s] == (math.floor(s * num_bins / depth) + 1) / np.float32(num_bins + 1))
