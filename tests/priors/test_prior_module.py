"""PriorModule: the prior inside the network's state dict, the refusal hook and the training-time lookup."""
import numpy as np
import pytest
import torch
from conftest import prior_from_labels
from torch import nn

from nnunet_stipple.priors.algorithm import (
    box_start,
)
from nnunet_stipple.priors.prior_module import (
    PRIOR_ATTRIBUTE,
    PriorModule,
    PriorRequiredError,
    allow_prior_free_forward,
    attach_prior_module,
    prior_module_of,
)
from nnunet_stipple.priors.spatial_prior import SpatialPrior

LABELS = {1: "a", 2: "b", 3: "c"}
SHAPE = (10, 9, 8)


def synthetic_labels(seed, num_cases=4):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_cases):
        lab = np.zeros(SHAPE, dtype=np.int16)
        for c in LABELS:
            lo = [int(rng.integers(0, s - 3)) for s in SHAPE]
            size = [int(rng.integers(2, 5)) for _ in range(3)]
            region = tuple(slice(l, l + sz) for l, sz in zip(lo, size))
            sub = lab[region]
            sub[rng.random(sub.shape) < 0.7] = c
            sub.flat[0] = c
        out.append(lab)
    return out


def make_prior(seed=0, num_bins=2, axial_axis=0):
    return prior_from_labels(synthetic_labels(seed), LABELS, num_bins, axial_axis, spacing=(3.0, 1.0, 1.0),
                             dataset="Dataset998_Mod", fold="1")


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.head = nn.Conv3d(4, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)))


def network_with_prior(prior=None, settings=None):
    net = attach_prior_module(TinyNet())
    if prior is not None:
        prior_module_of(net).set_prior(prior, settings)
    return net


def assert_same_prior(a: SpatialPrior, b: SpatialPrior):
    ma, mb = a.metadata(), b.metadata()
    ma["case_centres"] = mb["case_centres"] = {}  # not carried into checkpoints
    assert ma == mb
    aa, ba = a.arrays(), b.arrays()
    assert sorted(aa) == sorted(ba)
    for k in aa:
        assert aa[k].dtype == ba[k].dtype
        np.testing.assert_array_equal(aa[k], ba[k], err_msg=k)


# ---- state dict ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_bins, axial_axis", [(1, 0), (2, 1), (3, 2)])
def test_state_dict_round_trip_into_fresh_network(num_bins, axial_axis):
    prior = make_prior(num_bins=num_bins, axial_axis=axial_axis)
    settings = {"floor": 1e-3, "num_bins": num_bins, "mode": "softmax"}
    src = network_with_prior(prior, settings)
    sd = src.state_dict()
    assert any(k.startswith(PRIOR_ATTRIBUTE + ".hist_") for k in sd)
    dst = network_with_prior()  # fresh: its PriorModule holds no buffers yet
    assert not prior_module_of(dst).is_set
    result = dst.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    mod = prior_module_of(dst)
    assert mod.is_set
    assert_same_prior(prior, mod.spatial_prior())
    assert mod.settings == settings
    for k, v in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[k], v, rtol=0, atol=0)


def test_standalone_module_round_trip():
    prior = make_prior(seed=3)
    m = PriorModule()
    m.set_prior(prior)
    fresh = PriorModule()
    fresh.load_state_dict(m.state_dict(), strict=True)
    assert_same_prior(prior, fresh.spatial_prior())
    assert fresh.settings == {}


def test_loading_replaces_a_prior_of_other_shapes_and_clears_cache():
    a, b = make_prior(seed=0, num_bins=1), make_prior(seed=7, num_bins=3, axial_axis=2)
    net = network_with_prior(a)
    mod = prior_module_of(net)
    coords = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in SHAPE],
                                        indexing="ij"))[None]
    centre = {c: b.mean_centres[c] for c in b.built_classes}
    starts = {c: torch.as_tensor(box_start(centre[c], b.box_size(c)))[None] for c in b.built_classes}
    present = {c: torch.tensor([True]) for c in b.built_classes}
    mod.organ_probabilities_at(coords, starts, present)  # fills the lookup cache with prior a
    net.load_state_dict(network_with_prior(b).state_dict(), strict=True)
    assert_same_prior(b, mod.spatial_prior())
    got = mod.organ_probabilities_at(coords, starts, present)[0].numpy()
    np.testing.assert_allclose(got, b.foreground_on_grid(SHAPE, centre), atol=0)


