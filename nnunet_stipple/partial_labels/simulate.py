"""Simulating a partially labeled dataset from a fully labeled one (thesis ch. 3, section 3.4.1).

Chosen organs are removed (set to background) from a seeded proportion of the given cases (a fold's training
cases: validation cases keep their labels). The result is a *new* nnU-Net raw dataset written into a folder the
caller owns (a study's own ``nnUNet_raw``), never into the source dataset: images are symbolic links to the
source images, label files are derived copies, and ``partial_labels.json`` declares what was removed. The folder
is built in a temporary sibling and renamed into place (complete or absent).

``missing_as``: what the removed organs become in the cases that lose them. ``"background"`` (the thesis's naive
baseline and INERRANT's input: the declaration says which background is ambiguous) or ``"ignore"`` (nnU-Net's
ignore label, added to dataset.json as the highest label value: every voxel labeled background in such a case is
set to ignore, since with one softmax over background and organs none of them is known to be background for the
missing organs - thesis ch. 3, section 3.3.1: "when only one organ is missing no background label can be used";
the annotated organs' voxels stay labeled).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from nnunet_stipple.atomic import make_temp_dir
from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.partial_labels.declaration import DECLARATION_FILE, foreground_classes
from nnunet_stipple.pseudo_labeling.label_files import dataset_json_with_ignore, ignore_label_for


def cases_losing_labels(cases: Sequence[str], proportion: float, seed: int) -> List[str]:
    """round(proportion * n) of ``cases``, drawn with ``seed`` (the same cases whatever their listing order)."""
    if not 0 <= proportion <= 1:
        raise StippleInputError(f"the proportion of cases losing organs must be in [0, 1], got {proportion!r}")
    ordered = sorted(cases)
    n = int(round(proportion * len(ordered)))
    order = np.random.default_rng(seed).permutation(len(ordered))
    return sorted(ordered[i] for i in order[:n])


MISSING_AS = ("background", "ignore")


def derive_partial_dataset(source: Path, target_root: Path, dataset_id: int, name: str, remove: Sequence[str],
                           cases: Sequence[str], proportion: float, seed: int, missing_as: str = "background") -> Path:
    """Write ``target_root/Dataset<id>_<name>``: ``source`` (an nnU-Net raw dataset with imagesTr/labelsTr) where
    the classes ``remove`` are set to background (``missing_as="ignore"``: every background voxel to nnU-Net's
    ignore label) in ``cases_losing_labels(cases, proportion, seed)``."""
    import SimpleITK as sitk
    if missing_as not in MISSING_AS:
        raise StippleInputError(f"missing_as must be one of {MISSING_AS}, got {missing_as!r}")
    source, target_root = Path(source).resolve(), Path(target_root)
    dataset_json = json.loads((source / "dataset.json").read_text())
    if "dataset" in dataset_json:
        raise StippleInputError(f"{source / 'dataset.json'} lists its files under 'dataset'; the partial-label "
                                f"simulation derives datasets in the imagesTr/labelsTr layout only.")
    classes = foreground_classes(dataset_json, str(source / "dataset.json"))
    by_name = {n: c for c, n in classes.items()}
    unknown = [r for r in remove if r not in by_name]
    if unknown or not remove:
        raise StippleInputError(f"classes to remove {list(remove)}: {'unknown ' + str(unknown) if unknown else 'none'}"
                                f"; choose among {', '.join(by_name)}")
    target = target_root / f"Dataset{int(dataset_id):03d}_{name}"
    if target.resolve() == source or target.exists():
        raise StippleInputError(f"{target} already exists (or is the source dataset); the simulation writes a new "
                                f"dataset only: remove it or choose another id/name.")
    ending = dataset_json["file_ending"]
    losing = cases_losing_labels(cases, proportion, seed)
    missing_files = [c for c in cases if not (source / "labelsTr" / f"{c}{ending}").is_file()]
    if missing_files:
        raise StippleInputError(f"{source / 'labelsTr'} has no label file for case(s) {missing_files[:5]}")
    kept = [n for n in classes.values() if n not in remove]
    # the ignore variant: nnU-Net's ignore label, the highest value (added if dataset.json has none)
    labels = (dataset_json_with_ignore(dataset_json) if missing_as == "ignore" else dataset_json)["labels"]
    ignore = ignore_label_for(dataset_json)[0] if missing_as == "ignore" else None
    target_root.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(f".{target.name}.tmp-", target_root)
    try:
        (tmp / "labelsTr").mkdir()
        # images are shared, never copied or changed: links into the source dataset
        os.symlink(source / "imagesTr", tmp / "imagesTr", target_is_directory=True)
        removed: Dict[str, List[str]] = {}
        for label_file in sorted((source / "labelsTr").glob(f"*{ending}")):
            case = label_file.name[:-len(ending)]
            if case not in losing:
                shutil.copyfile(label_file, tmp / "labelsTr" / label_file.name)
                continue
            itk = sitk.ReadImage(str(label_file))
            seg = sitk.GetArrayFromImage(itk)
            for r in remove:
                seg[seg == by_name[r]] = 0
            if missing_as == "ignore":
                seg[seg == 0] = ignore
            out = sitk.GetImageFromArray(seg)
            out.CopyInformation(itk)
            sitk.WriteImage(out, str(tmp / "labelsTr" / label_file.name), True)
            removed[case] = list(remove)
        (tmp / "dataset.json").write_text(json.dumps(
            {**dataset_json, "name": name, "labels": labels,
             "description": f"{dataset_json.get('description', '')} Partially labeled copy: "
                            f"{', '.join(remove)} removed from {len(losing)} case(s) (seed {seed})"
                            + (", their background marked ignore." if missing_as == "ignore" else ".")},
            indent=2))
        (tmp / DECLARATION_FILE).write_text(json.dumps(
            {"description": f"simulated from {source}: {', '.join(remove)} removed, proportion {proportion:g} of "
                            f"{len(cases)} cases, seed {seed}",
             "annotated": {case: kept for case in losing}}, indent=2))
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
