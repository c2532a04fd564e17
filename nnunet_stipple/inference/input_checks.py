"""Checks of a prediction input folder against nnU-Net's file naming, before any model is loaded.

nnU-Net expects one file per case and input channel, named ``<case>_<XXXX><file_ending>`` where ``XXXX`` is the
4-digit channel index (``_0000`` .. ``_{C-1}``, C = number of ``channel_names`` in dataset.json) and
``file_ending`` is dataset.json's (e.g. ``.nii.gz``). nnU-Net itself silently skips files with another ending and
fails late (or predicts garbage) on missing channels; these checks name the offending files instead.
"""
from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Dict, List, Optional

from nnunet_stipple.errors import StippleInputError

MAX_LISTED = 10


def naming_rule(dataset_json: dict) -> str:
    ending = dataset_json["file_ending"]
    num_channels = len(dataset_json["channel_names"])
    channels = "_0000" if num_channels == 1 else f"_0000 .. _{num_channels - 1:04d}"
    return (f"nnU-Net needs one file per case and channel named CASE_XXXX{ending}, XXXX being the 4-digit channel "
            f"index; this model has {num_channels} channel{'s' if num_channels != 1 else ''} "
            f"({', '.join(str(v) for v in dataset_json['channel_names'].values())}), so every case needs exactly "
            f"{channels} (e.g. case001_0000{ending}).")


def _listed(items: List[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def input_files(folder: "str | Path") -> List[Path]:
    """The sorted files of an input folder, hidden files (starting with '.') and sub-folders left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StippleInputError(f"The input folder {folder} does not exist or is not a folder.")
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def check_input_folder(folder: "str | Path", dataset_json: dict, files: Optional[List[Path]] = None) -> List[str]:
    """The sorted case ids of ``folder`` (its :func:`input_files`, or ``files`` when the caller listed them
    already); raises :class:`StippleInputError` naming every badly named file."""
    folder = Path(folder)
    files = input_files(folder) if files is None else files
    try:
        ending = dataset_json["file_ending"]
        num_channels = len(dataset_json["channel_names"])
    except (KeyError, TypeError) as e:
        raise StippleInputError(f"The model's dataset.json lacks {e}; it is not an nnU-Net v2 dataset.json.") from e
    pattern = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})" + re.escape(ending) + r"$")
    names = [p.name for p in files]
    rule = naming_rule(dataset_json)
    if not names:
        raise StippleInputError(f"The input folder {folder} holds no image files. {rule}")

    wrong_ending, unmatched, too_high = [], [], []
    channels: Dict[str, set] = {}
    for name in names:
        if not name.endswith(ending):
            wrong_ending.append(name)
            continue
        m = pattern.match(name)
        if m is None:
            unmatched.append(name)
            continue
        ch = int(m.group("channel"))
        if ch >= num_channels:
            too_high.append(name)
        channels.setdefault(m.group("case"), set()).add(ch)

    problems = []
    if wrong_ending:
        problems.append(f"not ending with the model's file ending {ending!r}: {_listed(wrong_ending)}")
    if unmatched:
        problems.append(f"not named CASE_XXXX{ending}: {_listed(unmatched)}")
    if too_high:
        problems.append(f"channel index >= {num_channels} (the model has {num_channels} input "
                        f"channel{'s' if num_channels != 1 else ''}): {_listed(too_high)}")
    missing = []
    for case, have in sorted(channels.items()):
        lacking = [c for c in range(num_channels) if c not in have]
        if lacking:
            missing.append(f"{case} (missing {', '.join(f'{case}_{c:04d}{ending}' for c in lacking)})")
    if missing:
        problems.append(f"cases with missing channel files: {_listed(missing)}")
    if problems:
        raise StippleInputError(f"Badly named files in the input folder {folder}: " + "; ".join(problems)
                                + f". {rule}")
    return sorted(channels)


def check_output_folder(folder: "str | Path") -> Path:
    """``folder`` can be created or written to; raises :class:`StippleInputError` saying why not (a file in the
    way, no write permission) before any model is loaded."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise StippleInputError(f"The output folder {folder} is a file. Choose a folder (-o) for the predictions.")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise StippleInputError(f"The output folder {folder} cannot be created: {existing} is a file, not a "
                                f"folder. Choose another output folder (-o).")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "is" if existing == folder else f"would be created in {existing}, which is"
        raise StippleInputError(f"The output folder {folder} {where} not writable for you. Choose another output "
                                f"folder (-o) or ask for write permission.")
    return folder


def check_checkpoint_readable(path: "str | Path") -> None:
    """A torch checkpoint is a zip archive whose directory sits at its end: a truncated copy (an interrupted
    download or scp) fails here, naming the file, instead of deep inside torch.load."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            z.infolist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise StippleInputError(f"{path} is not a readable torch checkpoint ({e}): it is truncated or damaged. "
                                f"Copy it again from where it was trained (or re-install the exported zip), or "
                                f"retrain the fold.") from None


# file endings whose headers SimpleITK reads (nnU-Net's SimpleITKIO / NibabelIO datasets)
VOLUME_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def model_expects_volumes(plans: dict) -> bool:
    """Whether the model was trained on 3-D volumes (nnU-Net stores 2-D images as volumes one slice deep)."""
    shape = plans.get("original_median_shape_after_transp") or []
    return len(shape) == 3 and min(shape) > 1


def check_image_geometry(files: List[Path], volumes: bool = True) -> None:
    """Every image is one 3-D volume (read from the header only; other formats than :data:`VOLUME_ENDINGS` are
    left to nnU-Net's readers): a 4-D file (a time series or channels stacked in one file) would otherwise be
    misread by nnU-Net (e.g. "your RAM was full"), and a 2-D slice given to a model of volumes (``volumes``)
    predicted without any sense of where along z the prior belongs."""
    import SimpleITK as sitk
    problems = []
    for path in files:
        if not path.name.endswith(VOLUME_ENDINGS):
            continue
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as e:
            problems.append(f"{path.name}: not a readable image ({str(e).strip().splitlines()[-1]})")
            continue
        dims, size = reader.GetDimension(), reader.GetSize()
        if dims > 4 or dims == 4 and size[3] > 1:
            problems.append(f"{path.name}: {dims}-D image of size {size} (one 3-D volume per file and channel is "
                            f"needed; split a stacked file into CASE_0000, CASE_0001, ...)")
        elif volumes and (dims < 3 or size[2] == 1):
            problems.append(f"{path.name}: a 2-D image of size {size} (STIPPLE's prior is placed along z in 3-D "
                            f"volumes: predict the whole volume)")
    if problems:
        raise StippleInputError(f"Images that STIPPLE cannot predict in {files[0].parent}: {_listed(problems)}.")
