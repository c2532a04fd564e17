"""Unlabeled cases: hidden training cases (label-proportion simulation) and raw ``imagesUnlabeled/`` images.

Raw unlabeled images are preprocessed once per configuration with the dataset's own nnU-Net preprocessor
into ``nnUNet_preprocessed/<Dataset>/stipple_unlabeled/<data_identifier>/`` (one case at a time, the
``.pkl`` written last so a half-written case is redone). Their files follow nnU-Net's naming
(``<case>_0000.nii.gz``...) and must have the dataset's channels and orientation.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from tqdm import tqdm

from nnunet_stipple.atomic import make_temp_dir
from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.nnunet_folders import PreprocessedDataset
from nnunet_stipple.priors.geometry import UnknownGeometryError, preprocessed_axial_axis

UNLABELED_RAW_FOLDER = "imagesUnlabeled"
UNLABELED_PREPROCESSED_FOLDER = "stipple_unlabeled"


@dataclass(frozen=True)
class UnlabeledCase:
    case: str
    data_folder: Path          # folder holding <case>.b2nd and <case>.pkl (nnU-Net blosc2 layout)
    hidden: bool               # a training case whose label is hidden (its ground truth is known)


def raw_unlabeled_images(raw_dataset_folder: Path, dataset_json: dict) -> Dict[str, List[Path]]:
    """Case id -> channel files of ``imagesUnlabeled/``; {} if the folder does not exist."""
    from nnunet_stipple.inference.input_checks import check_input_folder
    folder = Path(raw_dataset_folder) / UNLABELED_RAW_FOLDER
    if not folder.is_dir():
        return {}
    if not any(folder.iterdir()):
        raise StippleInputError(f"{folder} is empty. Put unlabeled images there (nnU-Net naming, e.g. "
                                f"case_0000{dataset_json['file_ending']}) or remove the folder.")
    cases = check_input_folder(str(folder), dataset_json)
    n = len(dataset_json["channel_names"])
    return {c: [folder / f"{c}_{i:04d}{dataset_json['file_ending']}" for i in range(n)] for c in cases}


def preprocess_unlabeled(ds: PreprocessedDataset, images: Dict[str, List[Path]], expected_axial_axis: int,
                         reserved_ids: Optional[set] = None) -> Path:
    """Preprocess raw unlabeled images like nnU-Net's training cases; returns the folder."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    clash = sorted(set(images) & set(reserved_ids or ()))
    if clash:
        raise StippleInputError(f"Unlabeled case ids {clash[:5]} in {UNLABELED_RAW_FOLDER}/ are also training case "
                                f"ids of {ds.name}; rename the unlabeled files.")
    out = ds.base / UNLABELED_PREPROCESSED_FOLDER / ds.configuration_manager.data_identifier
    out.mkdir(parents=True, exist_ok=True)
    todo = [c for c in sorted(images) if not (out / f"{c}.pkl").is_file()]
    if not todo:
        return out
    pm = PlansManager(ds.plans)
    cm = pm.get_configuration(ds.configuration)
    preprocessor = cm.preprocessor_class(verbose=False)
    for case in tqdm(todo, desc="preprocessing unlabeled images", unit="case"):
        try:
            data, seg, props = preprocessor.run_case([str(f) for f in images[case]], None, pm, cm, ds.dataset_json)
        except Exception as e:  # nnU-Net's reader errors do not name the file
            raise StippleInputError(f"Cannot preprocess unlabeled case {case} ({images[case][0]}): {e}") from e
        try:
            axis = preprocessed_axial_axis(props, ds.transpose_forward)
        except UnknownGeometryError as e:
            raise StippleInputError(f"{images[case][0]}: {e}") from e
        if axis != expected_axial_axis:
            raise StippleInputError(
                f"{images[case][0]} is oriented differently from the training images (its axial axis is array axis "
                f"{axis}, the prior's is {expected_axial_axis}). Reorient it like the training data or remove it.")
        tmp = make_temp_dir(f".{case}.", out)
        try:
            nnUNetDatasetBlosc2.save_case(data, seg, props, str(tmp / case))
            for suffix in (".b2nd", "_seg.b2nd", ".pkl"):  # .pkl last: it marks the case complete
                os.replace(tmp / f"{case}{suffix}", out / f"{case}{suffix}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def collect_unlabeled_cases(ds: PreprocessedDataset, hidden_cases: List[str], sources: List[str],
                            expected_axial_axis: int, training_ids: set) -> List[UnlabeledCase]:
    cases = []
    if "hidden" in sources:
        cases += [UnlabeledCase(c, ds.data_folder, True) for c in sorted(hidden_cases)]
    if "imagesUnlabeled" in sources:
        raw_root = os.environ.get("nnUNet_raw")
        if raw_root:
            images = raw_unlabeled_images(Path(raw_root) / ds.name, ds.dataset_json)
            if images:
                folder = preprocess_unlabeled(ds, images, expected_axial_axis, reserved_ids=training_ids)
                cases += [UnlabeledCase(c, folder, False) for c in sorted(images)]
    return cases


class UnlabeledCasesMixin:
    """The unlabeled cases of a trainer's fold (mix into a trainer with ``LabelProportionMixin``): hidden training
    cases and ``imagesUnlabeled/`` as ``stipple_run.json``'s ``unlabeled_sources`` says; never validation cases."""

    def unlabeled_cases(self) -> List[UnlabeledCase]:
        from nnunet_stipple.nnunet_folders import open_preprocessed
        ds = open_preprocessed(self.plans_manager.dataset_name, self.configuration_name, self.plans_manager.plans_name)
        tr, val = self.fold_split()
        axis = self.expected_axial_axis(ds)
        return collect_unlabeled_cases(ds, self.hidden_cases(), self.run_config.unlabeled_sources, axis,
                                       set(tr) | set(val))

    def expected_axial_axis(self, ds) -> int:
        from nnunet_stipple.priors.geometry import axial_axis_of_cases
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        first = self.labeled_cases()[0]
        props = infer_dataset_class(str(ds.data_folder))(str(ds.data_folder), [first]).load_case(first)[3]
        return axial_axis_of_cases({first: props}, ds.transpose_forward)
