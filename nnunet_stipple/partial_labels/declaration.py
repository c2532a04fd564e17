"""The declaration of a partially labeled dataset: which classes each case's label file annotates.

The user writes ``partial_labels.json`` next to ``dataset.json`` in ``nnUNet_raw/<Dataset>/`` (we only read it):

    {"annotated": {"case_003": ["liver"], "case_007": ["liver", "spleen", "pancreas"]}}

Keys of ``annotated`` are case identifiers as nnU-Net names them (``labelsTr/<case><file_ending>``), values the
names of the classes, as in dataset.json's ``labels``, that the case's label file annotates. Cases that are not
listed are fully annotated. In a listed case, a voxel labeled background is background only for the annotated
classes; for every other class it is ambiguous (thesis ch. 3, section 3.3.1).

Checked once, when a trainer starts (or with :func:`load_declaration`):

* errors (:class:`StippleInputError`, naming the file and what to do): not JSON / not the format above, an unknown
  class name, background or the ignore label listed, an unknown case, a class that is declared not annotated but
  has voxels in the case's label file (its voxels would be learned as that class while its background would be
  ambiguous: the declaration and the file disagree), a dataset with nnU-Net regions (INERRANT trains one sigmoid
  per label);
* warnings: a class declared annotated but absent from the case's label file (legitimate - an organ can be missing
  from a scan, e.g. after surgery - but often a typo in the declaration).
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from nnunet_stipple.errors import StippleInputError

DECLARATION_FILE = "partial_labels.json"
_TOP_LEVEL_KEYS = {"annotated", "description"}   # "description": free text for the humans who share the file


def foreground_classes(dataset_json: dict, source: str = "dataset.json") -> Dict[int, str]:
    """Foreground label value -> name (background and the ignore label left out). Regions are refused: INERRANT's
    per-class sigmoid is one output per label, and a region (a union of labels) has no single "annotated" state."""
    out: Dict[int, str] = {}
    for name, value in dataset_json["labels"].items():
        if isinstance(value, (list, tuple)):
            raise StippleInputError(
                f"{source}: label '{name}' is a region {list(value)}. Partially labeled training (INERRANT) "
                f"learns one sigmoid per label and does not support nnU-Net regions; use a dataset.json whose "
                f"labels are single values.")
        if name in ("background", "ignore"):
            continue
        out[int(value)] = name
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class PartialLabels:
    """Which foreground classes each case annotates. Cases absent from ``annotated`` are fully annotated."""
    classes: Dict[int, str]                                   # foreground label -> name (dataset.json)
    annotated: Dict[str, FrozenSet[int]] = field(default_factory=dict)
    source: Optional[str] = None                              # the file it came from (None: none, all complete)
    warnings: List[str] = field(default_factory=list)         # found when it was checked

    @classmethod
    def complete(cls, dataset_json: dict) -> "PartialLabels":
        """Every case fully annotated (no declaration file)."""
        return cls(foreground_classes(dataset_json))

    @property
    def labels(self) -> List[int]:
        return list(self.classes)

    @property
    def partial_cases(self) -> List[str]:
        return sorted(c for c, a in self.annotated.items() if a != frozenset(self.classes))

    def annotated_classes(self, case: str) -> FrozenSet[int]:
        return self.annotated.get(case, frozenset(self.classes))

    def missing_classes(self, case: str) -> FrozenSet[int]:
        return frozenset(self.classes) - self.annotated_classes(case)

    def annotation_mask(self, cases: Sequence[str]) -> np.ndarray:
        """(len(cases), K) bool: column j is the j-th foreground label in increasing order (the order of the
        network's class channels 1..K)."""
        labels = self.labels
        return np.array([[c in self.annotated_classes(k) for c in labels] for k in cases], dtype=bool).reshape(
            len(cases), len(labels))

    def to_json(self) -> dict:
        """The declaration with names, as the user wrote it (recorded next to a model)."""
        return {"source": self.source,
                "annotated": {case: [self.classes[c] for c in sorted(a)] for case, a in sorted(self.annotated.items())}}

    def summary(self) -> str:
        if not self.partial_cases:
            return "partial labels: every case fully annotated"
        counts = {name: sum(c not in self.annotated_classes(k) for k in self.annotated)
                  for c, name in self.classes.items()}
        missing = ", ".join(f"{n} missing in {v}" for n, v in counts.items() if v)
        return f"partial labels ({self.source}): {len(self.partial_cases)} partially annotated case(s); {missing}"


def parse_declaration(obj, dataset_json: dict, case_ids: Iterable[str], source: str) -> PartialLabels:
    """Check the JSON content of a declaration against dataset.json and the dataset's cases (no file access)."""
    classes = foreground_classes(dataset_json, source)
    by_name = {name: c for c, name in classes.items()}
    example = '{"annotated": {"case_003": ["liver", "spleen"]}}'
    if not isinstance(obj, dict) or "annotated" not in obj:
        raise StippleInputError(f"{source}: expected a JSON object with the key 'annotated', e.g. {example}")
    unknown_keys = sorted(set(obj) - _TOP_LEVEL_KEYS)
    if unknown_keys:
        raise StippleInputError(f"{source}: unknown key(s) {unknown_keys}; known: {sorted(_TOP_LEVEL_KEYS)}. "
                                f"Example: {example}")
    annotated = obj["annotated"]
    if not isinstance(annotated, dict):
        raise StippleInputError(f"{source}: 'annotated' must map case identifiers to lists of class names, e.g. "
                                f"{example}; got {type(annotated).__name__}")
    known_cases = set(case_ids)
    unknown_cases = sorted(set(annotated) - known_cases)
    if unknown_cases:
        shown = ", ".join(unknown_cases[:5]) + (" ..." if len(unknown_cases) > 5 else "")
        raise StippleInputError(
            f"{source}: unknown case(s) {shown} ({len(unknown_cases)}): not training cases of the dataset (labelsTr "
            f"or dataset.json 'dataset'). Use the case identifiers of the label files (without '"
            f"{dataset_json.get('file_ending', '')}'), e.g. {sorted(known_cases)[:3]}.")
    out: Dict[str, FrozenSet[int]] = {}
    for case, names in annotated.items():
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise StippleInputError(f"{source}: case '{case}': expected a list of class names (as in dataset.json "
                                    f"'labels'), got {names!r}")
        for n in names:
            if n in ("background", "ignore"):
                raise StippleInputError(f"{source}: case '{case}': '{n}' is not a class one annotates; list only "
                                        f"foreground classes ({', '.join(by_name)}).")
            if n not in by_name:
                raise StippleInputError(f"{source}: case '{case}': unknown class '{n}'; the classes of dataset.json "
                                        f"are {', '.join(by_name)}. Fix the name (names are case-sensitive).")
        out[case] = frozenset(by_name[n] for n in names)
    return PartialLabels(classes, out, source)


def check_against_labels(decl: PartialLabels, present: Callable[[str], Iterable[int]],
                         label_files: Mapping[str, str]) -> PartialLabels:
    """Check every declared case against the labels its file holds (``present(case)``: the label values found).

    A class declared missing but present is an error; one declared annotated but absent is a warning (returned in
    the result's ``warnings``)."""
    warnings: List[str] = []
    for case in sorted(decl.annotated):
        found = {int(v) for v in present(case)}
        stray = sorted(c for c in decl.missing_classes(case) if c in found)
        if stray:
            names = ", ".join(decl.classes[c] for c in stray)
            raise StippleInputError(
                f"{decl.source}: case '{case}' declares {names} not annotated, but {label_files.get(case, case)} has "
                f"voxels of {'it' if len(stray) == 1 else 'them'}. Add {names} to the case's annotated classes, or "
                f"leave the case out of the file if it is fully annotated.")
        absent = sorted(c for c in decl.annotated[case] if c not in found)
        if absent:
            warnings.append(f"{decl.source}: case '{case}' declares {', '.join(decl.classes[c] for c in absent)} "
                            f"annotated, but {label_files.get(case, case)} has no voxel of it: trained as 'absent "
                            f"from this scan'. If it is simply not annotated, remove it from the case's list.")
    return PartialLabels(decl.classes, dict(decl.annotated), decl.source, warnings)


def raw_dataset_folder(dataset_name: str) -> Optional[Path]:
    """``$nnUNet_raw/<Dataset>`` or None when nnUNet_raw is unset or lacks the dataset."""
    root = os.environ.get("nnUNet_raw")
    if not root:
        return None
    folder = Path(root) / dataset_name
    return folder if folder.is_dir() else None


def raw_label_files(raw_folder: Path, dataset_json: dict) -> Dict[str, str]:
    """Case -> label file of the raw dataset, as nnU-Net finds them (labelsTr or dataset.json's 'dataset')."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    # nnU-Net rewrites the 'dataset' entries of the dict it gets in place: give it a copy
    files = get_filenames_of_train_images_and_targets(str(raw_folder), copy.deepcopy(dataset_json))
    return {case: entry["label"] for case, entry in files.items()}


def read_label_values(label_file: str, dataset_json: dict) -> np.ndarray:
    """The label values present in one label file, read with the reader nnU-Net would use."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    reader = determine_reader_writer_from_dataset_json(dataset_json, label_file, verbose=False)()
    seg, _ = reader.read_seg(label_file)
    return np.unique(seg)


def load_declaration(dataset_name: str, dataset_json: dict) -> PartialLabels:
    """The dataset's declaration from ``$nnUNet_raw/<Dataset>/partial_labels.json``, checked against dataset.json
    and the declared cases' label files; every case fully annotated if there is no such file."""
    raw = raw_dataset_folder(dataset_name)
    if raw is None or not (raw / DECLARATION_FILE).is_file():
        return PartialLabels.complete(dataset_json)
    path = raw / DECLARATION_FILE
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise StippleInputError(f"{path} is not valid JSON ({e}). Fix it; the format is described in README.md, "
                                f"'Partially labeled datasets'.") from e
    raw_json_file = raw / "dataset.json"
    # the raw dataset.json locates the label files; the trainer's copy (preprocessed) defines the classes
    raw_json = json.loads(raw_json_file.read_text()) if raw_json_file.is_file() else dataset_json
    files = raw_label_files(raw, raw_json)
    decl = parse_declaration(obj, dataset_json, files, str(path))
    return check_against_labels(decl, lambda case: read_label_values(files[case], raw_json), files)
