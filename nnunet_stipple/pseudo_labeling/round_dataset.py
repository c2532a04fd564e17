"""The training set of one pseudo-labeling round, as an nnU-Net preprocessed folder.

Images are symlinked from where nnU-Net (or :mod:`.unlabeled`) preprocessed them; labels are the
original ones for labeled cases and the round's pseudo-labels (ignore label where nothing was selected)
for the others. Each case's ``.pkl`` properties get ``class_locations`` recomputed with nnU-Net's own
sampler for the ignore-aware label set (nnU-Net draws non-foreground patches from annotated voxels when an
ignore label exists). The folder is rebuilt atomically for every round; the user's data is only read.
"""
from __future__ import annotations

import os
import pickle  # nnU-Net's own properties format (its data loader reads .pkl); not used for our artefacts
import shutil
from pathlib import Path
from typing import Dict, List

import numpy as np
from tqdm import tqdm

from nnunet_stipple.atomic import make_temp_dir
from nnunet_stipple.errors import StippleInputError


def _link(src: Path, dst: Path) -> None:
    try:
        os.symlink(src.resolve(), dst)
    except OSError:
        shutil.copyfile(src, dst)


def class_locations_for(seg: np.ndarray, label_manager) -> dict:
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    collect = list(label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels)
    if label_manager.has_ignore_label:
        collect.append([-1] + list(label_manager.all_labels))
    return DefaultPreprocessor._sample_foreground_locations(seg, collect, verbose=False)


def build_round_folder(target: Path, labeled: Dict[str, Path], pseudo: Dict[str, tuple], label_manager) -> Path:
    """labeled: case -> folder of its preprocessed files; pseudo: case -> (image folder, seg array (1, *S))."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    target = Path(target)
    tmp = make_temp_dir(f".{target.name}.", target.parent)
    try:
        for case, folder in tqdm(sorted(labeled.items()), desc="round data: labeled cases", unit="case",
                                 disable=len(labeled) < 2):
            if not (folder / f"{case}.b2nd").is_file():
                raise StippleInputError(f"{folder / case}.b2nd not found: pseudo-labeling needs nnU-Net's blosc2 "
                                        f"preprocessed format (nnunetv2 >= 2.6); re-run nnUNetv2_preprocess.")
            _link(folder / f"{case}.b2nd", tmp / f"{case}.b2nd")
            _link(folder / f"{case}_seg.b2nd", tmp / f"{case}_seg.b2nd")
            seg = np.asarray(nnUNetDatasetBlosc2(str(folder), [case]).load_case(case)[1])
            _write_properties(folder / f"{case}.pkl", tmp / f"{case}.pkl", seg, label_manager)
        for case, (folder, seg) in tqdm(sorted(pseudo.items()), desc="round data: pseudo-labeled cases",
                                        unit="case", disable=len(pseudo) < 2):
            _link(folder / f"{case}.b2nd", tmp / f"{case}.b2nd")
            nnUNetDatasetBlosc2.save_seg(seg.astype(np.int16 if seg.max() > 127 else np.int8), str(tmp / f"{case}_seg"))
            _write_properties(folder / f"{case}.pkl", tmp / f"{case}.pkl", seg, label_manager)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write_properties(src: Path, dst: Path, seg: np.ndarray, label_manager) -> None:
    with open(src, "rb") as f:
        props = pickle.load(f)
    props["class_locations"] = class_locations_for(seg, label_manager)
    with open(dst, "wb") as f:
        pickle.dump(props, f)


def round_case_ids(labeled: List[str], pseudo: List[str]) -> List[str]:
    return sorted(set(labeled) | set(pseudo))
