import numpy as np
import pytest

from nnunet_stipple.pseudo_labeling.selection import (
    SELECTION_STRATEGIES,
    AllPredictedSelection,
    Flare22Selection,
    MaxProbabilitySelection,
    PriorConfidenceSelection,
    SelectionResult,
    SelectionStrategy,
    get_selection_strategy,
)

I = 9  # ignore label used throughout (any value >= K works)


def two_class(conf1, shape=None):
    """K=2 probabilities from the class-1 probability: voxels with conf1 > 0.5 are predicted 1."""
    c = np.asarray(conf1, dtype=np.float32)
    if shape is not None:
        c = c.reshape(shape)
    return np.stack([1.0 - c, c]).astype(np.float32)


def from_labels_and_conf(labels, conf, num_classes):
    """Probabilities whose argmax is ``labels`` with probability ``conf`` for the predicted class."""
    labels = np.asarray(labels)
    conf = np.asarray(conf, dtype=np.float32)
    rest = (1.0 - conf) / (num_classes - 1)
    probs = np.repeat(rest[None], num_classes, axis=0).astype(np.float32)
    for k in range(num_classes):
        probs[k][labels == k] = conf[labels == k]
    return probs


# ---------------------------------------------------------------------------------------------
# exact top-k per class (max_probability uses visual_probs; prior_confidence the same rule on prior_probs)
# ---------------------------------------------------------------------------------------------
TOPK_CASES = [
    # id, class-1 confidence (flat), gamma, expected label (flat)
    ("clear_ranking", [0.9, 0.6, 0.8, 0.7, 0.2, 0.1], 0.5, [1, I, 1, I, I, I]),  # N=4, n=2
    ("ties_at_threshold", [0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.2, 0.1], 0.5, [1, 1, 1, I, I, I, I, I]),  # N=6, n=3
    ("five_equal_first_two", [0.1, 0.7, 0.2, 0.7, 0.7, 0.3, 0.7, 0.7], 0.4, [I, 1, I, 1, I, I, I, I]),  # N=5, n=2
    ("gamma_one_all", [0.9, 0.6, 0.8, 0.7, 0.2, 0.1], 1.0, [1, 1, 1, 1, I, I]),
    ("small_gamma_zero", [0.9, 0.6, 0.8, 0.7, 0.2, 0.1], 0.1, [I, I, I, I, I, I]),  # floor(0.4+0.5)=0
    ("round_half_up", [0.6, 0.7, 0.8, 0.9, 0.95, 0.1], 0.5, [I, I, 1, 1, 1, I]),  # N=5: floor(2.5+0.5)=3
    ("round_down", [0.6, 0.7, 0.8, 0.1, 0.2, 0.3], 0.5, [I, 1, 1, I, I, I]),  # N=3: floor(1.5+0.5)=2
    ("nothing_predicted", [0.1, 0.2, 0.3, 0.4], 1.0, [I, I, I, I]),
]


@pytest.mark.parametrize("strategy_name", ["max_probability", "prior_confidence"])
@pytest.mark.parametrize("case_id, conf, gamma, expected", TOPK_CASES, ids=[c[0] for c in TOPK_CASES])
def test_top_k_exact(strategy_name, case_id, conf, gamma, expected):
    probs = two_class(conf, shape=(1, len(conf)))
    strategy = get_selection_strategy(strategy_name)
    res = strategy.select(probs, probs.copy(), gamma, I)
    assert isinstance(res, SelectionResult)
    assert res.label.dtype == np.int16
    assert res.label.shape == (1, len(conf))
    np.testing.assert_array_equal(res.label.ravel(), expected)
    n_pred = int(np.sum(np.asarray(conf) > 0.5))
    assert res.stats[1] == {"predicted": n_pred, "selected": int(np.sum(np.asarray(expected) == 1))}
    assert res.stats[0] == {"predicted": len(conf) - n_pred, "selected": 0}


def test_ties_follow_c_order_flat_index_in_3d():
    probs = two_class(np.full(8, 0.75), shape=(2, 2, 2))  # 8 equal confidences
    res = get_selection_strategy("max_probability").select(probs, None, 0.25, I)  # n = 2
    expected = np.full((2, 2, 2), I)
    expected[0, 0, 0] = expected[0, 0, 1] = 1
    np.testing.assert_array_equal(res.label, expected)


def test_non_contiguous_input_gives_same_result():
    rng = np.random.default_rng(0)
    conf = np.round(rng.random((4, 5, 6)), 1).astype(np.float32)  # rounded: many ties
    probs = two_class(conf)
    view = probs.transpose(0, 3, 2, 1)  # non-contiguous view
    copy = np.ascontiguousarray(view)
    s = get_selection_strategy("max_probability")
    a = s.select(view, None, 0.37, I)
    b = s.select(copy, None, 0.37, I)
    np.testing.assert_array_equal(a.label, b.label)
    assert a.stats == b.stats


