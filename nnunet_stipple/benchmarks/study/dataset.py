"""The study's nnU-Net dataset: its name, id, raw folder and whether it has unlabeled images to relabel."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from nnunet_stipple.nnunet_folders import resolve_dataset_name


def resolve_dataset(dataset) -> str:
    return resolve_dataset_name(dataset)


def dataset_id(dataset_name: str) -> int:
    return int(dataset_name[len("Dataset"):len("Dataset") + 3])


def raw_dataset_folder(dataset_name: str) -> Optional[Path]:
    raw = os.environ.get("nnUNet_raw")
    return Path(raw) / dataset_name if raw else None


def has_unlabeled_images(dataset_name: str) -> bool:
    """True if ``nnUNet_raw/<Dataset>/imagesUnlabeled/`` exists and holds files."""
    folder = raw_dataset_folder(dataset_name)
    if folder is None:
        return False
    folder = folder / "imagesUnlabeled"
    return folder.is_dir() and any(folder.iterdir())
