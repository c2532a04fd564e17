"""The whole placement of a prior in one volume: what STIPPLE prediction and ``nnUNetv2_stipple_position`` run.

From the class probabilities of a first (prior-free) prediction:

1. the first placement (coarse centres, each organ's KL search, the anatomical consistency check; see
   :mod:`nnunet_stipple.positioning.place`);
2. up to ``repositioning_steps`` re-searches from the prior-driven probabilities of the current placement,
   each starting at the current centres; they stop early when a step moves no organ (another step would
   search from the same centres);
3. if the first prediction holds no organ of the prior, no placement: prediction falls back to a uniform
   prior (plain nnU-Net output), with a warning.

Between 1 and 2, the layout check (:mod:`.layout`, setting ``layout_guard``): a first prediction holding
another organ layout than the prior's (mirrored, flipped, placements that cannot be reconciled) is flagged in
the report, and by default predicted with a uniform prior too (method ``layout_fallback``).

The procedure runs in torch on the device of the first prediction's probabilities (:mod:`.device_place`);
:func:`place_prior_reference` runs it with the numpy placement, the oracle of the tests and benchmarks.
Both callers get the same :class:`PriorPlacement`, whose JSON-ready ``report`` records the settings the
placement ran with. Placing at known centres (a label's organ centres, ground truth in studies) gives a
report of the same form (:func:`place_at_centres`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from nnunet_stipple.positioning.device_place import position_on_device
from nnunet_stipple.positioning.device_volumes import ClassProbabilities, PriorDrivenProbabilities
from nnunet_stipple.positioning.layout import assess_layout, layout_line
from nnunet_stipple.positioning.place import Placement, position_from_probabilities
from nnunet_stipple.positioning.settings import PositioningSettings
from nnunet_stipple.priors.spatial_prior import DEFAULT_FLOOR, SpatialPrior, check_floor
from nnunet_stipple.tensors import one_thread_on_cpu

Centres = Dict[int, Optional[List[float]]]
UNIFORM_FALLBACK = "uniform_fallback"
LAYOUT_FALLBACK = "layout_fallback"     # another organ layout than the prior's: uniform prior (see .layout)


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


def place_prior(prior: SpatialPrior, first_probabilities, settings: PositioningSettings,
                floor: float = DEFAULT_FLOOR, driven_probabilities: Optional[Callable[[Centres], Any]] = None,
                case: Optional[str] = None) -> PriorPlacement:
    """Place every class of ``prior`` in a volume from the class probabilities of its first prediction,
    ``first_probabilities`` (K >= num_outputs, X, Y, Z), with ``settings`` (module docstring).

    The placement runs in torch where the probabilities are: a tensor on the predictor's device stays there
    (a numpy array is used on the CPU, with one thread: :func:`nnunet_stipple.tensors.one_thread_on_cpu`);
    only the report leaves it (:mod:`.device_place`).
    ``driven_probabilities(centres)`` gives the class probabilities (a tensor on the same device) of the
    prior-driven prediction with the prior's boxes at ``centres``, for the re-positioning steps; by default
    the prior-driven softmax of ``first_probabilities`` with the prior floored at ``floor`` (the model's
    ``stipple_floor``), computed only where the searches read it. Models with nnU-Net regions (sigmoid
    outputs) pass their own. ``case`` names the volume in the warning."""
    check_floor(floor)
    first = ClassProbabilities(torch.as_tensor(first_probabilities), prior.num_outputs)

    def driven(centres: Centres):
        if driven_probabilities is None:
            return PriorDrivenProbabilities(first, prior, centres, floor)
        return ClassProbabilities(torch.as_tensor(driven_probabilities(centres)), prior.num_outputs)

    with one_thread_on_cpu(first.device):
        return run_placement(prior, settings, floor, lambda start, probabilities: position_on_device(
            prior, probabilities, settings, start_centres=start), first, driven, case)


def place_prior_reference(prior: SpatialPrior, first_probabilities: np.ndarray, settings: PositioningSettings,
                          floor: float = DEFAULT_FLOOR, case: Optional[str] = None) -> PriorPlacement:
    """The same procedure with the numpy placement (:func:`.place.position_from_probabilities`) and the
    prior-driven softmax over the whole volume: the oracle of :func:`place_prior` (tests, benchmarks)."""
    check_floor(floor)
    shape = tuple(first_probabilities.shape[1:])

    def driven(centres: Centres) -> np.ndarray:
        return prior_driven_probabilities(first_probabilities, prior.probabilities_on_grid(shape, centres, floor))

    return run_placement(prior, settings, floor, lambda start, probabilities: position_from_probabilities(
        prior, probabilities, settings, start_centres=start), first_probabilities, driven, case)


def run_placement(prior: SpatialPrior, settings: PositioningSettings, floor: float,
                  position: Callable[[Optional[Centres], Any], Placement], first, driven: Callable[[Centres], Any],
                  case: Optional[str]) -> PriorPlacement:
    """The procedure (module docstring) around one placement, ``position(start_centres, probabilities)``:
    the first placement from ``first``, then re-positioning steps from ``driven(centres)``, then the report."""
    placement = position(None, first)
    joint = placement.joint      # the joint search only runs for the first placement: keep it for the report
    layout = None if settings.layout_guard == "off" else assess_layout(
        prior, placement.components, placed=[c for c, p in placement.classes.items() if p.method == "kl"],
        rejected=[c for c, p in placement.classes.items() if p.rejected_centre is not None])
    if layout is not None and layout["status"] == "flagged" and settings.layout_guard == "fallback":
        of_case = f"case {case}" if case is not None else "the volume"
        warnings.warn(f"STIPPLE: {of_case} does not hold the organ layout of the prior ({layout_line(layout)}); "
                      f"the prior is not placed and prediction uses a uniform prior (plain nnU-Net output) for fold "
                      f"{prior.fold}. If the layout is right, predict with --layout-guard flag.")
        return PriorPlacement(None, {
            "method": LAYOUT_FALLBACK, "settings": settings.to_json(), "floor": float(floor),
            "repositioning_steps": 0, "ok": False, "confidence": placement.confidence,
            "centres": {str(c): None for c in prior.classes}, "classes": _class_reports(prior, placement),
            "joint": joint, "layout": layout})
    steps = 0
    for steps in range(1, settings.repositioning_steps + 1):
        if not placement.ok:
            break
        placement = position(placement.centres, driven(placement.centres))
        if all(p.offset == [0, 0, 0] for p in placement.classes.values() if p.method == "kl"):
            break
    report = {"method": "kl_search", "settings": settings.to_json(), "floor": float(floor),
              "repositioning_steps": steps, "ok": placement.ok, "confidence": placement.confidence,
              "centres": {}, "classes": _class_reports(prior, placement), "joint": joint, "layout": layout}
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