def test_state_dict_without_prior_leaves_module_unset():
    sd = {k: v for k, v in network_with_prior(make_prior()).state_dict().items()
          if not k.startswith(PRIOR_ATTRIBUTE)}
    dst = network_with_prior()
    dst.load_state_dict(sd, strict=True)
    with pytest.raises(PriorRequiredError):
        prior_module_of(dst).metadata()


def test_prior_module_of_plain_network_refuses():
    with pytest.raises(PriorRequiredError):
        prior_module_of(TinyNet())


# ---- refusal hook ----------------------------------------------------------------------------------------
def test_refusal_hook_until_allowed():
    net = network_with_prior(make_prior())
    x = torch.zeros((1, 1, 4, 4, 4))
    with pytest.raises(PriorRequiredError, match="nnUNetv2_stipple_predict"):
        net(x)
    # a checkpoint loaded into a freshly built network refuses too
    fresh = network_with_prior()
    fresh.load_state_dict(net.state_dict())
    with pytest.raises(PriorRequiredError):
        fresh(x)
    allow_prior_free_forward(net)
    out = net(x)
    assert out.shape == (1, 4, 4, 4, 4)
    allow_prior_free_forward(net)  # idempotent
    net(x)
    with pytest.raises(PriorRequiredError):
        fresh(x)


