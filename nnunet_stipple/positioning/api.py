"""Position a spatial prior in one volume: the library side of ``nnUNetv2_stipple_position``.

The volume must be given in the prior's voxel space, i.e. as nnU-Net's preprocessed arrays of the prior's
configuration (same axis order, after ``transpose_forward``, resampled to the prior's spacing). Centres are
voxel coordinates of that array.
"""
from __future__ import annotations

from numbers import Real
from typing import Optional

import numpy as np

from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.positioning.place import COARSE_METHODS, DEFAULT_ANATOMY_TOLERANCE_MM, DEFAULT_COARSE, \
    DEFAULT_SEARCH_RADIUS_MM, centres_from_label, position_from_probabilities
from nnunet_stipple.priors.spatial_prior import SpatialPrior


def _as_volume(array, what: str, leading: Optional[str] = None) -> np.ndarray:
    arr = np.asarray(array)
    if leading is None and arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]    # nnU-Net's (1, X, Y, Z) segmentation layout
    want = 3 if leading is None else 4
    if arr.ndim != want:
        layout = "(X, Y, Z) (or nnU-Net's (1, X, Y, Z))" if leading is None else f"({leading}, X, Y, Z)"
        raise StippleInputError(f"The {what} has shape {list(arr.shape)} ({arr.ndim} dims); expected a 3D volume "
                                f"{layout} in the prior's (preprocessed) voxel space.")
    if min(arr.shape[-3:]) < 1:
        raise StippleInputError(f"The {what} has an empty shape {list(arr.shape)}.")
    return arr


def _non_negative_number(x) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool) and bool(np.isfinite(x)) and x >= 0


def check_positioning_settings(radius_mm, anatomy_tolerance_mm, coarse, where: str = "") -> None:
    """Positioning settings a placement can run with, else a StippleInputError (``where`` names their source,
    e.g. the trainer class whose attributes they are)."""
    prefix = f"{where}: " if where else ""
    if not _non_negative_number(radius_mm):
        raise StippleInputError(f"{prefix}The search radius must be a non-negative number of mm, got {radius_mm!r}.")
    if not _non_negative_number(anatomy_tolerance_mm):
        raise StippleInputError(f"{prefix}The anatomy tolerance must be a non-negative number of mm (0: no check), "
                                f"got {anatomy_tolerance_mm!r}.")
    if coarse not in COARSE_METHODS:
        raise StippleInputError(f"{prefix}The coarse placement must be one of {', '.join(COARSE_METHODS)}, got "
                                f"{coarse!r}.")


def position_prior(prior: SpatialPrior, label=None, probabilities=None,
                   radius_mm: float = DEFAULT_SEARCH_RADIUS_MM,
                   anatomy_tolerance_mm: float = DEFAULT_ANATOMY_TOLERANCE_MM,
                   coarse: str = DEFAULT_COARSE) -> dict:
    """Where each class box of ``prior`` goes in one volume (give exactly one of ``label``/``probabilities``).

    * ``label`` (integer array (X, Y, Z), or (1, X, Y, Z)): the organ centres (bounding-box centres) of the
      classes present, exactly as the prior was built from training labels. Method ``"label"``.
    * ``probabilities`` (float array (K, X, Y, Z), K >= the prior's number of outputs, e.g. the
      ``probabilities`` of nnU-Net's ``--save_probabilities`` npz in preprocessed space): starting centres
      from one joint search over a common displacement of all organs (``coarse="joint"``, see
      :mod:`nnunet_stipple.positioning.joint_search`) or from the largest connected component of each
      class (``coarse="components"``), then the exhaustive KL translation search within ``radius_mm``, then
      the anatomical consistency check (``anatomy_tolerance_mm``, 0: off; see
      :mod:`nnunet_stipple.positioning.place`). Method ``"kl_search"``.

    Returns a JSON-ready dict: ``method``, ``shape``, ``confidence`` (mean KL-search confidence; 1.0 for a
    label), ``centres`` (class -> [x, y, z] or None), and per class ``classes`` (name, method, details)."""
    if (label is None) == (probabilities is None):
        raise StippleInputError("Give exactly one of a label volume or class probabilities to position the prior "
                                f"({'both' if label is not None else 'neither'} given).")
    check_positioning_settings(radius_mm, anatomy_tolerance_mm, coarse)
    out = {"dataset_name": prior.dataset_name, "configuration": prior.configuration, "fold": prior.fold,
           "num_bins": prior.num_bins}
    if label is not None:
        lab = _as_volume(label, "label")
        if not np.issubdtype(lab.dtype, np.integer):
            if not np.issubdtype(lab.dtype, np.number) or not np.all(np.isfinite(lab)) \
                    or not np.array_equal(lab, np.rint(lab)):
                raise StippleInputError(f"The label holds non-integer values (dtype {lab.dtype}); give a "
                                        f"segmentation with integer class labels.")
            lab = np.rint(lab).astype(np.int64)
        centres = centres_from_label(lab, prior.classes)
        out.update(method="label", shape=list(lab.shape), confidence=1.0,
                   centres={str(c): centres.get(c) for c in prior.classes},
                   classes={str(c): {"name": prior.labels[c], "method": "label" if c in centres else "absent",
                                     "centre": centres.get(c)} for c in prior.classes})
        return out
    probs = _as_volume(probabilities, "probabilities", leading="K")
    if probs.shape[0] < prior.num_outputs:
        raise StippleInputError(
            f"The probabilities have {probs.shape[0]} channels but the prior has {prior.num_outputs} classes "
            f"(background + {', '.join(f'{c} {n}' for c, n in sorted(prior.labels.items()))}); give one channel "
            f"per class, background first.")
    if not np.issubdtype(probs.dtype, np.number) or not np.all(np.isfinite(probs)):
        raise StippleInputError("The probabilities hold non-finite or non-numeric values.")
    placement = position_from_probabilities(prior, probs, radius_mm, anatomy_tolerance_mm=anatomy_tolerance_mm,
                                            coarse=coarse)
    report = placement.to_json()
    classes = {}
    for c in prior.classes:
        entry = dict(report["classes"].get(str(c), {"centre": None, "method": "not_built"}))
        entry["name"] = prior.labels[c]
        classes[str(c)] = entry
    out.update(method="kl_search", shape=list(probs.shape[1:]), radius_mm=float(radius_mm),
               anatomy_tolerance_mm=float(anatomy_tolerance_mm), coarse=coarse, joint=report.get("joint"),
               ok=placement.ok,
               confidence=report["confidence"], centres={k: v["centre"] for k, v in classes.items()},
               classes=classes)
    return out
