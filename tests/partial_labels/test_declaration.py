"""partial_labels.json: parsing, every error path, the checks against the label files, loading from nnUNet_raw."""
from __future__ import annotations

import json

import numpy as np
import pytest

from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.partial_labels.declaration import DECLARATION_FILE, PartialLabels, check_against_labels, \
    load_declaration, parse_declaration

DATASET_JSON = {"labels": {"background": 0, "liver": 1, "spleen": 2, "pancreas": 3}, "file_ending": ".nii.gz",
                "channel_names": {"0": "CT"}, "numTraining": 3}
CASES = ["case_0", "case_1", "case_2"]
SRC = "/raw/Dataset9/partial_labels.json"


@pytest.mark.parametrize("obj, dataset_json, message", [
    ([], DATASET_JSON, "expected a JSON object with the key 'annotated'"),
    ({"cases": {}}, DATASET_JSON, "expected a JSON object with the key 'annotated'"),
    ({"annotated": {}, "comment": "x"}, DATASET_JSON, r"unknown key\(s\) \['comment'\]"),
    ({"annotated": ["case_0"]}, DATASET_JSON, "'annotated' must map case identifiers"),
    ({"annotated": {"case_9": ["liver"]}}, DATASET_JSON, r"unknown case\(s\) case_9 \(1\)"),
    ({"annotated": {"case_0": "liver"}}, DATASET_JSON, "case 'case_0': expected a list of class names"),
    ({"annotated": {"case_0": [1]}}, DATASET_JSON, "case 'case_0': expected a list of class names"),
    ({"annotated": {"case_0": ["Liver"]}}, DATASET_JSON, "unknown class 'Liver'.*liver, spleen, pancreas"),
    ({"annotated": {"case_0": ["background"]}}, DATASET_JSON, "'background' is not a class one annotates"),
    ({"annotated": {"case_0": ["ignore"]}}, {**DATASET_JSON, "labels": {**DATASET_JSON["labels"], "ignore": 4}},
     "'ignore' is not a class one annotates"),
    ({"annotated": {}}, {**DATASET_JSON, "labels": {"background": 0, "organ": [1, 2], "core": 2}},
     "label 'organ' is a region"),
])
def test_parse_errors_name_the_file_and_what_to_do(obj, dataset_json, message):
    with pytest.raises(StippleInputError, match=message) as e:
        parse_declaration(obj, dataset_json, CASES, SRC)
    assert SRC in str(e.value)


def test_parse_and_query():
    decl = parse_declaration({"description": "LiTS + TCIA", "annotated": {"case_0": ["liver"], "case_1": []}},
                             {**DATASET_JSON, "labels": {**DATASET_JSON["labels"], "ignore": 4}}, CASES, SRC)
    assert decl.classes == {1: "liver", 2: "spleen", 3: "pancreas"}   # the ignore label is no class
    assert decl.annotated_classes("case_0") == {1} and decl.missing_classes("case_0") == {2, 3}
    assert decl.annotated_classes("case_2") == {1, 2, 3}               # not listed: fully annotated
    assert decl.partial_cases == ["case_0", "case_1"]
    assert decl.annotation_mask(["case_2", "case_0", "case_1"]).tolist() == [
        [True, True, True], [True, False, False], [False, False, False]]
    assert decl.to_json()["annotated"] == {"case_0": ["liver"], "case_1": []}
    assert "2 partially annotated" in decl.summary() and "spleen missing in 2" in decl.summary()
    complete = PartialLabels.complete(DATASET_JSON)
    assert complete.partial_cases == [] and complete.annotation_mask(["x"]).tolist() == [[True, True, True]]


@pytest.mark.parametrize("present, error, warning", [
    ({"case_0": [0, 1], "case_1": [0, 1, 2]}, None, None),
    ({"case_0": [0, 1, 3], "case_1": [0, 1, 2]}, "case 'case_0' declares pancreas not annotated, but "
                                                 "labelsTr/case_0.nii.gz has voxels of it", None),
    ({"case_0": [0], "case_1": [0, 1, 2]}, None, "case 'case_0' declares liver annotated, but "
                                                 "labelsTr/case_0.nii.gz has no voxel of it"),
])
def test_check_against_labels(present, error, warning):
    decl = parse_declaration({"annotated": {"case_0": ["liver"], "case_1": ["liver", "spleen"]}}, DATASET_JSON,
                             CASES, SRC)
    files = {c: f"labelsTr/{c}.nii.gz" for c in CASES}
    if error:
        with pytest.raises(StippleInputError, match=error):
            check_against_labels(decl, present.__getitem__, files)
        return
    checked = check_against_labels(decl, present.__getitem__, files)
    assert checked.annotated == decl.annotated
    if warning:
        assert len(checked.warnings) == 1 and warning in checked.warnings[0]
    else:
        assert checked.warnings == []


def _raw_dataset(tmp_path, labels_by_case):
    from nnunet_stipple.phantom.generator import _write_nifti
    raw = tmp_path / "raw" / "Dataset009_Partial"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    for case, values in labels_by_case.items():
        seg = np.zeros((4, 4, 4), dtype=np.uint8)
        seg.flat[:len(values)] = values
        _write_nifti(seg, (1.0, 1.0, 1.0), raw / "labelsTr" / f"{case}.nii.gz")
        _write_nifti(np.zeros((4, 4, 4), np.float32), (1.0, 1.0, 1.0), raw / "imagesTr" / f"{case}_0000.nii.gz")
    (raw / "dataset.json").write_text(json.dumps(DATASET_JSON))
    return raw


def test_load_declaration_from_nnunet_raw(tmp_path, monkeypatch):
    raw = _raw_dataset(tmp_path, {"case_0": [1], "case_1": [1, 2], "case_2": [1, 2, 3]})
    monkeypatch.setenv("nnUNet_raw", str(raw.parent))
    assert load_declaration(raw.name, DATASET_JSON).partial_cases == []         # no file: all complete
    (raw / DECLARATION_FILE).write_text(json.dumps({"annotated": {"case_0": ["liver", "spleen"]}}))
    decl = load_declaration(raw.name, DATASET_JSON)
    assert decl.source == str(raw / DECLARATION_FILE) and decl.annotated_classes("case_0") == {1, 2}
    assert len(decl.warnings) == 1 and "declares spleen annotated" in decl.warnings[0]
    (raw / DECLARATION_FILE).write_text(json.dumps({"annotated": {"case_1": ["liver"]}}))
    with pytest.raises(StippleInputError, match=r"declares spleen not annotated, but .*labelsTr/case_1.nii.gz"):
        load_declaration(raw.name, DATASET_JSON)
    (raw / DECLARATION_FILE).write_text("{annotated: ")
    with pytest.raises(StippleInputError, match=f"{DECLARATION_FILE} is not valid JSON"):
        load_declaration(raw.name, DATASET_JSON)
    monkeypatch.delenv("nnUNet_raw")
    assert load_declaration(raw.name, DATASET_JSON).source is None
