import copy

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_stipple.pseudo_labeling.label_files import dataset_json_with_ignore, ignore_label_for, write_label_like


def dj(labels):
    return {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 3, "file_ending": ".nii.gz"}


@pytest.mark.parametrize(
    "labels, expected",
    [
        ({"background": 0, "pancreas": 1}, (2, False)),
        ({"background": 0, "liver": 1, "spleen": 2, "pancreas": 3}, (4, False)),
        ({"background": 0, "pancreas": 1, "ignore": 2}, (2, True)),
        ({"background": 0, "pancreas": 1, "ignore": 5}, (5, True)),
        ({"background": 0, "whole": [1, 2], "core": 2}, (3, False)),  # region-based entries
    ],
)
def test_ignore_label_for(labels, expected):
    assert ignore_label_for(dj(labels)) == expected


@pytest.mark.parametrize(
    "labels, message",
    [
        ({"background": 0, "ignore": 1, "pancreas": 2}, r"'ignore' has value 1 but must be the highest.*'pancreas'"),
        ({"background": 0, "pancreas": 1, "ignore": 1}, "must be the highest"),
        ({"background": 0, "pancreas": 1, "ignore": [2]}, "single integer"),
        ({"background": 0, "pancreas": "1"}, "non-integer"),
        ({}, "no 'labels'"),
        ({"ignore": 1}, "no label besides"),
    ],
)
def test_ignore_label_for_errors(labels, message):
    with pytest.raises(ValueError, match=message):
        ignore_label_for(dj(labels))


def test_ignore_label_for_missing_labels():
    with pytest.raises(ValueError, match="labels"):
        ignore_label_for({"channel_names": {"0": "CT"}})


@pytest.mark.parametrize(
    "labels, expected_labels",
    [
        ({"background": 0, "pancreas": 1}, {"background": 0, "pancreas": 1, "ignore": 2}),
        ({"background": 0, "pancreas": 1, "ignore": 2}, {"background": 0, "pancreas": 1, "ignore": 2}),
    ],
)
def test_dataset_json_with_ignore(labels, expected_labels):
    original = dj(labels)
    snapshot = copy.deepcopy(original)
    out = dataset_json_with_ignore(original)
    assert out["labels"] == expected_labels
    assert list(out["labels"])[-1] == "ignore"
    assert original == snapshot  # input untouched
    assert out is not original and out["labels"] is not original["labels"]
    assert {k: v for k, v in out.items() if k != "labels"} == {k: v for k, v in original.items() if k != "labels"}


def test_dataset_json_with_ignore_bad_existing():
    with pytest.raises(ValueError, match="highest"):
        dataset_json_with_ignore(dj({"background": 0, "ignore": 1, "pancreas": 2}))


def _reference(tmp_path, shape, spacing, origin, direction, name="img_0000.nii.gz"):
    img = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    path = tmp_path / name
    sitk.WriteImage(img, str(path))
    return path


ROT_Z = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
GEOMETRIES = [
    ("3d_identity", (4, 5, 6), (0.8, 0.9, 2.5), (1.0, -2.0, 3.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)),
    ("3d_rotated", (3, 4, 5), (1.5, 0.7, 0.7), (-100.0, 20.5, 7.25), ROT_Z),
    ("2d", (6, 7), (0.5, 0.25), (3.0, 4.0), (0.0, 1.0, 1.0, 0.0)),
]


@pytest.mark.parametrize("case_id, shape, spacing, origin, direction", GEOMETRIES, ids=[g[0] for g in GEOMETRIES])
@pytest.mark.parametrize("ignore", [2, 300])
def test_write_label_like_geometry(tmp_path, case_id, shape, spacing, origin, direction, ignore):
    ref = _reference(tmp_path, shape, spacing, origin, direction)
    label = np.random.default_rng(1).integers(0, 2, size=shape).astype(np.int16)
    label[(0,) * len(shape)] = ignore
    out_dir = tmp_path / "labelsTr"
    out = write_label_like(label, ref, out_dir / "case.nii.gz")
    assert out == out_dir / "case.nii.gz"
    written = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), label)
    np.testing.assert_allclose(written.GetSpacing(), spacing)
    np.testing.assert_allclose(written.GetOrigin(), origin)
    np.testing.assert_allclose(written.GetDirection(), direction, atol=1e-6)
    expected_dtype = sitk.sitkUInt8 if ignore <= 255 else sitk.sitkInt16
    assert written.GetPixelID() == expected_dtype
    assert sorted(p.name for p in out_dir.iterdir()) == ["case.nii.gz"]  # no temp files left


def test_write_label_like_overwrites_atomically(tmp_path):
    ref = _reference(tmp_path, (2, 3, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    out = tmp_path / "case.nii.gz"
    write_label_like(np.zeros((2, 3, 4), np.uint8), ref, out)
    write_label_like(np.ones((2, 3, 4), bool), ref, out)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), np.ones((2, 3, 4)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.nii.gz", "img_0000.nii.gz"]


def test_write_label_like_shape_mismatch(tmp_path):
    ref = _reference(tmp_path, (4, 5, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    out = tmp_path / "out" / "case.nii.gz"
    with pytest.raises(ValueError) as e:
        write_label_like(np.zeros((6, 5, 4), np.uint8), ref, out)
    assert str(ref) in str(e.value) and str(out) in str(e.value)
    assert not out.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    "label, message",
    [
        (np.zeros((2, 3, 4), np.float32), "integer"),
        (np.full((2, 3, 4), 40000, np.int32), "int16"),
    ],
)
def test_write_label_like_bad_values(tmp_path, label, message):
    ref = _reference(tmp_path, (2, 3, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    with pytest.raises(ValueError, match=message):
        write_label_like(label, ref, tmp_path / "case.nii.gz")
    assert not (tmp_path / "case.nii.gz").exists()


def test_write_label_like_missing_reference(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        write_label_like(np.zeros((2, 2, 2), np.uint8), tmp_path / "missing.nii.gz", tmp_path / "case.nii.gz")


def test_write_label_like_failure_leaves_no_temp(tmp_path, monkeypatch):
    ref = _reference(tmp_path, (2, 3, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", boom)
    out_dir = tmp_path / "labelsTr"
    with pytest.raises(RuntimeError, match="disk full"):
        write_label_like(np.zeros((2, 3, 4), np.uint8), ref, out_dir / "case.nii.gz")
    assert list(out_dir.iterdir()) == []
