"""Label files for pseudo-labeling: nnU-Net's ignore label in dataset.json, and label volumes
written with the geometry of their image."""
from __future__ import annotations

import copy
import numbers
import os
from pathlib import Path
from typing import Tuple

import numpy as np

from nnunet_stipple.atomic import atomic_path
from nnunet_stipple.errors import StippleInputError

__all__ = ["ignore_label_for", "dataset_json_with_ignore", "write_label_like"]

IGNORE_NAME = "ignore"


def _label_values(name: str, value) -> list:
    """Integer values of one dataset.json label entry (an int, or a list/tuple of ints for regions)."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise StippleInputError(f"dataset.json label {name!r} has an empty value list")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise StippleInputError(f"dataset.json label {name!r} has a non-integer value {value!r}")
    return [int(v) for v in values]


def ignore_label_for(dataset_json: dict) -> Tuple[int, bool]:
    """Return ``(ignore value, already_present)`` for a dataset.json dict.

    If ``labels`` already contains ``"ignore"`` its value is returned with ``True``; it must be a
    single integer strictly higher than every other label value (nnU-Net's requirement), else a
    ValueError names the problem. Otherwise ``(max label value + 1, False)``.
    """
    labels = dataset_json.get("labels") if isinstance(dataset_json, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise StippleInputError("dataset.json has no 'labels' mapping (name -> value)")
    others = []
    for name, value in labels.items():
        if name != IGNORE_NAME:
            others.extend(_label_values(name, value))
    if not others:
        raise StippleInputError("dataset.json 'labels' has no label besides 'ignore'")
    highest_other = max(others)
    if IGNORE_NAME in labels:
        value = labels[IGNORE_NAME]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise StippleInputError(f"dataset.json label 'ignore' must be a single integer, got {value!r}")
        value = int(value)
        if value <= highest_other:
            offenders = [n for n, v in labels.items() if n != IGNORE_NAME and max(_label_values(n, v)) >= value]
            raise StippleInputError(
                f"dataset.json label 'ignore' has value {value} but must be the highest label value; "
                f"label(s) {', '.join(repr(o) for o in offenders)} have values >= {value} "
                f"(highest other value: {highest_other})"
            )
        return value, True
    return highest_other + 1, False


def dataset_json_with_ignore(dataset_json: dict) -> dict:
    """A deep copy of ``dataset_json`` whose labels end with ``"ignore"`` as the highest label
    (added as ``max + 1`` if absent; validated if present). The input is never mutated."""
    value, present = ignore_label_for(dataset_json)
    out = copy.deepcopy(dataset_json)
    if not present:
        out["labels"][IGNORE_NAME] = value
    return out


def _reference_geometry(reference_image_path: Path):
    import SimpleITK as sitk

    if not reference_image_path.is_file():
        raise FileNotFoundError(f"reference image {str(reference_image_path)!r} does not exist")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(reference_image_path))
    reader.ReadImageInformation()
    return reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()


def _label_dtype(label: np.ndarray):
    if label.dtype == bool:
        return np.uint8
    if not np.issubdtype(label.dtype, np.integer):
        raise StippleInputError(f"label must be an integer (or bool) array, got dtype {label.dtype}")
    if label.size == 0:
        return np.uint8
    lo, hi = int(label.min()), int(label.max())
    if lo >= 0 and hi <= np.iinfo(np.uint8).max:
        return np.uint8
    if lo >= np.iinfo(np.int16).min and hi <= np.iinfo(np.int16).max:
        return np.int16
    raise StippleInputError(f"label values [{lo}, {hi}] do not fit in int16")


def write_label_like(label: np.ndarray, reference_image_path: "str | os.PathLike", out_path: "str | os.PathLike") -> Path:
    """Write ``label`` to ``out_path`` with the spacing, origin and direction of the reference image.

    ``label`` is in SimpleITK's numpy layout (``GetArrayFromImage``: z, y, x for 3D), and must have
    the reference image's shape. Values in 0..255 are stored as uint8 (nnU-Net's usual label
    type), otherwise as int16. The file is written atomically (temporary file in the same folder,
    then ``os.replace``). Returns ``Path(out_path)``.
    """
    import SimpleITK as sitk

    reference_image_path = Path(reference_image_path)
    out_path = Path(out_path)
    label = np.asarray(label)
    size, spacing, origin, direction = _reference_geometry(reference_image_path)
    expected_shape = tuple(reversed(size))
    if label.shape != expected_shape:
        raise StippleInputError(
            f"label for {str(out_path)!r} has shape {label.shape} but the reference image "
            f"{str(reference_image_path)!r} has shape {expected_shape} (numpy order)"
        )
    image = sitk.GetImageFromArray(np.ascontiguousarray(label, dtype=_label_dtype(label)))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    with atomic_path(out_path) as tmp:
        sitk.WriteImage(image, str(tmp), True)
    return out_path
