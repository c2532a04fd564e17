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