def test_multiclass_each_class_separately():
    # K=3; class 1 predicted at 4 voxels, class 2 at 2 voxels, background at 2.
    labels = np.array([[1, 1, 2, 0], [1, 2, 1, 0]])
    conf = np.array([[0.9, 0.5, 0.6, 0.9], [0.7, 0.95, 0.8, 0.9]])
    probs = from_labels_and_conf(labels, conf, 3)
    res = MaxProbabilitySelection().select(probs, None, 0.5, 3)
    # class 1: N=4 -> n=2: conf 0.9 (0,0), 0.8 (1,2); class 2: N=2 -> n=1: 0.95 (1,1)
    expected = np.array([[1, 3, 3, 3], [3, 2, 1, 3]])
    np.testing.assert_array_equal(res.label, expected)
    assert res.stats == {
        0: {"predicted": 2, "selected": 0},
        1: {"predicted": 4, "selected": 2},
        2: {"predicted": 2, "selected": 1},
    }


def test_include_background_option():
    # background predicted at 4 voxels with confidences 0.9, 0.6, 0.8, 0.7 ; class 1 at 2 voxels.
    conf1 = [0.1, 0.4, 0.2, 0.3, 0.9, 0.6]
    probs = two_class(conf1, shape=(6,))
    res = PriorConfidenceSelection(include_background=True).select(probs, probs, 0.5, I)
    np.testing.assert_array_equal(res.label, [0, I, 0, I, 1, I])
    assert res.stats[0] == {"predicted": 4, "selected": 2}
    default = PriorConfidenceSelection().select(probs, probs, 0.5, I)
    np.testing.assert_array_equal(default.label, [I, I, I, I, 1, I])
    via_registry = get_selection_strategy("prior_confidence", include_background=True)
    np.testing.assert_array_equal(via_registry.select(probs, probs, 0.5, I).label, res.label)


@pytest.mark.parametrize(
    "gamma, expected_max, expected_prior",
    [
        # visual argmax: class 1 at voxels 0, 1 ; prior argmax: class 1 at voxels 1, 2, 3
        (1.0, [1, 1, I, I], [I, 1, 1, 1]),
        (0.5, [1, I, I, I], [I, 1, 1, I]),  # max: N=2 -> 1 (0.9); prior: N=3 -> 2 (0.8 at 2, 0.7 at 1)
        (0.3, [1, I, I, I], [I, I, 1, I]),  # max: floor(0.6+0.5)=1 ; prior: floor(0.9+0.5)=1
    ],
)
def test_prior_changes_selection(gamma, expected_max, expected_prior):
    visual = two_class([0.9, 0.6, 0.4, 0.3])
    prior = two_class([0.2, 0.7, 0.8, 0.6])
    by_max = get_selection_strategy("max_probability").select(visual, prior, gamma, I)
    by_prior = get_selection_strategy("prior_confidence").select(visual, prior, gamma, I)
    np.testing.assert_array_equal(by_max.label, expected_max)
    np.testing.assert_array_equal(by_prior.label, expected_prior)


# ---------------------------------------------------------------------------------------------
# all_predicted / flare22
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gamma", [0.1, 1.0])
def test_all_predicted_equals_argmax(gamma):
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, 3, 5, 6)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
    res = AllPredictedSelection().select(probs, None, gamma, 4)
    np.testing.assert_array_equal(res.label, np.argmax(probs, axis=0))
    assert res.label.dtype == np.int16
    assert not res.uses_ignore and not np.any(res.label == 4)
    counts = np.bincount(np.argmax(probs, 0).ravel(), minlength=4)
    assert res.stats == {k: {"predicted": int(c), "selected": int(c)} for k, c in enumerate(counts)}


def test_class_ties_go_to_lowest_class():
    probs = np.full((3, 2, 2), 1 / 3, dtype=np.float32)
    np.testing.assert_array_equal(AllPredictedSelection().select(probs, None, 1.0, 3).label, np.zeros((2, 2)))


def _labels_to_probs(labels, num_classes):
    return from_labels_and_conf(labels, np.full(np.shape(labels), 0.8), num_classes)


FLARE_CASES = [
    (
        "3d_two_components_small_removed",
        # class 1: component of 4 voxels in slice 0 and an isolated voxel in slice 2; class 2: one component
        np.array([
            [[1, 1, 0, 0], [1, 1, 0, 2], [0, 0, 0, 2]],
            [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
            [[0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]],
        ]),
        np.array([
            [[1, 1, 0, 0], [1, 1, 0, 2], [0, 0, 0, 2]],
            [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
            [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
        ]),
    ),
    (
        "3d_26_connectivity_diagonal_chain_kept",
        # voxels (0,0,0), (1,1,1), (2,2,2) touch by corners only: one 26-connected component of 3,
        # the pair at (0,0,3),(0,1,3) is smaller and removed.
        np.array([
            [[1, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0]],
            [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]],
            [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]],
        ]),
        np.array([
            [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
            [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]],
            [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]],
        ]),
    ),
    (
        "2d_8_connectivity",
        # class 1: diagonal chain of 3 (8-connected) vs a pair; class 2: sizes 1 and 2
        np.array([
            [1, 0, 0, 0, 0, 2],
            [0, 1, 0, 0, 0, 0],
            [0, 0, 1, 0, 0, 2],
            [0, 0, 0, 0, 0, 2],
            [1, 1, 0, 0, 0, 0],
        ]),
        np.array([
            [1, 0, 0, 0, 0, 0],
            [0, 1, 0, 0, 0, 0],
            [0, 0, 1, 0, 0, 2],
            [0, 0, 0, 0, 0, 2],
            [0, 0, 0, 0, 0, 0],
        ]),
    ),
    (
        "2d_equal_sizes_first_flat_index_wins",
        np.array([
            [0, 0, 1, 1],
            [0, 0, 0, 0],
            [1, 1, 0, 0],
        ]),
        np.array([
            [0, 0, 1, 1],
            [0, 0, 0, 0],
            [0, 0, 0, 0],
        ]),
    ),
]