# ---- organ probabilities at coordinates -------------------------------------------------------------------
def grid_coords(shape, offset):
    axes = [torch.arange(o, o + s, dtype=torch.float32) for o, s in zip(offset, shape)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


@pytest.mark.parametrize("num_bins, axial_axis", [(1, 0), (2, 0), (3, 1), (2, 2)])
@pytest.mark.parametrize("jitter", [0.0, 0.45])
def test_organ_probabilities_at_match_foreground_on_grid(num_bins, axial_axis, jitter):
    prior = make_prior(seed=11, num_bins=num_bins, axial_axis=axial_axis)
    mod = PriorModule()
    mod.set_prior(prior)
    patch = (7, 6, 5)
    # per sample: where the patch sits in its case, and that case's organ centres (class 2 absent in sample 1)
    offsets = [(-2, 1, 3), (4, -3, -1)]
    centres = [{1: [3.0, 4.5, 2.0], 2: [5.5, 3.0, 4.0], 3: [1.0, 6.0, 6.5]},
               {1: [7.5, 2.0, 3.5], 2: None, 3: [4.0, 0.5, 1.0]}]
    g = torch.Generator().manual_seed(0)
    coords = torch.stack([grid_coords(patch, o) for o in offsets])
    coords = coords + (torch.rand(coords.shape, generator=g) * 2 - 1) * jitter  # still rounds to the same voxel
    starts, present = {}, {}
    for c in prior.built_classes:
        s = np.zeros((2, 3), dtype=np.int64)
        pres = np.zeros(2, dtype=bool)
        for i in range(2):
            if centres[i][c] is not None:
                s[i] = box_start(centres[i][c], prior.box_size(c))
                pres[i] = True
        starts[c], present[c] = torch.from_numpy(s), torch.from_numpy(pres)
    q = mod.organ_probabilities_at(coords, starts, present)
    assert q.shape == (2, prior.num_outputs, *patch)
    assert torch.all(q[:, 0] == 0)
    for i in range(2):
        # the same placement on a grid whose origin is the patch origin: shift the centres by -offset
        shifted = {c: (None if v is None else [v[d] - offsets[i][d] for d in range(3)]) for c, v in centres[i].items()}
        expected = prior.foreground_on_grid(patch, shifted)
        np.testing.assert_allclose(q[i].numpy(), expected, atol=0, err_msg=f"sample {i}")
    assert torch.all(q[1, 2] == 0)
    assert q[0, 2].max() > 0 and q[1, 1].max() > 0


def test_organ_probabilities_at_full_case_grid_and_class_without_starts():
    """Coordinates over a whole case equal foreground_on_grid for the case's own centres; a class left out
    of ``starts`` stays zero."""
    prior = make_prior(seed=5, num_bins=2, axial_axis=1)
    mod = PriorModule()
    mod.set_prior(prior)
    centres = {c: prior.case_centres["case_0"][c] for c in prior.built_classes}
    coords = grid_coords(SHAPE, (0, 0, 0))[None]
    starts = {c: torch.as_tensor(box_start(centres[c], prior.box_size(c)))[None] for c in (1, 3)}
    present = {c: torch.tensor([True]) for c in (1, 3)}
    q = mod.organ_probabilities_at(coords, starts, present)[0].numpy()
    np.testing.assert_allclose(q, prior.foreground_on_grid(SHAPE, {1: centres[1], 3: centres[3]}), atol=0)
    assert np.all(q[2] == 0)


def lookup_one_voxel_at_a_time(prior, coords, starts, present):
    """Brute force: q_k at every coordinate, one voxel and one class at a time, straight from Algorithm 1's
    histogram layout (nearest voxel; box start; z squeezed into B bins)."""
    n, spatial = coords.shape[0], tuple(coords.shape[2:])
    out = np.zeros((n, prior.num_outputs, *spatial))
    idx = np.floor(coords.numpy().astype(np.float64) + 0.5).astype(np.int64)
    a, nb = prior.axial_axis, prior.num_bins
    for i in range(n):
        for c in prior.built_classes:
            if c not in starts or not bool(present[c][i]):
                continue
            box, hist = prior.box_size(c), prior.histograms[c]
            for pos in np.ndindex(*spatial):
                rel = [int(idx[(i, d) + pos]) - int(starts[c][i, d]) for d in range(3)]
                if all(0 <= r < b for r, b in zip(rel, box)):
                    rel[a] = rel[a] * nb // box[a]
                    out[(i, c) + pos] = hist[tuple(rel)]
    return out


@pytest.mark.parametrize("num_bins, axial_axis, angle, scale, shift", [
    (1, 0, 0.0, 1.0, (0, 0, 0)),
    (2, 0, 0.5, 1.3, (-3, 2, 1)),      # rotated, zoomed, partly outside every box and the case
    (3, 1, -0.8, 0.8, (1, -1, 1)),
    (2, 2, 0.3, 1.0, (-12, -12, -12)),  # far outside: all zero
])
def test_organ_probabilities_at_equal_brute_force_under_rotation(num_bins, axial_axis, angle, scale, shift):
    """The separable lookup equals a voxel-by-voxel lookup at rotated and scaled coordinates (what nnU-Net's
    spatial transform makes of them), with absent classes and samples."""
    prior = make_prior(seed=13, num_bins=num_bins, axial_axis=axial_axis)
    mod = PriorModule()
    mod.set_prior(prior)
    patch = (6, 7, 5)
    grid = grid_coords(patch, (0, 0, 0)).reshape(3, -1) - torch.tensor([[2.5], [3.0], [2.0]])
    c, s = np.cos(angle), np.sin(angle)
    rot = torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=torch.float32) @ \
        torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=torch.float32)
    coords = []
    for i, centre in enumerate(([5.0, 4.0, 4.0], [3.0, 6.0, 2.0])):
        xyz = (rot @ grid) * scale + torch.tensor(centre).view(3, 1) + torch.tensor(shift).view(3, 1) * (i + 1)
        coords.append(xyz.reshape(3, *patch))
    coords = torch.stack(coords)
    rng = np.random.default_rng(1)
    starts = {k: torch.from_numpy(rng.integers(-2, 6, size=(2, 3))) for k in prior.built_classes}
    present = {k: torch.tensor([True, k != 2]) for k in prior.built_classes}
    del starts[3]  # a class without placement stays zero
    got = mod.organ_probabilities_at(coords, starts, present).numpy()
    expected = lookup_one_voxel_at_a_time(prior, coords, starts, present)
    np.testing.assert_array_equal(got, expected.astype(np.float32))
    if shift == (-12, -12, -12):
        assert not got.any()
    else:
        assert got.any()
