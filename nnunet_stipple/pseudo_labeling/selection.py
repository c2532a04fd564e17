"""Pseudo-label selection strategies (STIPPLE, Algorithm 2: ``select_most_confident_predictions``).

Every strategy turns the network output for one unlabeled (or partially labeled) case into a
label map that nnU-Net can train on:

* ``visual_probs``: ``(K, *spatial)`` softmax probabilities of the network *without* the prior
  (K includes the background, class 0);
* ``prior_probs``: ``(K, *spatial)`` prior-driven probabilities ``softmax(logits + ln p)``
  (only needed by :class:`PriorConfidenceSelection`, may be ``None`` otherwise);
* ``gamma``: proportion ``γ_t = t / T · γ_max`` in ``(0, 1]`` of the predicted voxels to keep;
* ``ignore_label``: nnU-Net's ignore value (the highest label value, named ``"ignore"`` in
  dataset.json); voxels that are not selected receive it so they do not contribute to the loss.

The spatial layout is free (2D or 3D, any axis order); only the channel axis must come first.

Conventions shared by all strategies (they make results reproducible bit for bit):

* the predicted class is ``np.argmax`` over the channel axis, so a tie between classes goes to the
  lowest class id;
* the top-``n_k`` ranking is exact: voxels are ordered by decreasing confidence and, among voxels
  with the same confidence, by ascending flat (C-order) index; exactly ``n_k`` voxels are taken
  even when several voxels share the threshold confidence;
* ``n_k = floor(gamma * N_k + 0.5)`` (round half up) where ``N_k`` is the number of voxels
  predicted as ``k``; ``gamma == 1`` therefore keeps every predicted voxel, and a small gamma can
  keep none.

The stats of a :class:`SelectionResult` hold, for every class ``k`` in ``0..K-1``,
``{"predicted": N_k, "selected": number of voxels labeled k in the output}``.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np

from nnunet_stipple.errors import StippleInputError

__all__ = [
    "SelectionResult",
    "SelectionStrategy",
    "PriorConfidenceSelection",
    "MaxProbabilitySelection",
    "AllPredictedSelection",
    "Flare22Selection",
    "SELECTION_STRATEGIES",
    "get_selection_strategy",
    "check_selection_options",
    "top_fraction_per_class",
]

_INT16_MAX = int(np.iinfo(np.int16).max)


@dataclass(frozen=True)
class SelectionResult:
    """Output of a selection strategy for one case.

    ``label``: int16 array of the spatial shape, class ids where a label was selected and
    ``ignore_label`` elsewhere (``uses_ignore`` tells whether the ignore value can occur at all);
    ``stats``: ``{class_id: {"predicted": int, "selected": int}}`` for every class ``0..K-1``.
    """

    label: np.ndarray
    stats: Dict[int, Dict[str, int]] = field(default_factory=dict)
    uses_ignore: bool = True


# ----------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------
def _check_probs(name: str, probs) -> np.ndarray:
    if not isinstance(probs, np.ndarray):
        raise StippleInputError(f"{name} must be a numpy array of shape (K, *spatial), got {type(probs).__name__}")
    if probs.ndim < 2:
        raise StippleInputError(
            f"{name} must have a channel axis and at least one spatial axis (K, *spatial); got shape {probs.shape}"
        )
    if probs.shape[0] < 2:
        raise StippleInputError(
            f"{name} must have K >= 2 channels (background + at least one class); got shape {probs.shape}"
        )
    if any(s == 0 for s in probs.shape[1:]):
        raise StippleInputError(f"{name} has an empty spatial axis: shape {probs.shape}")
    if not np.issubdtype(probs.dtype, np.floating):
        raise StippleInputError(f"{name} must hold floating-point probabilities, got dtype {probs.dtype}")
    if not np.all(np.isfinite(probs)):
        raise StippleInputError(f"{name} contains NaN or infinite values; check the network output / prior")
    return probs


def _check_gamma(gamma) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
        raise StippleInputError(f"gamma must be a real number in (0, 1], got {gamma!r}")
    gamma = float(gamma)
    if not math.isfinite(gamma) or not (0.0 < gamma <= 1.0):
        raise StippleInputError(f"gamma must be in (0, 1] (gamma_t = t / T * gamma_max), got {gamma!r}")
    return gamma


def _check_ignore_label(ignore_label, num_classes: int) -> int:
    if isinstance(ignore_label, bool) or not isinstance(ignore_label, numbers.Integral):
        raise StippleInputError(f"ignore_label must be an integer, got {ignore_label!r}")
    ignore_label = int(ignore_label)
    if ignore_label < num_classes:
        raise StippleInputError(
            f"ignore_label ({ignore_label}) must be the highest label value, i.e. >= K = {num_classes} "
            f"(the number of probability channels); it would collide with a class id"
        )
    if ignore_label > _INT16_MAX:
        raise StippleInputError(f"ignore_label ({ignore_label}) does not fit in the int16 label map")
    return ignore_label


def _validate(visual_probs, prior_probs, gamma, ignore_label, needs_prior: bool, strategy: str):
    visual_probs = _check_probs("visual_probs", visual_probs)
    if prior_probs is None:
        if needs_prior:
            raise StippleInputError(
                f"selection strategy '{strategy}' needs prior_probs (the prior-driven probabilities "
                f"softmax(logits + ln p)); got None"
            )
    else:
        prior_probs = _check_probs("prior_probs", prior_probs)
        if prior_probs.shape != visual_probs.shape:
            raise StippleInputError(
                f"prior_probs shape {prior_probs.shape} differs from visual_probs shape {visual_probs.shape}"
            )
    gamma = _check_gamma(gamma)
    ignore_label = _check_ignore_label(ignore_label, visual_probs.shape[0])
    return visual_probs, prior_probs, gamma, ignore_label


def _argmax(probs: np.ndarray) -> np.ndarray:
    # np.argmax returns the first maximum: ties between classes go to the lowest class id.
    return np.argmax(probs, axis=0).astype(np.int16, copy=False)


def _counts(label: np.ndarray, num_classes: int) -> np.ndarray:
    flat = label.ravel()
    valid = flat[(flat >= 0) & (flat < num_classes)]
    return np.bincount(valid.astype(np.intp, copy=False), minlength=num_classes)[:num_classes]


# ----------------------------------------------------------------------------------------------
# core: exact, deterministic per-class top fraction
# ----------------------------------------------------------------------------------------------
def top_fraction_per_class(
    probs: np.ndarray, gamma: float, ignore_label: int, include_background: bool = False
) -> SelectionResult:
    """Predicted class = argmax of ``probs``; for each class keep the ``floor(gamma*N_k + 0.5)`` voxels
    with the highest ``probs[k]`` (ties by ascending flat index); everything else = ``ignore_label``.

    Background (class 0) is only selected when ``include_background`` is true.
    Inputs are assumed validated (see the strategies).
    """
    num_classes = probs.shape[0]
    spatial = probs.shape[1:]
    pred = _argmax(probs).ravel()
    flat_probs = probs.reshape(num_classes, -1)

    # One stable sort of the predicted classes (radix sort for int16) groups the voxels of each
    # class together, each group in ascending flat index: O(N) instead of K passes over the volume.
    order = np.argsort(pred, kind="stable")
    predicted = np.bincount(pred.astype(np.intp, copy=False), minlength=num_classes)
    bounds = np.concatenate(([0], np.cumsum(predicted)))

    out = np.full(pred.shape, ignore_label, dtype=np.int16)
    stats: Dict[int, Dict[str, int]] = {}
    for k in range(num_classes):
        n_pred = int(predicted[k])
        n_sel = 0
        if (k > 0 or include_background) and n_pred > 0:
            n_sel = min(n_pred, int(math.floor(gamma * n_pred + 0.5)))
            if n_sel > 0:
                idx = order[bounds[k]:bounds[k + 1]]  # ascending flat indices of voxels predicted k
                if n_sel < n_pred:
                    conf = flat_probs[k][idx]
                    # stable sort on -confidence: equal confidences keep ascending flat index order
                    keep = np.argsort(-conf, kind="stable")[:n_sel]
                    idx = idx[keep]
                out[idx] = k
        stats[k] = {"predicted": n_pred, "selected": n_sel}
    return SelectionResult(label=out.reshape(spatial), stats=stats, uses_ignore=True)


# ----------------------------------------------------------------------------------------------
# strategies
# ----------------------------------------------------------------------------------------------
class SelectionStrategy:
    """Common interface: ``select(visual_probs, prior_probs, gamma, ignore_label) -> SelectionResult``."""

    name: str = ""
    needs_prior: bool = False                 # ranks by prior-driven probabilities: only for trainers with a prior
    takes_include_background: bool = False    # has the include_background option of stipple_run.json
    whole_case: bool = False                  # labels every voxel (no ignore voxels): round_policy 'agreement' takes it

    def select(
        self,
        visual_probs: np.ndarray,
        prior_probs: Optional[np.ndarray],
        gamma: float,
        ignore_label: int,
    ) -> SelectionResult:
        visual_probs, prior_probs, gamma, ignore_label = _validate(
            visual_probs, prior_probs, gamma, ignore_label, self.needs_prior, self.name
        )
        return self._select(visual_probs, prior_probs, gamma, ignore_label)

    def _select(self, visual_probs, prior_probs, gamma, ignore_label) -> SelectionResult:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PriorConfidenceSelection(SelectionStrategy):
    """STIPPLE: prior-driven confidence (paper section 3.3, Algorithm 2).

    Predicted class = argmax of ``prior_probs``; for each organ class ``k >= 1`` separately, among
    the voxels predicted ``k``, keep the top ``n_k = floor(gamma * N_k + 0.5)`` ranked by
    ``prior_probs[k]``; everything else gets ``ignore_label``. With ``include_background=True`` the
    top-gamma background voxels are selected the same way (off by default: only organ voxels are
    added, as specified by the paper).
    """

    name = "prior_confidence"
    needs_prior = True
    takes_include_background = True

    def __init__(self, include_background: bool = False):
        self.include_background = bool(include_background)

    def _select(self, visual_probs, prior_probs, gamma, ignore_label):
        return top_fraction_per_class(prior_probs, gamma, ignore_label, self.include_background)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(include_background={self.include_background})"


class MaxProbabilitySelection(PriorConfidenceSelection):
    """Baseline with relabeling: same rule as :class:`PriorConfidenceSelection`, but the argmax and
    the ranking use ``visual_probs`` (the network without the prior). ``prior_probs`` is ignored."""

    name = "max_probability"
    needs_prior = False

    def _select(self, visual_probs, prior_probs, gamma, ignore_label):
        return top_fraction_per_class(visual_probs, gamma, ignore_label, self.include_background)


class AllPredictedSelection(SelectionStrategy):
    """Bai et al. 2017: the whole argmax of ``visual_probs`` becomes the label (no ignore voxels).

    ``gamma`` is validated but otherwise unused; ``prior_probs`` is ignored.
    """

    name = "all_predicted"
    whole_case = True

    def _select(self, visual_probs, prior_probs, gamma, ignore_label):
        label = _argmax(visual_probs)
        counts = _counts(label, visual_probs.shape[0])
        stats = {k: {"predicted": int(c), "selected": int(c)} for k, c in enumerate(counts)}
        return SelectionResult(label=label, stats=stats, uses_ignore=False)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the largest connected component of ``mask`` (26-connectivity in 3D, 8 in 2D).

    Ties between equally large components go to the component containing the smallest flat
    (C-order) index, so the result does not depend on cc3d's internal labeling order.
    """
    import cc3d

    if mask.ndim == 3:
        connectivity = 26
    elif mask.ndim == 2:
        connectivity = 8
    else:
        raise StippleInputError(
            f"the flare22 strategy supports 2D or 3D spatial arrays only, got {mask.ndim} spatial axes"
        )
    labels, n = cc3d.connected_components(np.ascontiguousarray(mask, dtype=np.uint8), connectivity=connectivity,
                                          return_N=True)
    if n <= 1:
        return mask.astype(bool, copy=False)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    best = np.flatnonzero(sizes == sizes.max())
    if best.size > 1:
        values, first_index = np.unique(labels.ravel(), return_index=True)
        first = dict(zip(values.tolist(), first_index.tolist()))
        keep = min(best.tolist(), key=lambda lab: first[lab])
    else:
        keep = int(best[0])
    return labels == keep