@pytest.mark.parametrize("case_id, pred, expected", FLARE_CASES, ids=[c[0] for c in FLARE_CASES])
def test_flare22_keeps_largest_component(case_id, pred, expected):
    probs = _labels_to_probs(pred, 3)
    res = Flare22Selection().select(probs, None, 0.5, 3)
    np.testing.assert_array_equal(res.label, expected)
    assert res.label.dtype == np.int16 and not res.uses_ignore
    for k in range(3):
        assert res.stats[k] == {"predicted": int(np.sum(pred == k)), "selected": int(np.sum(expected == k))}


def test_flare22_rejects_1d():
    with pytest.raises(ValueError, match="2D or 3D"):
        Flare22Selection().select(two_class([0.9, 0.1, 0.8]), None, 1.0, 2)


# ---------------------------------------------------------------------------------------------
# registry and validation
# ---------------------------------------------------------------------------------------------
def test_registry():
    assert set(SELECTION_STRATEGIES) == {"prior_confidence", "max_probability", "all_predicted", "flare22"}
    for name in SELECTION_STRATEGIES:
        s = get_selection_strategy(name)
        assert isinstance(s, SelectionStrategy)
        assert s.name == name


def test_unknown_strategy_lists_valid_names():
    with pytest.raises(ValueError) as e:
        get_selection_strategy("nope")
    for name in SELECTION_STRATEGIES:
        assert name in str(e.value)


def test_bad_option():
    with pytest.raises(ValueError, match="invalid options"):
        get_selection_strategy("all_predicted", include_background=True)


GOOD = two_class([0.9, 0.2, 0.7])
BAD_INPUTS = [
    ("prior_missing", "prior_confidence", GOOD, None, 0.5, I, "needs prior_probs"),
    ("shape_mismatch", "prior_confidence", GOOD, two_class([0.9, 0.2]), 0.5, I, "differs"),
    ("shape_mismatch_even_if_unused", "max_probability", GOOD, two_class([0.9, 0.2]), 0.5, I, "differs"),
    ("one_channel", "max_probability", GOOD[:1], None, 0.5, I, "K >= 2"),
    ("no_spatial_axis", "max_probability", np.array([0.2, 0.8], np.float32), None, 0.5, I, "spatial"),
    ("not_array", "all_predicted", [[0.1, 0.9], [0.9, 0.1]], None, 0.5, I, "numpy array"),
    ("int_probs", "all_predicted", np.ones((2, 3), np.int64), None, 0.5, I, "floating"),
    ("nan_probs", "max_probability", np.array([[np.nan, 0.5], [0.5, 0.5]], np.float32), None, 0.5, I, "NaN"),
    ("inf_prior", "prior_confidence", GOOD, np.where(GOOD > 0.8, np.inf, GOOD).astype(np.float32), 0.5, I, "NaN or inf"),
    ("gamma_zero", "max_probability", GOOD, None, 0.0, I, r"\(0, 1\]"),
    ("gamma_above_one", "prior_confidence", GOOD, GOOD, 1.5, I, r"\(0, 1\]"),
    ("gamma_nan", "all_predicted", GOOD, None, float("nan"), I, r"\(0, 1\]"),
    ("gamma_bool", "max_probability", GOOD, None, True, I, "real number"),
    ("ignore_collides", "max_probability", GOOD, None, 0.5, 1, "highest label"),
    ("ignore_not_int", "max_probability", GOOD, None, 0.5, 2.0, "integer"),
]


@pytest.mark.parametrize(
    "case_id, name, visual, prior, gamma, ignore, message", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_validation_errors(case_id, name, visual, prior, gamma, ignore, message):
    with pytest.raises(ValueError, match=message):
        get_selection_strategy(name).select(visual, prior, gamma, ignore)


def test_inputs_not_modified():
    visual = two_class([0.9, 0.6, 0.4, 0.3])
    prior = two_class([0.2, 0.7, 0.8, 0.6])
    v0, p0 = visual.copy(), prior.copy()
    for name in SELECTION_STRATEGIES:
        if name == "flare22":
            continue
        get_selection_strategy(name).select(visual, prior, 0.5, I)
    np.testing.assert_array_equal(visual, v0)
    np.testing.assert_array_equal(prior, p0)
