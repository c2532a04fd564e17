"""nnU-Net's folders as the project reads them: one dataset resolver, one fold parser, the preprocessed dataset of a
configuration with its plans, dataset.json and splits. Every command and package goes through here.

Nothing here writes under ``nnUNet_raw``; ``splits_final.json`` is created (atomically) in ``nnUNet_preprocessed``
exactly as nnU-Net's trainer would if it is missing.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from nnunet_stipple.atomic import write_json_atomic
from nnunet_stipple.errors import StippleInputError

Fold = Union[int, str]


@dataclass(frozen=True)
class PreprocessedDataset:
    """Where nnU-Net keeps one dataset's preprocessed configuration, with everything the prior needs."""
    name: str
    base: Path                 # nnUNet_preprocessed/DatasetXXX_Name
    plans_identifier: str
    configuration: str
    plans: dict
    dataset_json: dict

    @property
    def configuration_manager(self):
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
        return PlansManager(self.plans).get_configuration(self.configuration)

    @property
    def label_manager(self):
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
        return PlansManager(self.plans).get_label_manager(self.dataset_json)

    @property
    def data_folder(self) -> Path:
        return self.base / self.configuration_manager.data_identifier

    @property
    def transpose_forward(self) -> List[int]:
        return list(self.plans["transpose_forward"])

    @property
    def foreground_labels(self) -> Dict[int, str]:
        names = {v: k for k, v in self.dataset_json["labels"].items() if isinstance(v, int)}
        return {int(c): names.get(c, f"label_{c}") for c in self.label_manager.foreground_labels}


def spacing_3d(ds: "PreprocessedDataset") -> List[float]:
    """Voxel spacing of the configuration's preprocessed arrays along all three axes.

    nnU-Net's 2d configuration resamples in-plane only and keeps each case's own spacing along the first
    axis; the dataset's median spacing stands in for it (it only converts mm settings to voxels)."""
    spacing = [float(s) for s in ds.configuration_manager.spacing]
    if len(spacing) == 2:
        spacing = [float(ds.plans["original_median_spacing_after_transp"][0])] + spacing
    return spacing


def nnunet_preprocessed_root() -> Path:
    root = os.environ.get("nnUNet_preprocessed")
    if not root:
        raise StippleInputError("The environment variable nnUNet_preprocessed is not set. Set it to nnU-Net's "
                                "preprocessed folder (see README.md, 'nnU-Net folders').")
    return Path(root)


def resolve_dataset_name(dataset: Union[int, str]) -> str:
    """``DatasetXXX_Name`` from an id (``101``, ``"101"``) or a name, as nnU-Net's commands resolve ``-d``."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        return maybe_convert_to_dataset_name(dataset if isinstance(dataset, int) else str(dataset).strip())
    except (RuntimeError, ValueError) as e:
        raise StippleInputError(f"Dataset {dataset} not found under nnUNet_raw / nnUNet_preprocessed / "
                                f"nnUNet_results ({str(e).splitlines()[0]}). Check the id and the nnU-Net folder "
                                f"variables.") from e


def open_preprocessed(dataset: Union[int, str], configuration: str,
                      plans_identifier: str = "nnUNetPlans") -> PreprocessedDataset:
    name = resolve_dataset_name(dataset)
    base = nnunet_preprocessed_root() / name
    plans_file = base / f"{plans_identifier}.json"
    hint = (f"Run `nnUNetv2_plan_and_preprocess -d {dataset} -c {configuration}` first"
            f"{'' if plans_identifier == 'nnUNetPlans' else f' (with -pl/-overwrite_plans_name for {plans_identifier})'}.")
    if not plans_file.is_file():
        raise StippleInputError(f"{plans_file} does not exist: dataset {name} is not planned/preprocessed. {hint}")
    plans = json.loads(plans_file.read_text())
    if configuration not in plans["configurations"]:
        raise StippleInputError(f"Configuration '{configuration}' is not in {plans_file} (available: "
                                f"{', '.join(plans['configurations'])}).")
    ds = PreprocessedDataset(name, base, plans_identifier, configuration, plans,
                             json.loads((base / "dataset.json").read_text()))
    if ds.configuration_manager.previous_stage_name is not None:
        raise StippleInputError(f"Configuration '{configuration}' is a cascade stage; STIPPLE supports 2d, "
                                f"3d_lowres and 3d_fullres (and ResEnc plans of these), not the cascade.")
    folder = ds.data_folder
    if not folder.is_dir() or not any(p.name.endswith((".b2nd", ".npz")) for p in folder.iterdir()):
        raise StippleInputError(f"{folder} holds no preprocessed cases. {hint}")
    return ds


def dataset_class_for(ds: PreprocessedDataset):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    return infer_dataset_class(str(ds.data_folder))


def all_case_ids(ds: PreprocessedDataset) -> List[str]:
    return sorted(dataset_class_for(ds).get_identifiers(str(ds.data_folder)))


def load_splits(ds: PreprocessedDataset) -> List[dict]:
    """nnU-Net's splits_final.json; created as nnU-Net's trainer would (5 folds, seed 12345) if missing."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    splits_file = ds.base / "splits_final.json"
    if not splits_file.is_file():
        splits = generate_crossval_split(all_case_ids(ds), seed=12345, n_splits=5)
        write_json_atomic(splits_file, splits)
        return splits
    return json.loads(splits_file.read_text())


def training_cases_of_fold(ds: PreprocessedDataset, fold: Union[int, str]) -> Tuple[List[str], List[str]]:
    if str(fold) == "all":
        cases = all_case_ids(ds)
        return cases, cases
    splits = load_splits(ds)
    f = int(fold)
    if not 0 <= f < len(splits):
        raise StippleInputError(f"Fold {fold} is not in {ds.base / 'splits_final.json'} which has {len(splits)} "
                                f"folds (0-{len(splits) - 1}). Use one of them, 'all', or add the split to the file.")
    return sorted(splits[f]["train"]), sorted(splits[f]["val"])


def parse_fold(fold: Union[int, str]) -> Union[int, str]:
    """A fold as nnU-Net names it: a non-negative integer or ``'all'``."""
    text = str(fold).strip()
    if text == "all":
        return "all"
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0 or isinstance(fold, bool):
        raise StippleInputError(f"Fold {fold!r} is neither a fold number (0, 1, ...) nor 'all'.")
    return value


def parse_folds(folds: Optional[Sequence[Fold]]) -> Optional[List[Fold]]:
    """:func:`parse_fold` for each of ``folds`` (None stays None: nnU-Net's "every trained fold")."""
    return None if folds is None else [parse_fold(f) for f in folds]


def results_model_folder(dataset: Union[int, str], configuration: str, trainer: str,
                         plans_identifier: str = "nnUNetPlans") -> Path:
    """``$nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIGURATION`` (as nnUNetv2_train writes and nnUNetv2_predict
    finds it)."""
    if not os.environ.get("nnUNet_results"):
        raise StippleInputError("The environment variable nnUNet_results is not set; set it to nnU-Net's results "
                                "folder, or give the model folder with -m.")
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    return Path(get_output_folder(resolve_dataset_name(dataset), trainer, plans_identifier, configuration))
