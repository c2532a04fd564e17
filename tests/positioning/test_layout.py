"""The layout check (positioning/layout.py, run by procedure.place_prior): phantom cases whose first prediction
holds the usual layout are not flagged; mirrored left-right, flipped along z, or with irreconcilable placements
they are, and the prior falls back to uniform unless the layout guard says otherwise; a field of view holding a
few organs is undetermined, not flagged. First predictions are the cases' own labels (one-hot), so the check is
tested apart from any network."""
import numpy as np
import pytest

from nnunet_stipple.phantom.generator import PHANTOM_LABELS, make_phantom_case
from nnunet_stipple.positioning.layout import AS_TRAINED, assess_layout, candidate_layouts, layout_misfit, \
    typical_misfit_mm
from nnunet_stipple.positioning.place import centres_from_label
from nnunet_stipple.positioning.procedure import LAYOUT_FALLBACK, place_prior, place_prior_reference
from nnunet_stipple.positioning.settings import PositioningSettings
from tests.conftest import prior_from_labels

SPACING = (4.0, 2.0, 2.0)     # the phantom's (z, y, x); x is left-right
NAMES = {v: k for k, v in PHANTOM_LABELS.items() if v}


@pytest.fixture(scope="module")
def phantom_prior():
    labels = [make_phantom_case(i)[1] for i in range(12)]
    return prior_from_labels(labels, NAMES, num_bins=3, spacing=SPACING)


def _onehot(label, k=6):
    return np.stack([(label == c).astype(np.float32) for c in range(k)])


def _crop_to_two_organs(label):
    """The slices holding the kidneys only (the other organs erased), as a short scan would."""
    out = label.copy()
    out[(out != PHANTOM_LABELS["right_kidney"]) & (out != PHANTOM_LABELS["left_kidney"])] = 0
    return out


# (case transform, expected status, expected reason)
CASES = [
    ("as acquired", lambda lab: lab, "typical", None),
    ("mirrored left-right", lambda lab: lab[:, :, ::-1].copy(), "flagged", "different_layout"),
    ("flipped along z", lambda lab: lab[::-1].copy(), "flagged", "different_layout"),
    ("two organs in the field of view", _crop_to_two_organs, "undetermined", None),
]


@pytest.mark.parametrize("index", [20, 21, 22, 23])     # cases the prior was not built from
@pytest.mark.parametrize("name, transform, status, reason", CASES, ids=[c[0] for c in CASES])
def test_layout_status_of_phantom_cases(phantom_prior, index, name, transform, status, reason):
    label = transform(make_phantom_case(index)[1])
    centres = centres_from_label(label, phantom_prior.built_classes)
    report = assess_layout(phantom_prior, centres)
    assert report["status"] == status, report
    if reason:
        assert report["reasons"] == [reason] and report["best"] != AS_TRAINED


@pytest.mark.parametrize("guard, method, placed", [("fallback", LAYOUT_FALLBACK, False), ("flag", "kl_search", True),
                                                   ("off", "kl_search", True)])
@pytest.mark.parametrize("place", [place_prior, place_prior_reference], ids=["device", "numpy"])
def test_a_mirrored_case_falls_back_to_a_uniform_prior_unless_asked(phantom_prior, guard, method, placed, place):
    first = _onehot(make_phantom_case(20)[1][:, :, ::-1].copy())
    settings = PositioningSettings(search_radius_mm=4, layout_guard=guard)
    if guard == "fallback":
        with pytest.warns(UserWarning, match="does not hold the organ layout of the prior.*--layout-guard flag"):
            result = place(phantom_prior, first, settings, case="mirrored")
    else:
        result = place(phantom_prior, first, settings, case="mirrored")
    assert result.report["method"] == method
    assert (result.centres is not None) == placed
    if guard == "off":
        assert result.report["layout"] is None
    else:
        assert result.report["layout"]["status"] == "flagged"


@pytest.mark.parametrize("place", [place_prior, place_prior_reference], ids=["device", "numpy"])
def test_a_typical_case_is_placed_and_reports_its_layout(phantom_prior, place):
    first = _onehot(make_phantom_case(21)[1])
    result = place(phantom_prior, first, PositioningSettings(search_radius_mm=4))
    assert result.report["method"] == "kl_search" and result.centres is not None
    layout = result.report["layout"]
    assert layout["status"] == "typical" and layout["organs"] == phantom_prior.built_classes
    assert layout["misfit_mm"][AS_TRAINED] <= layout["typical_mm"]


