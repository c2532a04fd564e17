"""SpatialPrior: file round trip and integrity checks, per-voxel class probabilities on a grid."""
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import prior_from_labels

from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.priors.spatial_prior import (
    DEFAULT_FLOOR,
    SpatialPrior,
    check_floor,
    combine_class_probabilities,
)

LABELS = {1: "liver", 2: "spleen", 3: "kidney", 4: "never_seen"}


def synthetic_labels(seed, num_cases=4, axial_axis=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_cases):
        shape = [10, 9, 8]
        lab = np.zeros(shape, dtype=np.int16)
        for c in (1, 2, 3):
            lo = [int(rng.integers(0, s - 3)) for s in shape]
            size = [int(rng.integers(2, 4)) for _ in range(3)]
            region = tuple(slice(l, l + sz) for l, sz in zip(lo, size))
            sub = lab[region]
            sub[rng.random(sub.shape) < 0.8] = c
            sub.flat[0] = c
        out.append(lab)
    return out


def make_prior(labels, num_bins=2, axial_axis=0, fold="0", dataset="Dataset999_Test"):
    return prior_from_labels(labels, LABELS, num_bins, axial_axis, spacing=(2.5, 0.8, 0.8), dataset=dataset,
                             fold=fold)


@pytest.fixture
def prior():
    return make_prior(synthetic_labels(0))


def assert_priors_equal(a: SpatialPrior, b: SpatialPrior):
    assert a.metadata() == b.metadata()
    aa, ba = a.arrays(), b.arrays()
    assert sorted(aa) == sorted(ba)
    for k in aa:
        assert aa[k].dtype == ba[k].dtype, k
        np.testing.assert_array_equal(aa[k], ba[k], err_msg=k)
    assert a.case_centres == b.case_centres
    assert a.mean_centres == b.mean_centres


# ---- files -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_bins, axial_axis", [(1, 0), (2, 1), (2, 2)])
def test_save_load_round_trip(tmp_path, num_bins, axial_axis):
    p = make_prior(synthetic_labels(1), num_bins=num_bins, axial_axis=axial_axis)
    assert p.missing_classes == [4] and p.built_classes == [1, 2, 3]
    path = p.save(tmp_path / "fold_0.npz")
    assert path.is_file() and path.with_suffix(".json").is_file()
    q = SpatialPrior.load(path)
    assert_priors_equal(p, q)
    assert q.missing_classes == [4]
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["npz_file"] == "fold_0.npz" and len(meta["npz_sha256"]) == 64


@pytest.mark.parametrize("where", [0.3, 0.6, 0.95])
def test_corrupt_npz_is_detected(tmp_path, prior, where):
    path = prior.save(tmp_path / "fold_0.npz")
    raw = bytearray(path.read_bytes())
    i = int(len(raw) * where)
    raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(StippleInputError) as e:
        SpatialPrior.load(path)
    assert str(path) in str(e.value) and "checksum" in str(e.value)


@pytest.mark.parametrize("remove", ["json", "npz"])
def test_missing_file_of_the_pair(tmp_path, prior, remove):
    path = prior.save(tmp_path / "fold_0.npz")
    gone = path.with_suffix(".json") if remove == "json" else path
    gone.unlink()
    with pytest.raises(StippleInputError, match="does not exist") as e:
        SpatialPrior.load(path)
    assert str(gone) in str(e.value)


def test_mismatched_pair_from_two_builds(tmp_path, prior):
    a = prior.save(tmp_path / "a" / "fold_0.npz")
    b = make_prior(synthetic_labels(5)).save(tmp_path / "b" / "fold_0.npz")
    shutil.copyfile(b, a)  # npz of another build next to a's JSON
    with pytest.raises(StippleInputError, match="checksum") as e:
        SpatialPrior.load(a)
    assert str(a) in str(e.value)


def test_invalid_json(tmp_path, prior):
    path = prior.save(tmp_path / "fold_0.npz")
    path.with_suffix(".json").write_text("{ not json")
    with pytest.raises(StippleInputError, match="not valid JSON"):
        SpatialPrior.load(path)


