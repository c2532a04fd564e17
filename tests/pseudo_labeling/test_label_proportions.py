import pytest

from nnunet_stipple.pseudo_labeling.label_proportions import hidden_subset, labeled_count, labeled_subset

ALPHAS = [0.1, 0.3, 0.5, 0.7, 1.0]


def ids(n):
    return [f"case_{i:03d}" for i in range(n)]


@pytest.mark.parametrize("n_cases", [5, 10, 24, 41, 100])
@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
def test_nested_and_counts(n_cases, seed):
    case_ids = ids(n_cases)
    previous = set()
    for alpha in ALPHAS:
        n = labeled_count(n_cases, alpha)
        if n == 0:
            with pytest.raises(ValueError):
                labeled_subset(case_ids, alpha, seed)
            continue
        subset = labeled_subset(case_ids, alpha, seed)
        hidden = hidden_subset(case_ids, alpha, seed)
        assert len(subset) == n
        assert subset == sorted(subset) and hidden == sorted(hidden)
        assert set(subset) | set(hidden) == set(case_ids)
        assert not set(subset) & set(hidden)
        assert previous <= set(subset)  # nested
        previous = set(subset)
    assert labeled_subset(case_ids, 1.0, seed) == sorted(case_ids)
    assert hidden_subset(case_ids, 1.0, seed) == []


@pytest.mark.parametrize(
    "n_cases, alpha, expected",
    [
        (10, 0.1, 1),
        (10, 0.3, 3),
        (10, 0.5, 5),
        (10, 0.7, 7),
        (10, 1.0, 10),
        (5, 0.1, 1),  # 0.5 rounds half up
        (5, 0.3, 2),  # 1.5 -> 2
        (5, 0.5, 3),  # 2.5 -> 3
        (5, 0.7, 4),  # 3.5 -> 4
        (20, 0.125, 3),  # 2.5 -> 3
        (10, 0.15, 2),  # 1.5 -> 2 (0.15 is not exact in binary; decimal value is used)
        (10, 0.25, 3),  # 2.5 -> 3
        (3, 0.1, 0),
        (41, 0.3, 12),  # 12.3
    ],
)
def test_labeled_count(n_cases, alpha, expected):
    assert labeled_count(n_cases, alpha) == expected


def test_deterministic_and_order_independent():
    a = labeled_subset(ids(30), 0.3, seed=5)
    b = labeled_subset(list(reversed(ids(30))), 0.3, seed=5)
    assert a == b
    assert labeled_subset(ids(30), 0.3, seed=6) != a  # a different seed gives another draw


def test_seed_changes_selection_over_many_seeds():
    draws = {tuple(labeled_subset(ids(20), 0.5, seed=s)) for s in range(10)}
    assert len(draws) > 1


def test_zero_labeled_message_gives_smallest_alpha():
    with pytest.raises(ValueError, match=r"alpha >= 1/\(2\*4\) = 0\.125"):
        labeled_subset(ids(4), 0.1)
    assert len(labeled_subset(ids(4), 0.125)) == 1


@pytest.mark.parametrize(
    "case_ids, alpha, message",
    [
        (ids(10), 0.0, r"\(0, 1\]"),
        (ids(10), -0.5, r"\(0, 1\]"),
        (ids(10), 1.01, r"\(0, 1\]"),
        (ids(10), float("nan"), r"\(0, 1\]"),
        (ids(10), True, "number"),
        (ids(10), "0.5", "number"),
        ([], 0.5, "empty"),
        (["a", "b", "a"], 0.5, "duplicate"),
        ("abc", 0.5, "single string"),
        ([1, 2, 3], 0.5, "strings"),
    ],
)
def test_errors(case_ids, alpha, message):
    with pytest.raises(ValueError, match=message):
        labeled_subset(case_ids, alpha)
    with pytest.raises(ValueError, match=message):
        hidden_subset(case_ids, alpha)


@pytest.mark.parametrize("seed", [-1, 1.5, None])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        labeled_subset(ids(10), 0.5, seed)
