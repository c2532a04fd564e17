"""Which axis of nnU-Net's preprocessed arrays is the axial (patient z) axis.

Read from the geometry the image reader recorded in each case's properties, never assumed:

* SimpleITKIO stores ``sitk_stuff['direction']`` (row-major 3x3; column ``i`` is the world direction of
  ITK index axis ``i``). Numpy axis ``a`` of ``GetArrayFromImage`` is ITK axis ``2 - a``.
* NibabelIO / NibabelIOWithReorient store ``nibabel_stuff`` with the affine; nnU-Net transposes the
  nibabel array with ``(2, 1, 0)``, so numpy axis ``a`` is voxel axis ``2 - a`` of the affine.
* Preprocessing then applies ``transpose_forward``: preprocessed axis ``p`` is original axis
  ``transpose_forward[p]``.

The axial axis is the one whose direction vector points most along world z (LPS or RAS, z is the
same axis).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


class UnknownGeometryError(ValueError):
    pass


def original_axial_axis(properties: dict) -> int:
    """Axial axis in the reader's numpy array order (before ``transpose_forward``)."""
    if "sitk_stuff" in properties and properties["sitk_stuff"].get("direction") is not None:
        direction = np.asarray(properties["sitk_stuff"]["direction"], dtype=np.float64)
        if direction.size != 9:
            raise UnknownGeometryError(f"direction has {direction.size} entries, expected 9 (3D image)")
        itk_axis = int(np.argmax(np.abs(direction.reshape(3, 3)[2, :])))
        return 2 - itk_axis
    if "nibabel_stuff" in properties:
        stuff = properties["nibabel_stuff"]
        affine = stuff.get("reoriented_affine", stuff.get("original_affine"))
        if affine is not None:
            affine = np.asarray(affine, dtype=np.float64)
            vox_axis = int(np.argmax(np.abs(affine[2, :3])))
            return 2 - vox_axis
    raise UnknownGeometryError("the case properties hold neither 'sitk_stuff' nor 'nibabel_stuff' geometry")


def preprocessed_axial_axis(properties: dict, transpose_forward: Sequence[int]) -> int:
    return list(transpose_forward).index(original_axial_axis(properties))


def axial_axis_of_cases(properties_per_case: dict, transpose_forward: Sequence[int],
                        override: Optional[int] = None) -> int:
    """One axial axis for a set of cases; they must agree (the prior is stacked along one axis)."""
    if override is not None:
        if override not in (0, 1, 2):
            raise ValueError(f"axial axis override must be 0, 1 or 2, got {override}")
        return override
    axes = {}
    for case, props in properties_per_case.items():
        axes.setdefault(preprocessed_axial_axis(props, transpose_forward), []).append(case)
    if len(axes) != 1:
        detail = "; ".join(f"axis {a}: {', '.join(sorted(c)[:5])}" for a, c in sorted(axes.items()))
        raise UnknownGeometryError(
            f"the cases disagree on which array axis is axial ({detail}). STIPPLE stacks the prior along one "
            f"axis: reorient the images consistently (e.g. all axial acquisitions) or pass --axial-axis.")
    return next(iter(axes))