class Flare22Selection(SelectionStrategy):
    """FLARE22-style pseudo-labels: whole prediction cleaned by connected-component analysis.

    Recipe (paper 002, section 2.3 "Unlabel Data"): a model trained on the labeled data predicts
    each unlabeled volume to obtain the pseudo label; "as the existing false positives heavily
    affect the label quality, we apply the post-processing strategy like connective field
    analysis to improve the predictions"; the pseudo-labeled data are merged with the labeled
    data and the model is re-trained from scratch. The paper does not say which component
    analysis exactly (nor the connectivity); here, as an explicit choice, the prediction is the
    argmax of ``visual_probs``, each organ class keeps only its largest connected component
    (cc3d, 26-connectivity in 3D, 8-connectivity in 2D; ties between equally large components go
    to the one containing the smallest flat index) and the removed voxels are set to background
    (0). The whole cleaned prediction is the label (no ignore voxels); ``gamma`` is validated but
    unused and ``prior_probs`` is ignored.

    Stats: ``predicted`` counts the raw argmax, ``selected`` the cleaned label (so for the
    background ``selected >= predicted``).
    """

    name = "flare22"
    whole_case = True

    def _select(self, visual_probs, prior_probs, gamma, ignore_label):
        num_classes = visual_probs.shape[0]
        pred = _argmax(visual_probs)
        if pred.ndim not in (2, 3):
            raise StippleInputError(
                f"the flare22 strategy supports 2D or 3D spatial arrays only, got spatial shape {pred.shape}"
            )
        label = pred.copy()
        for k in range(1, num_classes):
            mask = pred == k
            if not mask.any():
                continue
            keep = _largest_component(mask)
            label[mask & ~keep] = 0
        before = _counts(pred, num_classes)
        after = _counts(label, num_classes)
        stats = {k: {"predicted": int(before[k]), "selected": int(after[k])} for k in range(num_classes)}
        return SelectionResult(label=label, stats=stats, uses_ignore=False)


