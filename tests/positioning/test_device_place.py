"""The torch placement (positioning/device_place.py, run by procedure.place_prior) against the numpy oracle
(place.position_from_probabilities, procedure.place_prior_reference) over the cases of the numpy tests: shifted
volumes, boxes past the border, a missing class, nothing found, a volume smaller than the boxes, noisy
predictions, a far false positive, with the settings varied."""
import numpy as np
import pytest
import torch

from nnunet_stipple.positioning.device_place import position_on_device
from nnunet_stipple.positioning.device_volumes import ClassProbabilities, PriorDrivenProbabilities
from nnunet_stipple.positioning.place import position_from_probabilities
from nnunet_stipple.positioning.procedure import place_prior, place_prior_reference, prior_driven_probabilities
from nnunet_stipple.positioning.settings import PositioningSettings
from tests.positioning.test_anatomical_consistency import _with_far_false_positive
from tests.positioning.test_joint_search import _noisy
from tests.positioning.test_place import _label, _onehot, _prior


def _missing_class_2():
    target = _label(shift=4)
    target[target == 2] = 0
    return _onehot(target)


def _noisy_logits(label, seed=0):
    logits = _onehot(label) * 4 + np.random.default_rng(seed).normal(0, 1.0, (3, *label.shape))
    return torch.softmax(torch.from_numpy(logits.astype(np.float32)), 0).numpy()


# (name, first prediction's class probabilities (3, X, Y, Z))
VOLUMES = [
    ("shift -5", lambda: _onehot(_label(shift=-5))),
    ("shift 7", lambda: _onehot(_label(shift=7))),
    ("boxes past the border", lambda: _onehot(_label(shift=11))),
    ("missing class", _missing_class_2),
    ("nothing found", lambda: _onehot(np.zeros((30, 24, 24), np.uint8))),
    ("volume smaller than the boxes", lambda: _onehot(_label()[10:16, 5:9, 5:9])),
    ("noisy", lambda: _noisy(_label(shape=(36, 24, 24), shift=3), seed=3).astype(np.float32)),
    ("noisy logits", lambda: _noisy_logits(_label(shift=2))),
    ("far false positive", lambda: _noisy_logits(_with_far_false_positive()[1], seed=1)),
]
SETTINGS = [
    PositioningSettings(search_radius_mm=10),
    PositioningSettings(search_radius_mm=3, repositioning_steps=3, anatomy_tolerance_mm=10.0,
                        coarse_placement="components"),
    PositioningSettings(search_radius_mm=5, repositioning_steps=2, anatomy_tolerance_mm=0.0),
    PositioningSettings(search_radius_mm=3, repositioning_steps=1, anatomy_tolerance_mm=8.0, coarse_placement="hybrid"),
]
CASES = [pytest.param(make, settings, id=f"{name}-{i}") for name, make in VOLUMES for i, settings in enumerate(SETTINGS)]


def _notched(label):
    """Organs with a notch, so that the prior's histograms hold zeros (where the floor matters)."""
    label = label.copy()
    label[(label == 1) & (np.arange(label.shape[1])[None, :, None] < 7) & (np.arange(label.shape[2]) < 8)] = 0
    return label


PRIOR = _prior([_notched(_label()), _notched(_label(shift=2))])


def assert_same_placement(got: dict, expected: dict, rel: float):
    """Two reports' placements: the same centres, methods, offsets and voxel counts; costs within ``rel``."""
    assert got["centres"] == expected["centres"]
    for c, want in expected["classes"].items():
        have = got["classes"][c]
        for key in ("method", "offset", "coarse_centre", "predicted_voxels", "rejected_centre"):
            assert have.get(key) == want.get(key), (c, key)
        for key in ("cost", "confidence"):
            assert have.get(key) == (None if want.get(key) is None else pytest.approx(want[key], rel=rel, abs=1e-12))
    assert (got["joint"] is None) == (expected["joint"] is None)
    if expected["joint"] is not None:
        for key in ("displacement", "displacement_mm", "classes", "factors"):
            assert got["joint"][key] == expected["joint"][key], key
        assert got["joint"]["cost"] == pytest.approx(expected["joint"]["cost"], rel=1e-9)


