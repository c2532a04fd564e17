"""Position a spatial prior in one volume: the library side of ``nnUNetv2_stipple_position``.

The volume must be given in the prior's voxel space, i.e. as nnU-Net's preprocessed arrays of the prior's
configuration (same axis order, after ``transpose_forward``, resampled to the prior's spacing). Centres are
voxel coordinates of that array.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.positioning.place import centres_from_label
from nnunet_stipple.positioning.procedure import place_at_centres, place_prior
from nnunet_stipple.positioning.settings import PositioningSettings
from nnunet_stipple.priors.spatial_prior import DEFAULT_FLOOR, SpatialPrior


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


def position_prior(prior: SpatialPrior, label=None, probabilities=None,
                   settings: PositioningSettings = PositioningSettings(), floor: float = DEFAULT_FLOOR) -> dict:
    """Where each class box of ``prior`` goes in one volume (give exactly one of ``label``/``probabilities``).

    * ``label`` (integer array (X, Y, Z), or (1, X, Y, Z)): the organ centres (bounding-box centres) of the
      classes present, exactly as the prior was built from training labels. Method ``"label"``.
    * ``probabilities`` (float array (K, X, Y, Z), K >= the prior's number of outputs, e.g. the
      ``probabilities`` of nnU-Net's ``--save_probabilities`` npz in preprocessed space): the placement STIPPLE
      prediction runs (:func:`nnunet_stipple.positioning.procedure.place_prior`) with ``settings`` and the
      model's prior ``floor`` (used by the re-positioning steps). Method ``"kl_search"``,
      ``"uniform_fallback"`` when no organ of the prior is found, or ``"layout_fallback"`` when the volume
      holds another organ layout than the prior's (``layout``, :mod:`nnunet_stipple.positioning.layout`).

    Returns a JSON-ready dict: the prior (dataset, configuration, fold, B), ``shape`` and the placement's
    report: ``method``, ``confidence`` (mean KL-search confidence; 1.0 for a label), ``centres`` (class ->
    [x, y, z] or None), per class ``classes`` (name, method, details) and, from probabilities, the
    ``settings`` it ran with."""
    if (label is None) == (probabilities is None):
        raise StippleInputError("Give exactly one of a label volume or class probabilities to position the prior "
                                f"({'both' if label is not None else 'neither'} given).")
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
        values = np.unique(lab)
        # 0 background, -1 outside nnU-Net's nonzero mask in its preprocessed segmentations
        unknown = sorted(set(values.tolist()) - {0, -1} - set(prior.classes))
        if unknown:
            shown = ", ".join(str(v) for v in unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10
                                                                else "")
            raise StippleInputError(
                f"The label holds values that are not classes of the prior ({shown}; the prior's classes are "
                f"{', '.join(f'{c} {n}' for c, n in sorted(prior.labels.items()))}, 0 is background). "
                + ("It looks like an image, not a segmentation: give --label a label map."
                   if len(values) > 2 * (len(prior.classes) + 2) or values.min() < -1 else
                   "Give a label map of the prior's dataset."))
        placement = place_at_centres(prior, centres_from_label(lab, prior.classes), "label")
        return {**out, "shape": list(lab.shape), **placement.report}
    probs = _as_volume(probabilities, "probabilities", leading="K")
    if probs.shape[0] < prior.num_outputs:
        raise StippleInputError(
            f"The probabilities have {probs.shape[0]} channels but the prior has {prior.num_outputs} classes "
            f"(background + {', '.join(f'{c} {n}' for c, n in sorted(prior.labels.items()))}); give one channel "
            f"per class, background first.")
    if not np.issubdtype(probs.dtype, np.number) or not np.all(np.isfinite(probs)):
        raise StippleInputError("The probabilities hold non-finite or non-numeric values.")
    low, high = float(probs.min()), float(probs.max())
    if low < 0 or high > 1 + 1e-3:
        raise StippleInputError(
            f"The probabilities range from {low:g} to {high:g}, outside [0, 1]: these look like logits. Give "
            f"softmax probabilities (nnU-Net's --save_probabilities writes them), one channel per class.")
    placement = place_prior(prior, probs.astype(np.float32, copy=False), settings, floor)
    return {**out, "shape": list(probs.shape[1:]), **placement.report}
