import json

import numpy as np
import pytest

from nnunet_stipple.pseudo_labeling.quality import added_label_quality, pooled_added_label_quality

I = 4
GT = np.array([[0, 1, 1, 1], [2, 2, 0, 1]])
PSEUDO = np.array([[1, 1, I, I], [2, 1, I, I]])


@pytest.mark.parametrize(
    "k, expected",
    [
        # class 1: added at 3 voxels, 1 of them is 1 in GT; GT has 4 voxels of class 1
        (1, {"added": 3, "gt_voxels": 4, "true_positive": 1, "precision": 1 / 3, "recall": 1 / 4}),
        # class 2: added at 1 voxel, correct; GT has 2
        (2, {"added": 1, "gt_voxels": 2, "true_positive": 1, "precision": 1.0, "recall": 0.5}),
        # background: nothing added -> precision undefined; recall 0 of 2
        (0, {"added": 0, "gt_voxels": 2, "true_positive": 0, "precision": None, "recall": 0.0}),
        # class absent everywhere: both undefined
        (3, {"added": 0, "gt_voxels": 0, "true_positive": 0, "precision": None, "recall": None}),
    ],
)
def test_per_class_numbers(k, expected):
    result = added_label_quality(PSEUDO, GT, I, [0, 1, 2, 3])
    assert list(result) == [0, 1, 2, 3]
    got = result[k]
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if value is None:
            assert got[key] is None
        else:
            assert got[key] == pytest.approx(value)


def test_added_but_absent_in_ground_truth():
    gt = np.zeros((3, 3), int)
    pseudo = np.full((3, 3), I)
    pseudo[1, 1] = 2
    r = added_label_quality(pseudo, gt, I, [2])
    assert r == {2: {"added": 1, "gt_voxels": 0, "true_positive": 0, "precision": 0.0, "recall": None}}


def test_pooled_and_json_serialisable():
    per_class = added_label_quality(PSEUDO, GT, I, [1, 2])
    pooled = pooled_added_label_quality(per_class)
    assert pooled == {"added": 4, "gt_voxels": 6, "true_positive": 2, "precision": 0.5, "recall": pytest.approx(1 / 3)}
    json.dumps({str(k): v for k, v in added_label_quality(PSEUDO, GT, I, range(4)).items()}, allow_nan=False)
    assert pooled_added_label_quality({})["precision"] is None


def test_nothing_counted_for_ignore_everywhere():
    r = added_label_quality(np.full_like(GT, I), GT, I, [1, 2])
    assert r[1]["added"] == 0 and r[1]["precision"] is None and r[1]["recall"] == 0.0


@pytest.mark.parametrize(
    "pseudo, gt, ignore, classes, message",
    [
        (PSEUDO, GT[:, :3], I, [1], "shape"),
        (PSEUDO, GT, I, [1, I], "ignore label"),
        (PSEUDO, GT, 4.0, [1], "integer"),
        (PSEUDO, GT, I, [1.5], "integers"),
    ],
)
def test_errors(pseudo, gt, ignore, classes, message):
    with pytest.raises(ValueError, match=message):
        added_label_quality(pseudo, gt, ignore, classes)
