"""SASSNet's signed distance maps (SDM) of label patches (Li, Zhang, He, MICCAI 2020, sec. 2.2, normalised as its
reference [17] and its public code's ``compute_sdf``), computed with scipy's exact Euclidean distance transform.

For a binary mask M of one class in one patch (the paper treats each class separately in the multi-class case,
footnote 3):

* outside M: + d_out / max(d_out), d_out = distance to the nearest voxel of M;
* inside M:  - d_in / max(d_in),   d_in = distance to the nearest voxel outside M;
* on M's inner boundary (voxels of M with a face neighbour outside M; the patch border is no boundary): 0.

So the SDM is in [-1, 1]: negative inside, positive outside, the tanh range of the SDM head. The normalisation is
per patch and per class, as the public code normalises per patch. A class absent from the patch has SDM 0 everywhere
(the public code's zeros); a patch that the class fills entirely (no boundary inside the patch, the public code
divides 0 by 0 there) also gets 0: there is no surface to measure a distance to.

Distances use the voxel spacing of the configuration when given (the paper's data is isotropic, where the spacing
cancels in the normalisation; nnU-Net's 3d_fullres spacing may be anisotropic).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

ClassSpec = Union[int, Sequence[int]]     # a label, or the labels of a region


def signed_distance_map(mask: np.ndarray, spacing: Optional[Sequence[float]] = None) -> np.ndarray:
    """The normalised SDM (float32, ``mask``'s shape) of one binary mask; see the module's docstring."""
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(mask.shape, dtype=np.float32)
    if not mask.any() or mask.all():
        return out
    d_out = ndimage.distance_transform_edt(~mask, sampling=spacing)
    d_in = ndimage.distance_transform_edt(mask, sampling=spacing)
    sdm = d_out / d_out.max() - d_in / d_in.max()
    face = ndimage.generate_binary_structure(mask.ndim, 1)
    boundary = mask & ~ndimage.binary_erosion(mask, structure=face, border_value=1)
    sdm[boundary] = 0
    out[...] = sdm
    return out


def class_mask(seg: np.ndarray, spec: ClassSpec) -> np.ndarray:
    """Voxels of a label, or of a region (any of its labels)."""
    if isinstance(spec, (int, np.integer)):
        return seg == spec
    return np.isin(seg, np.asarray(spec))


def sdm_targets(seg: np.ndarray, classes: Sequence[ClassSpec], ignore_label: Optional[int] = None,
                spacing: Optional[Sequence[float]] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(N, 1, *patch) label patches -> (N, K, *patch) SDMs of the K ``classes`` (foreground labels or regions) and the
    (N, 1, *patch) mask of annotated voxels (None without ignore label). Ignored voxels count as outside every class
    and are left out of the loss through the mask."""
    seg = np.asarray(seg)
    if seg.ndim < 3 or seg.shape[1] != 1:
        raise ValueError(f"expected label patches (N, 1, ...), got shape {seg.shape}")
    if spacing is not None and len(spacing) != seg.ndim - 2:
        spacing = None   # e.g. a 2d configuration's patch against a 3d spacing: voxel units
    out = np.zeros((seg.shape[0], len(classes), *seg.shape[2:]), dtype=np.float32)
    for n in range(seg.shape[0]):
        for k, spec in enumerate(classes):
            out[n, k] = signed_distance_map(class_mask(seg[n, 0], spec), spacing)
    mask = None if ignore_label is None else (seg != ignore_label).astype(np.float32)
    return out, mask
