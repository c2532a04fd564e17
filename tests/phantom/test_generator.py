"""Tests for the synthetic abdomen-like phantom generator (fast, CPU, temporary folders only)."""
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.phantom.generator import (
    NOISE_SIGMA_HU,
    PHANTOM_LABELS,
    UNLABELED_INDEX_OFFSET,
    make_phantom_case,
    make_phantom_dataset,
)

SHAPE = (40, 64, 64)
SPACING = (4.0, 2.0, 2.0)
ORGANS = [k for k in PHANTOM_LABELS if k != "background"]


@pytest.fixture(scope="module")
def cases():
    return [make_phantom_case(i, SHAPE, SPACING, seed=0) for i in range(16)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    return make_phantom_dataset(raw, dataset_id=990, name="STIPPLEPhantom", num_labeled=16, num_unlabeled=4, seed=0)


def test_case_dtypes_and_shapes(cases):
    image, label = cases[0]
    assert image.shape == SHAPE and label.shape == SHAPE
    assert image.dtype == np.int16 and label.dtype == np.uint8
    assert image.min() >= -1024 and image.max() <= 3071
    assert (image[label > 0] > -300).all()  # organs are soft tissue, never air or fat


def test_determinism():
    a_img, a_lab = make_phantom_case(3, SHAPE, SPACING, seed=7)
    b_img, b_lab = make_phantom_case(3, SHAPE, SPACING, seed=7)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    c_img, c_lab = make_phantom_case(3, SHAPE, SPACING, seed=8)
    assert not np.array_equal(a_img, c_img)
    assert not np.array_equal(a_lab, c_lab)
    d_img, _ = make_phantom_case(4, SHAPE, SPACING, seed=7)
    assert not np.array_equal(a_img, d_img)


def test_dataset_files_are_deterministic(tmp_path):
    a = make_phantom_dataset(tmp_path / "a", num_labeled=2, num_unlabeled=1, seed=5)
    b = make_phantom_dataset(tmp_path / "b", num_labeled=3, num_unlabeled=1, seed=5)  # more cases: same first ones
    for rel in ["imagesTr/phantom_001_0000.nii.gz", "labelsTr/phantom_001.nii.gz",
                "imagesUnlabeled/phantomU_000_0000.nii.gz"]:
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(a / rel))),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(b / rel))))
    img, _ = make_phantom_case(UNLABELED_INDEX_OFFSET, SHAPE, SPACING, seed=5)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(str(a / "imagesUnlabeled/phantomU_000_0000.nii.gz"))), img)


def test_dataset_layout_and_json(dataset):
    assert dataset.name == "Dataset990_STIPPLEPhantom"
    dj = json.loads((dataset / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "CT"}
    assert dj["labels"] == PHANTOM_LABELS
    assert dj["numTraining"] == 16
    assert dj["file_ending"] == ".nii.gz"
    assert dj["name"] == "STIPPLEPhantom" and dj["description"]
    meta = dj["stipple_phantom"]
    assert meta["seed"] == 0 and meta["shape"] == list(SHAPE) and meta["spacing"] == list(SPACING)
    assert meta["generator_version"] == 1 and meta["num_unlabeled"] == 4
    images = sorted(p.name for p in (dataset / "imagesTr").iterdir())
    labels = sorted(p.name for p in (dataset / "labelsTr").iterdir())
    unlabeled = sorted(p.name for p in (dataset / "imagesUnlabeled").iterdir())
    assert images == [f"phantom_{i:03d}_0000.nii.gz" for i in range(16)]
    assert labels == [f"phantom_{i:03d}.nii.gz" for i in range(16)]
    assert unlabeled == [f"phantomU_{i:03d}_0000.nii.gz" for i in range(4)]
    assert not any(n.startswith("phantomU") for n in labels)
    # no leftovers of the atomic build next to the dataset
    assert [p.name for p in dataset.parent.iterdir()] == [dataset.name]


def test_geometry_written_in_sitk_order(dataset):
    img = sitk.ReadImage(str(dataset / "imagesTr" / "phantom_000_0000.nii.gz"))
    lab = sitk.ReadImage(str(dataset / "labelsTr" / "phantom_000.nii.gz"))
    assert img.GetSize() == (64, 64, 40)  # SimpleITK: (x, y, z)
    assert img.GetSpacing() == (2.0, 2.0, 4.0)
    assert img.GetOrigin() == (0.0, 0.0, 0.0)
    assert img.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert lab.GetSpacing() == img.GetSpacing()
    assert img.GetPixelID() == sitk.sitkInt16 and lab.GetPixelID() == sitk.sitkUInt8
    expected_img, expected_lab = make_phantom_case(0, SHAPE, SPACING, seed=0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), expected_img)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(lab), expected_lab)