@pytest.mark.parametrize("make, settings", CASES)
def test_one_placement_equals_numpy(make, settings):
    probabilities = make()
    got = position_on_device(PRIOR, ClassProbabilities(torch.from_numpy(probabilities), PRIOR.num_outputs), settings)
    expected = position_from_probabilities(PRIOR, probabilities, settings)
    assert got.ok == expected.ok
    report = {"centres": got.centres, "classes": {c: p.__dict__ for c, p in got.classes.items()}, "joint": got.joint}
    assert_same_placement(report, {"centres": expected.centres, "joint": expected.joint,
                                   "classes": {c: p.__dict__ for c, p in expected.classes.items()}}, rel=1e-9)


@pytest.mark.parametrize("make, settings", CASES)
@pytest.mark.parametrize("floor", [1e-3, 1e-2])
def test_whole_procedure_equals_the_numpy_procedure(make, settings, floor, recwarn):
    probabilities = make()
    got = place_prior(PRIOR, torch.from_numpy(probabilities), settings, floor).report
    expected = place_prior_reference(PRIOR, probabilities, settings, floor).report
    for key in ("method", "settings", "floor", "repositioning_steps", "ok"):
        assert got[key] == expected[key], key
    assert got["confidence"] == pytest.approx(expected["confidence"], rel=1e-4)
    # re-positioned costs come from float32 prior-driven probabilities computed in another order
    assert_same_placement(got, expected, rel=1e-4)


def test_repositioning_never_builds_the_whole_volume(monkeypatch):
    """A re-positioning step reads prior-driven probabilities only in the search regions: the prior's
    probabilities over the whole grid are never made."""
    def whole_grid(*args, **kwargs):
        raise AssertionError("whole-volume prior probabilities built during positioning")
    monkeypatch.setattr(type(PRIOR), "probabilities_on_grid", whole_grid)
    settings = PositioningSettings(search_radius_mm=5, repositioning_steps=3)
    placement = place_prior(PRIOR, torch.from_numpy(_noisy_logits(_label(shift=2))), settings)
    assert placement.report["repositioning_steps"] >= 1 and placement.report["ok"]


# (name, centres of the prior's boxes, first prediction)
DRIVEN_CASES = [
    ("inside", {1: [13.0, 7.0, 8.0], 2: [16.0, 17.0, 15.0]}, lambda: _noisy_logits(_label(shift=1))),
    ("past the border", {1: [-2.0, 7.0, 8.0], 2: [29.5, 22.0, 23.0]}, lambda: _noisy_logits(_label(shift=1))),
    ("one class without a centre", {1: [13.0, 7.0, 8.0], 2: None}, lambda: _onehot(_label(shift=3))),
    ("overlapping boxes", {1: [14.0, 12.0, 12.0], 2: [15.0, 13.0, 12.5]}, lambda: _noisy(_label(), 4).astype(np.float32)),
    # with floor 0.25, inside box 1 (histogram 1) class 1 weighs 0.125 * 1, class 2 outside its box 0.5 * 0.25:
    # a tie, which the lower class wins, as in numpy's argmax
    ("ties", {1: [13.0, 7.0, 8.0], 2: None},
     lambda: np.broadcast_to(np.float32([0.375, 0.125, 0.5])[:, None, None, None], (3, 30, 24, 24)).copy()),
]


@pytest.mark.parametrize("name, centres, make", DRIVEN_CASES, ids=[c[0] for c in DRIVEN_CASES])
@pytest.mark.parametrize("floor", [1e-3, 0.25])
def test_prior_driven_probabilities_in_regions_equal_the_whole_volume(name, centres, make, floor):
    first = make()
    first[:, 0, 0, 0] = 0            # a voxel without any probability stays without
    expected = prior_driven_probabilities(first, PRIOR.probabilities_on_grid(first.shape[1:], centres, floor))
    driven = PriorDrivenProbabilities(ClassProbabilities(torch.from_numpy(first), 3), PRIOR, centres, floor)
    assert driven.counts() == np.bincount(expected.argmax(0).ravel(), minlength=3).tolist()
    for c in (1, 2):
        for region in [(slice(0, 30), slice(0, 24), slice(0, 24)), (slice(5, 17), slice(3, 20), slice(10, 24))]:
            np.testing.assert_allclose(driven.crop(c, region).numpy(), expected[(c, *region)], rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_placement_stays_on_the_device_of_the_probabilities(device):
    probabilities = torch.from_numpy(_noisy_logits(_label(shift=2))).to(device)
    report = place_prior(PRIOR, probabilities, PositioningSettings(search_radius_mm=5)).report
    expected = place_prior_reference(PRIOR, probabilities.cpu().numpy(), PositioningSettings(search_radius_mm=5))
    assert_same_placement(report, expected.report, rel=1e-4)
