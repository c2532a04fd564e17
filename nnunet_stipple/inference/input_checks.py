"""Checks of a prediction input folder against nnU-Net's file naming, before any model is loaded.

nnU-Net expects one file per case and input channel, named ``<case>_<XXXX><file_ending>`` where ``XXXX`` is the
4-digit channel index (``_0000`` .. ``_{C-1}``, C = number of ``channel_names`` in dataset.json) and
``file_ending`` is dataset.json's (e.g. ``.nii.gz``). nnU-Net itself silently skips files with another ending and
fails late (or predicts garbage) on missing channels; these checks name the offending files instead.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List

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


def check_input_folder(folder: "str | Path", dataset_json: dict) -> List[str]:
    """The sorted case ids of ``folder``; raises :class:`StippleInputError` naming every badly named file.

    Hidden files (starting with '.') and sub-folders are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StippleInputError(f"The input folder {folder} does not exist or is not a folder.")
    try:
        ending = dataset_json["file_ending"]
        num_channels = len(dataset_json["channel_names"])
    except (KeyError, TypeError) as e:
        raise StippleInputError(f"The model's dataset.json lacks {e}; it is not an nnU-Net v2 dataset.json.") from e
    pattern = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})" + re.escape(ending) + r"$")
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    rule = naming_rule(dataset_json)
    if not files:
        raise StippleInputError(f"The input folder {folder} holds no image files. {rule}")

    wrong_ending, unmatched, too_high = [], [], []
    channels: Dict[str, set] = {}
    for name in files:
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