def test_nnunet_verify_dataset_integrity(dataset):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(dataset), num_processes=1)  # raises on any problem; ignores imagesUnlabeled


def test_labels_only_from_dataset_json_and_every_class_present(cases):
    allowed = set(PHANTOM_LABELS.values())
    counts = {k: 0 for k in ORGANS}
    for _, label in cases:
        values = set(np.unique(label).tolist())
        assert values <= allowed
        for k in ORGANS:
            counts[k] += PHANTOM_LABELS[k] in values
    assert all(c >= 12 for c in counts.values()), counts


def test_position_varies_much_more_along_z_than_in_plane(cases):
    for organ in ORGANS:
        centres = np.array([ndimage.center_of_mass(label == PHANTOM_LABELS[organ]) for _, label in cases
                            if (label == PHANTOM_LABELS[organ]).any()])
        rel_std = centres.std(axis=0) / np.array(SHAPE)
        assert rel_std[0] > 3 * rel_std[1] and rel_std[0] > 3 * rel_std[2], (organ, rel_std)
        assert rel_std[0] > 0.05, (organ, rel_std)  # z jitter is substantial (several slices)


def test_liver_and_spleen_look_alike_and_overlap_tissue(cases):
    liver = np.mean([img[lab == PHANTOM_LABELS["liver"]].mean() for img, lab in cases
                     if (lab == PHANTOM_LABELS["liver"]).any()])
    spleen = np.mean([img[lab == PHANTOM_LABELS["spleen"]].mean() for img, lab in cases
                      if (lab == PHANTOM_LABELS["spleen"]).any()])
    assert abs(liver - spleen) < NOISE_SIGMA_HU
    # organs sit within a few noise sigmas of the surrounding soft tissue (liver, spleen, pancreas within two;
    # kidneys brighter, as in contrast CT), so appearance alone does not identify them
    tolerance = {"liver": 2.0, "spleen": 2.0, "pancreas": 2.0, "right_kidney": 3.0, "left_kidney": 3.0}
    for img, lab in cases:
        tissue = img[(lab == 0) & (img > -50) & (img < 200)].mean()
        for organ in ORGANS:
            m = lab == PHANTOM_LABELS[organ]
            if m.any():
                assert abs(img[m].mean() - tissue) < tolerance[organ] * NOISE_SIGMA_HU, organ


def test_organs_mostly_inside_volume(cases):
    cut = 0
    for _, label in cases:
        cut += int(label[0].any() or label[-1].any())
    assert cut <= 4


def test_refuses_to_overwrite(tmp_path):
    folder = make_phantom_dataset(tmp_path, num_labeled=1, num_unlabeled=0, shape=(16, 24, 24))
    marker = folder / "marker.txt"
    marker.write_text("x")
    with pytest.raises(StippleInputError, match="--overwrite") as excinfo:
        make_phantom_dataset(tmp_path, num_labeled=1, num_unlabeled=0, shape=(16, 24, 24))
    assert str(folder) in str(excinfo.value)
    assert marker.exists()
    again = make_phantom_dataset(tmp_path, num_labeled=2, num_unlabeled=0, shape=(16, 24, 24), overwrite=True)
    assert again == folder and not marker.exists()
    assert len(list((folder / "imagesTr").iterdir())) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]


def test_refuses_same_id_other_name(tmp_path):
    (tmp_path / "Dataset990_Other").mkdir()
    with pytest.raises(StippleInputError, match="Dataset990_Other"):
        make_phantom_dataset(tmp_path, dataset_id=990, name="STIPPLEPhantom", num_labeled=1, num_unlabeled=0)
    assert not (tmp_path / "Dataset990_STIPPLEPhantom").exists()


@pytest.mark.parametrize("kwargs", [dict(shape=(8, 64, 64)), dict(spacing=(0, 1, 1)), dict(num_labeled=0),
                                    dict(num_unlabeled=-1), dict(dataset_id=1000), dict(name="bad name")])
def test_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(StippleInputError):
        make_phantom_dataset(tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []
