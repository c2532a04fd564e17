"""Quality of the added pseudo-labels against the hidden ground truth (thesis ch. 3, Table 3.8:
"percentage of added pixels, relabeling precision and recall").

For a class ``k``, with ``A_k = {pseudo == k}`` (the added voxels; ``ignore_label`` voxels are not
added) and ``G_k = {ground_truth == k}``:

* ``added = |A_k|``, ``gt_voxels = |G_k|``, ``true_positive = |A_k ∩ G_k|``;
* ``precision = TP / (TP + FP) = |A_k ∩ G_k| / |A_k|`` — ``None`` when nothing was added;
* ``recall = |A_k ∩ G_k| / |G_k|`` — ``None`` when the ground truth has no voxel of class k.

``None`` (never NaN) marks an undefined ratio, so the result can be written to JSON as is.
"""
from __future__ import annotations

import numbers
from typing import Dict, Iterable, Optional

import numpy as np

from nnunet_stipple.errors import StippleInputError

__all__ = ["added_label_quality", "pooled_added_label_quality"]


def _ratio(num: int, den: int) -> Optional[float]:
    return None if den == 0 else num / den


def added_label_quality(
    pseudo: np.ndarray, ground_truth: np.ndarray, ignore_label: int, classes: Iterable[int]
) -> Dict[int, Dict[str, object]]:
    """Per class ``k`` in ``classes``: ``{"added", "gt_voxels", "true_positive", "precision", "recall"}``
    (see the module docstring; precision/recall are floats in [0, 1] or ``None`` when undefined)."""
    pseudo = np.asarray(pseudo)
    ground_truth = np.asarray(ground_truth)
    if pseudo.shape != ground_truth.shape:
        raise StippleInputError(f"pseudo-label shape {pseudo.shape} differs from ground-truth shape {ground_truth.shape}")
    if isinstance(ignore_label, bool) or not isinstance(ignore_label, numbers.Integral):
        raise StippleInputError(f"ignore_label must be an integer, got {ignore_label!r}")
    class_list = []
    for k in classes:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise StippleInputError(f"classes must be integers, got {k!r}")
        k = int(k)
        if k == int(ignore_label):
            raise StippleInputError(f"class {k} is the ignore label; it cannot be evaluated as a class")
        if k not in class_list:
            class_list.append(k)

    out: Dict[int, Dict[str, object]] = {}
    for k in class_list:
        added_mask = pseudo == k
        gt_mask = ground_truth == k
        added = int(np.count_nonzero(added_mask))
        gt_voxels = int(np.count_nonzero(gt_mask))
        tp = int(np.count_nonzero(added_mask & gt_mask))
        out[k] = {
            "added": added,
            "gt_voxels": gt_voxels,
            "true_positive": tp,
            "precision": _ratio(tp, added),
            "recall": _ratio(tp, gt_voxels),
        }
    return out


def pooled_added_label_quality(per_class: Dict[int, Dict[str, object]]) -> Dict[str, object]:
    """Micro-average over the classes of :func:`added_label_quality` (sums of counts, then ratios)."""
    added = sum(int(v["added"]) for v in per_class.values())
    gt_voxels = sum(int(v["gt_voxels"]) for v in per_class.values())
    tp = sum(int(v["true_positive"]) for v in per_class.values())
    return {
        "added": added,
        "gt_voxels": gt_voxels,
        "true_positive": tp,
        "precision": _ratio(tp, added),
        "recall": _ratio(tp, gt_voxels),
    }
