"""The partial-label simulation: seeded case choice, derived labels in a new dataset, source untouched."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.partial_labels.declaration import load_declaration
from nnunet_stipple.partial_labels.simulate import cases_losing_labels, derive_partial_dataset
from nnunet_stipple.phantom.generator import make_phantom_dataset


@pytest.mark.parametrize("n, proportion, expected", [(10, 0.0, 0), (10, 0.3, 3), (10, 1.0, 10), (7, 0.5, 4)])
def test_cases_losing_labels_is_seeded_and_order_free(n, proportion, expected):
    cases = [f"c{i}" for i in range(n)]
    chosen = cases_losing_labels(cases, proportion, seed=3)
    assert len(chosen) == expected and set(chosen) <= set(cases)
    assert cases_losing_labels(list(reversed(cases)), proportion, seed=3) == chosen
    with pytest.raises(StippleInputError, match="proportion"):
        cases_losing_labels(cases, 1.5, 0)


def test_derive_partial_dataset(tmp_path, monkeypatch):
    src = make_phantom_dataset(tmp_path / "user_raw", dataset_id=993, num_labeled=4, num_unlabeled=0,
                               shape=(16, 16, 16))
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (src / "labelsTr").iterdir()}
    cases = sorted(p.name[:-7] for p in (src / "labelsTr").iterdir())
    study_raw = tmp_path / "study_raw"
    out = derive_partial_dataset(src, study_raw, 994, "Partial", ["spleen"], cases, 0.5, seed=0)
    losing = cases_losing_labels(cases, 0.5, 0)
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (src / "labelsTr").iterdir()} == before
    for case in cases:
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / f"{case}.nii.gz")))
        orig = sitk.GetArrayFromImage(sitk.ReadImage(str(src / "labelsTr" / f"{case}.nii.gz")))
        if case in losing:
            assert not (seg == 2).any() and np.array_equal(seg[orig != 2], orig[orig != 2])
        else:
            assert np.array_equal(seg, orig)
    assert (out / "imagesTr").resolve() == (src / "imagesTr").resolve()
    monkeypatch.setenv("nnUNet_raw", str(study_raw))
    decl = load_declaration(out.name, json.loads((out / "dataset.json").read_text()))
    assert decl.partial_cases == losing and all(decl.missing_classes(c) == {2} for c in losing)
    with pytest.raises(StippleInputError, match="already exists"):
        derive_partial_dataset(src, study_raw, 994, "Partial", ["spleen"], cases, 0.5, seed=0)
    with pytest.raises(StippleInputError, match="unknown"):
        derive_partial_dataset(src, study_raw, 995, "P2", ["kidney"], cases, 0.5, seed=0)


# hand-made tiny label volumes (z, y, x) = (1, 2, 4): liver 1, kidney 2, spleen 3
_TINY = {"a": [[[0, 1, 2, 3], [0, 1, 2, 2]]], "b": [[[0, 0, 1, 1], [3, 3, 0, 0]]], "c": [[[1, 2, 3, 0], [0, 0, 0, 0]]]}


def _tiny_source(root):
    src = root / "Dataset901_Tiny"
    (src / "imagesTr").mkdir(parents=True)
    (src / "labelsTr").mkdir()
    (src / "dataset.json").write_text(json.dumps({
        "labels": {"background": 0, "liver": 1, "kidney": 2, "spleen": 3}, "channel_names": {"0": "CT"},
        "numTraining": 3, "file_ending": ".nii.gz"}))
    for case, arr in _TINY.items():
        sitk.WriteImage(sitk.GetImageFromArray(np.array(arr, np.uint8)), str(src / "labelsTr" / f"{case}.nii.gz"))
    return src


@pytest.mark.parametrize("missing_as, remove, expected_a, expected_b, ignore", [
    # missing organs as background: the removed organs' voxels become 0, the rest stays
    ("background", ["kidney", "spleen"], [[[0, 1, 0, 0], [0, 1, 0, 0]]], [[[0, 0, 1, 1], [0, 0, 0, 0]]], None),
    ("background", ["liver"], [[[0, 0, 2, 3], [0, 0, 2, 2]]], [[[0, 0, 0, 0], [3, 3, 0, 0]]], None),
    # as ignore: every background voxel of a case that lost organs (true background and removed organs) is
    # ignore (4, one above spleen); the kept organs stay labeled
    ("ignore", ["kidney", "spleen"], [[[4, 1, 4, 4], [4, 1, 4, 4]]], [[[4, 4, 1, 1], [4, 4, 4, 4]]], 4),
    ("ignore", ["liver"], [[[4, 4, 2, 3], [4, 4, 2, 2]]], [[[4, 4, 4, 4], [3, 3, 4, 4]]], 4),
])
def test_missing_as_variants_on_tiny_volumes(tmp_path, missing_as, remove, expected_a, expected_b, ignore):
    src = _tiny_source(tmp_path / "src")
    # cases a and b lose the organs (proportion 1 of them); c is not among the cases (a validation case)
    out = derive_partial_dataset(src, tmp_path / "derived", 901, "Tiny", remove, ["a", "b"], 1.0, seed=0,
                                 missing_as=missing_as)

    def seg(folder, case):
        return sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / f"{case}.nii.gz"))).tolist()
    assert seg(out, "a") == expected_a and seg(out, "b") == expected_b
    assert seg(out, "c") == _TINY["c"] and seg(src, "a") == _TINY["a"]       # untouched
    labels = json.loads((out / "dataset.json").read_text())["labels"]
    assert labels.get("ignore") == ignore and json.loads((src / "dataset.json").read_text())["labels"].get(
        "ignore") is None
    declared = json.loads((out / "partial_labels.json").read_text())["annotated"]
    assert declared == {c: [n for n in ("liver", "kidney", "spleen") if n not in remove] for c in ("a", "b")}


def test_missing_as_is_checked(tmp_path):
    src = _tiny_source(tmp_path / "src")
    with pytest.raises(StippleInputError, match="missing_as"):
        derive_partial_dataset(src, tmp_path / "d", 901, "Tiny", ["liver"], ["a"], 1.0, 0, missing_as="zero")