@pytest.mark.parametrize("edit", [
    lambda m: m.update(num_bins=m["num_bins"] + 1),            # histogram shape no longer matches B
    lambda m: m.update(axial_axis=(m["axial_axis"] + 1) % 3),  # histogram squeezed along another axis
])
def test_wrong_histogram_shape_in_metadata(tmp_path, prior, edit):
    path = prior.save(tmp_path / "fold_0.npz")
    jp = path.with_suffix(".json")
    meta = json.loads(jp.read_text())
    edit(meta)
    jp.write_text(json.dumps(meta))
    with pytest.raises(StippleInputError, match="histogram has shape") as e:
        SpatialPrior.load(path)
    assert str(path) in str(e.value)


def test_wrong_histogram_array_with_matching_checksum(tmp_path, prior):
    """A consistent pair whose npz holds a histogram of the wrong shape is refused by validate()."""
    path = prior.save(tmp_path / "fold_0.npz")
    bad = make_prior(synthetic_labels(0))
    bad.histograms[1] = np.zeros((bad.num_bins + 1,) + bad.histograms[1].shape[1:], dtype=np.float32)
    bad.slice_counts[1] = np.zeros(bad.num_bins + 1, dtype=np.int64)
    bad.save(path)
    with pytest.raises(StippleInputError, match="class 1 histogram has shape"):
        SpatialPrior.load(path)


@pytest.mark.parametrize("key", ["num_bins", "labels", "format"])
def test_missing_metadata_entry(tmp_path, prior, key):
    path = prior.save(tmp_path / "fold_0.npz")
    jp = path.with_suffix(".json")
    meta = json.loads(jp.read_text())
    del meta[key]
    jp.write_text(json.dumps(meta))
    with pytest.raises(StippleInputError, match="not a valid STIPPLE prior"):
        SpatialPrior.load(path)


def test_newer_format_version_refused(tmp_path, prior):
    path = prior.save(tmp_path / "fold_0.npz")
    jp = path.with_suffix(".json")
    meta = json.loads(jp.read_text())
    meta["version"] = 999
    jp.write_text(json.dumps(meta))
    with pytest.raises(StippleInputError, match="newer"):
        SpatialPrior.load(path)


# ---- probabilities on a grid -------------------------------------------------------------------------------
def expected_foreground(prior: SpatialPrior, shape, centres):
    """Voxel-by-voxel placement of every class's bin-expanded histogram, cropped to the grid."""
    q = np.zeros((prior.num_outputs, *shape), dtype=np.float64)
    a = prior.axial_axis
    for c in prior.built_classes:
        centre = centres.get(c)
        if centre is None:
            continue
        box = prior.box_size(c)
        start = [int(np.floor(centre[d] - (box[d] - 1) / 2)) for d in range(3)]
        for v in np.ndindex(*shape):
            rel = [v[d] - start[d] for d in range(3)]
            if all(0 <= rel[d] < box[d] for d in range(3)):
                idx = list(rel)
                idx[a] = rel[a] * prior.num_bins // box[a]
                q[(c, *v)] = prior.histograms[c][tuple(idx)]
    return q


def expected_probabilities(q, floor):
    p = q.copy()
    p[0] = np.clip(1 - q[1:].sum(0), 0, 1)
    p = np.maximum(p, floor)
    return p / p.sum(0, keepdims=True)


GRID_CASES = [
    # shape, centres (None = class absent in this case; class 4 is never built)
    ((10, 9, 8), {1: [4.5, 4.0, 3.5], 2: [5.0, 2.0, 6.0], 3: [2.0, 7.0, 1.5]}),
    # tiny grid: every box extends past every image border
    ((2, 2, 1), {1: [0.5, 0.5, 0.0], 2: [1.0, 0.0, 0.0], 3: [0.0, 1.0, 0.0]}),
    # boxes hanging off the low and high ends, one entirely outside
    ((6, 5, 4), {1: [-1.0, 0.0, 3.5], 2: [7.0, 6.0, -0.5], 3: [40.0, 40.0, 40.0]}),
    # class 2 absent in this case
    ((7, 7, 7), {1: [3.0, 3.0, 3.0], 2: None, 3: [3.5, 3.5, 3.5]}),
]


@pytest.mark.parametrize("shape, centres", GRID_CASES)
@pytest.mark.parametrize("floor", [DEFAULT_FLOOR, 0.05])
def test_probabilities_on_grid(prior, shape, centres, floor):
    q = prior.foreground_on_grid(shape, centres)
    exp_q = expected_foreground(prior, shape, centres)
    assert q.shape == (5, *shape)
    np.testing.assert_allclose(q, exp_q, atol=1e-6)
    p = prior.probabilities_on_grid(shape, centres, floor=floor)
    assert p.shape == (5, *shape) and p.dtype == np.float32
    assert np.all(p > 0)
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-5)
    np.testing.assert_allclose(p, expected_probabilities(exp_q, floor), atol=1e-6)
    # the never-built class 4 and absent classes sit at the floored minimum everywhere
    for c in [4] + [k for k, v in centres.items() if v is None]:
        raw = np.maximum(np.concatenate([np.clip(1 - exp_q[1:].sum(0), 0, 1)[None], exp_q[1:]]), floor)
        total = raw.sum(0)
        np.testing.assert_allclose(p[c], floor / total, rtol=1e-5)
        np.testing.assert_allclose(p[c], p.min(0), rtol=1e-6)


@pytest.mark.parametrize("shape, centres", GRID_CASES)
@pytest.mark.parametrize("floor", [DEFAULT_FLOOR, 0.05])
def test_log_probabilities_on_grid_are_ln_p_and_the_grid_is_made_on_the_device(prior, shape, centres, floor):
    expected = np.log(expected_probabilities(expected_foreground(prior, shape, centres), floor).astype(np.float64))
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        log_p = prior.log_probabilities_on_grid(shape, centres, floor, device=device)
        assert log_p.device.type == device and log_p.dtype == torch.float32
        np.testing.assert_allclose(log_p.cpu().numpy(), expected, rtol=0, atol=1e-6)
        p = prior.probabilities_on_grid(shape, centres, floor, device=device)
        assert p.device.type == device
        np.testing.assert_array_equal(p.cpu().numpy(), prior.probabilities_on_grid(shape, centres, floor))


def test_probabilities_without_any_centre_are_background(prior):
    p = prior.probabilities_on_grid((3, 3, 3), {})
    floor = DEFAULT_FLOOR
    np.testing.assert_allclose(p[0], 1 / (1 + 4 * floor), rtol=1e-6)
    np.testing.assert_allclose(p[1:], floor / (1 + 4 * floor), rtol=1e-6)


def test_expanded_histogram_repeats_bins(prior):
    for c in prior.built_classes:
        e = prior.expanded_histogram(c)
        assert e.shape == prior.box_size(c)
        depth = e.shape[prior.axial_axis]
        for s in range(depth):
            b = s * prior.num_bins // depth
            np.testing.assert_array_equal(np.take(e, s, axis=prior.axial_axis),
                                          np.take(prior.histograms[c], b, axis=prior.axial_axis))


@pytest.mark.parametrize("floor", [0.0, -0.1, 0.5, 1.0, float("nan")])
def test_floor_validation(prior, floor):
    with pytest.raises(StippleInputError, match="floor"):
        check_floor(floor)
    with pytest.raises(StippleInputError, match="floor"):
        prior.probabilities_on_grid((2, 2, 2), {1: [0, 0, 0]}, floor=floor)


@pytest.mark.parametrize("floor", [1e-6, DEFAULT_FLOOR, 0.2, 0.49])
def test_valid_floors_accepted(floor):
    check_floor(floor)


@pytest.mark.parametrize("seed, floor, channel_dim", [(0, 1e-3, 0), (1, 0.01, 0), (2, 1e-3, 1), (3, 0.3, 1)])
def test_combine_numpy_and_torch_agree(seed, floor, channel_dim):
    rng = np.random.default_rng(seed)
    shape = (5, 4, 3, 2) if channel_dim == 0 else (2, 5, 4, 3, 2)
    q = rng.random(shape).astype(np.float32) * 0.5  # organ sums may exceed 1: background clipped at 0
    p_np = combine_class_probabilities(q, floor, channel_dim=channel_dim)
    p_t = combine_class_probabilities(torch.from_numpy(q), floor, channel_dim=channel_dim)
    assert isinstance(p_np, np.ndarray) and isinstance(p_t, torch.Tensor)
    np.testing.assert_allclose(p_np, p_t.numpy(), atol=1e-7)
    expected = np.moveaxis(expected_probabilities(np.moveaxis(q.astype(np.float64), channel_dim, 0), floor),
                           0, channel_dim)
    np.testing.assert_allclose(p_np, expected, atol=1e-6)
    np.testing.assert_allclose(p_np.sum(channel_dim), 1, atol=1e-5)
    # the input is not modified
    q_copy = q.copy()
    combine_class_probabilities(q, floor, channel_dim=channel_dim)
    np.testing.assert_array_equal(q, q_copy)
