"""The whole placement of a prior in one volume: what STIPPLE prediction and ``nnUNetv2_stipple_position`` run.

From the class probabilities of a first (prior-free) prediction:

1. the first placement (coarse centres, each organ's KL search, the anatomical consistency check; see
   :mod:`nnunet_stipple.positioning.place`);
2. up to ``repositioning_steps`` re-searches from the prior-driven probabilities of the current placement,
   each starting at the current centres; they stop early when a step moves no organ (another step would
   search from the same centres);
3. if the first prediction holds no organ of the prior, no placement: prediction falls back to a uniform
   prior (plain nnU-Net output), with a warning.

Both callers get the same :class:`PriorPlacement`, whose JSON-ready ``report`` records the settings the
placement ran with. Placing at known centres (a label's organ centres, ground truth in studies) gives a
report of the same form (:func:`place_at_centres`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from nnunet_stipple.positioning.place import Placement, position_from_probabilities
from nnunet_stipple.positioning.settings import PositioningSettings
from nnunet_stipple.priors.spatial_prior import DEFAULT_FLOOR, SpatialPrior, check_floor

Centres = Dict[int, Optional[List[float]]]
UNIFORM_FALLBACK = "uniform_fallback"


@dataclass(frozen=True)
class PriorPlacement:
    """Where each class box of a prior goes (``centres``, class -> centre or None), or ``centres`` None when
    the prior could not be placed and prediction uses a uniform prior; ``report`` is JSON-ready."""
    centres: Optional[Centres]
    report: dict


def prior_driven_probabilities(first_probabilities: np.ndarray, prior_probabilities: np.ndarray) -> np.ndarray:
    """The prior-driven softmax (paper Eq. 2) from the first prediction's class probabilities:
    ``softmax(s + ln p) = softmax(s) p / sum_c softmax(s)_c p_c``, so no logits are needed (float32)."""
    driven = np.asarray(first_probabilities[:len(prior_probabilities)], dtype=np.float32) * prior_probabilities
    total = driven.sum(0, keepdims=True)
    # a voxel without any probability (possible in a user's probabilities file) stays without
    driven /= np.maximum(total, np.finfo(np.float32).tiny)
    return driven


def place_prior(prior: SpatialPrior, first_probabilities: np.ndarray, settings: PositioningSettings,
                floor: float = DEFAULT_FLOOR,
                driven_probabilities: Optional[Callable[[Centres], np.ndarray]] = None,
                case: Optional[str] = None) -> PriorPlacement:
    """Place every class of ``prior`` in a volume from the class probabilities of its first prediction,
    ``first_probabilities`` (K >= num_outputs, X, Y, Z), with ``settings`` (module docstring).

    ``driven_probabilities(centres)`` gives the class probabilities of the prior-driven prediction with the
    prior's boxes at ``centres``, for the re-positioning steps; by default the prior-driven softmax of
    ``first_probabilities`` with the prior floored at ``floor`` (the model's ``stipple_floor``). Models with
    nnU-Net regions (sigmoid outputs) pass their own. ``case`` names the volume in the warning."""
    check_floor(floor)
    if driven_probabilities is None:
        shape = tuple(first_probabilities.shape[1:])

        def driven_probabilities(centres: Centres) -> np.ndarray:
            return prior_driven_probabilities(first_probabilities, prior.probabilities_on_grid(shape, centres, floor))

    placement = position_from_probabilities(prior, first_probabilities, settings)
    joint = placement.joint      # the joint search only runs for the first placement: keep it for the report
    steps = 0
    for steps in range(1, settings.repositioning_steps + 1):
        if not placement.ok:
            break
        placement = position_from_probabilities(prior, driven_probabilities(placement.centres), settings,
                                                start_centres=placement.centres)
        if all(p.offset == [0, 0, 0] for p in placement.classes.values() if p.method == "kl"):
            break
    report = {"method": "kl_search", "settings": settings.to_json(), "floor": float(floor),
              "repositioning_steps": steps, "ok": placement.ok, "confidence": placement.confidence,
              "centres": {}, "classes": _class_reports(prior, placement), "joint": joint}
    if not placement.ok:
        of_case = f" of case {case}" if case is not None else ""
        warnings.warn(f"STIPPLE: no organ of the prior was found in the first prediction{of_case}; the prior is "
                      f"not placed and prediction uses a uniform prior (plain nnU-Net output) for fold "
                      f"{prior.fold}.")
        report.update(method=UNIFORM_FALLBACK, repositioning_steps=0)
        report["centres"] = {str(c): None for c in prior.classes}
        return PriorPlacement(None, report)
    report["centres"] = {k: v["centre"] for k, v in report["classes"].items()}
    return PriorPlacement(placement.centres, report)


def _class_reports(prior: SpatialPrior, placement: Placement) -> dict:
    """Per class of the prior: its name and its placement (classes without a box: ``not_built``)."""
    out = {}
    for c in prior.classes:
        entry = dict(placement.classes[c].__dict__) if c in placement.classes else \
            {"centre": None, "method": "not_built"}
        out[str(c)] = {"name": prior.labels[c], **entry}
    return out


def place_at_centres(prior: SpatialPrior, centres: Mapping[int, Optional[Sequence[float]]], method: str
                     ) -> PriorPlacement:
    """The prior at known organ centres (class -> centre; a class without one is ``absent``), e.g. a label's
    organ centres (``method="label"``) or ground truth in positioning studies."""
    known = {c: (None if centres.get(c) is None else [float(v) for v in centres[c]]) for c in prior.classes}
    classes = {str(c): {"name": prior.labels[c], "method": method if known[c] is not None else "absent",
                        "centre": known[c]} for c in prior.classes}
    report = {"method": method, "confidence": 1.0, "centres": {str(c): v for c, v in known.items()},
              "classes": classes}
    return PriorPlacement(known, report)