SELECTION_STRATEGIES = {
    "prior_confidence": PriorConfidenceSelection,
    "max_probability": MaxProbabilitySelection,
    "all_predicted": AllPredictedSelection,
    "flare22": Flare22Selection,
}


def check_selection_options(name: str, include_background: bool = False, where: str = "selection") -> type:
    """The strategy class registered under ``name``; raises :class:`StippleInputError` (naming ``where``) for an
    unknown name or for ``include_background`` with a strategy that has no such option."""
    cls = SELECTION_STRATEGIES.get(name) if isinstance(name, str) else None
    if cls is None:
        valid = ", ".join(sorted(SELECTION_STRATEGIES))
        raise StippleInputError(f"{where}: unknown selection strategy {name!r}; valid names: {valid}")
    if include_background and not cls.takes_include_background:
        takes = ", ".join(sorted(n for n, c in SELECTION_STRATEGIES.items() if c.takes_include_background))
        raise StippleInputError(f"{where}: include_background applies to the selection strategies {takes}, not to "
                                f"{name!r} (which labels whole predictions); remove it or choose one of those.")
    return cls


def get_selection_strategy(name: str, **options) -> SelectionStrategy:
    """Instantiate the strategy registered under ``name`` (options go to its constructor,
    e.g. ``include_background=True`` for ``prior_confidence`` / ``max_probability``)."""
    try:
        cls = SELECTION_STRATEGIES[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(SELECTION_STRATEGIES))
        raise StippleInputError(f"unknown selection strategy {name!r}; valid names: {valid}") from None
    try:
        return cls(**options)
    except TypeError as e:
        raise StippleInputError(f"invalid options {options!r} for selection strategy {name!r}: {e}") from None