def _scattered(label, stretch=1.6):
    """The centres of a case mirrored left-right, spread away from their mean by ``stretch``: a first prediction
    whose stray centres fit the mirrored layout better than the usual one, yet far worse than any training case
    fits its own (what a weakly trained model can produce)."""
    centres = centres_from_label(label[:, :, ::-1].copy(), sorted(NAMES))
    mean = np.mean([c for c in centres.values()], axis=0)
    return {k: list(mean + (np.asarray(c) - mean) * stretch) for k, c in centres.items()}


@pytest.mark.parametrize("index", [20, 21, 22, 23])
def test_a_scattered_prediction_is_noted_not_taken_for_a_mirrored_layout(phantom_prior, index):
    report = assess_layout(phantom_prior, _scattered(make_phantom_case(index)[1]))
    misfit, typical = report["misfit_mm"], report["typical_mm"]
    best_mirrored = min(v for k, v in misfit.items() if k != AS_TRAINED)
    # the case the ratio alone would flag: the mirrored fit is more than twice as good, but looser than typical
    assert best_mirrored <= 0.5 * misfit[AS_TRAINED] and best_mirrored > typical, report
    assert report["status"] == "typical" and report["reasons"] == [] and report["notes"] == ["loose_fit"]


def test_irreconcilable_placements_are_noted_not_flagged(phantom_prior):
    report = assess_layout(phantom_prior, {}, placed=[1, 2], rejected=[3, 4, 5])
    assert report["status"] == "undetermined" and report["notes"] == ["irreconcilable"] and report["reasons"] == []
    assert assess_layout(phantom_prior, {}, placed=[1, 2, 3], rejected=[4])["notes"] == []


def test_the_typical_misfit_travels_with_the_prior_into_checkpoints(phantom_prior):
    """Checkpoints keep no per-case centres (priors/prior_module.py): the prior's metadata carries the typical
    misfit, and a mirrored case is still flagged with a prior read back from it."""
    from dataclasses import replace
    from nnunet_stipple.priors.spatial_prior import SpatialPrior
    meta = dict(phantom_prior.metadata(), case_centres={})
    stripped = SpatialPrior.from_metadata_and_arrays(meta, phantom_prior.arrays())
    assert stripped.case_centres == {} and stripped.layout_misfit_mm == pytest.approx(typical_misfit_mm(phantom_prior))
    centres = centres_from_label(make_phantom_case(20)[1][:, :, ::-1].copy(), phantom_prior.built_classes)
    assert assess_layout(stripped, centres)["status"] == "flagged"
    # a prior written before the value was stored cannot tell: nothing is flagged
    old = replace(stripped, layout_misfit_mm=None)
    report = assess_layout(old, centres)
    assert report["status"] == "typical" and report["typical_mm"] is None


def test_misfit_by_hand():
    reference = np.array([[0.0, 0, 0], [10, 0, 0], [0, 20, 0]])
    # a pure translation fits exactly
    assert layout_misfit(reference + [5, -3, 2], reference) == pytest.approx(0.0)
    # one organ 6 mm off along x: median translation 0, residuals 0, 6, 0 -> median 0 (robust to one stray organ)
    moved = reference.copy()
    moved[1, 0] += 6
    assert layout_misfit(moved, reference) == pytest.approx(0.0)
    # four organs mirrored along y (y -20, -10, 10, 20 -> 20, 10, -10, -20): median translation 0, residuals
    # 40, 20, 20, 40 -> misfit 30 as trained...
    four = np.array([[0.0, -20, 0], [10, -10, 0], [20, 10, 0], [30, 20, 0]])
    mirrored = four * [1, -1, 1]
    assert layout_misfit(mirrored, four) == pytest.approx(30.0)
    # ...and the mirrored candidate fits exactly
    assert layout_misfit(mirrored, candidate_layouts(four)["mirrored_axis1"]) == pytest.approx(0.0)
    assert list(candidate_layouts(four)) == [AS_TRAINED, "mirrored_axis0", "mirrored_axis1", "mirrored_axis2"]


def test_typical_misfit_is_the_worst_training_case(phantom_prior):
    spacing = np.asarray(SPACING)
    worst = 0.0
    for centres in phantom_prior.case_centres.values():
        cls = sorted(c for c in centres if c in phantom_prior.mean_centres)
        found = np.asarray([centres[c] for c in cls]) * spacing
        reference = np.asarray([phantom_prior.mean_centres[c] for c in cls]) * spacing
        t = np.median(found - reference, axis=0)
        worst = max(worst, float(np.median(np.linalg.norm(found - reference - t, axis=1))))
    assert typical_misfit_mm(phantom_prior) == pytest.approx(worst)
