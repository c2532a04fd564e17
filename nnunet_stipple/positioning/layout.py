"""Does a volume hold the organ layout the prior was built from? (issue 14: the paper's stated limitation)

The prior encodes the usual layout: liver on one side, spleen on the other, kidneys below the liver, ... A
situs inversus, a prone patient or a scan stored flipped along z holds another layout; forcing the usual one
onto it turns the prior from a help into a harm. Before the prior is placed, the first (prior-free)
prediction's organ centres (each found organ's largest component) are compared with the prior's mean
training centres under each candidate layout: as trained, and mirrored along each axis of the voxel grid.
For a layout T the fit is translation-only and robust to a few stray components:

    t_T = median_c (p_c - T(m_c)),      misfit_T = median_c |p_c - T(m_c) - t_T|      (mm)

The typical misfit comes from the training labels themselves: the largest misfit of a training case's organ
centres to the mean layout, ``typical_mm`` (stored with the prior). A case is flagged (``different_layout``)
when its misfit as trained exceeds ``typical_mm`` and a mirrored layout fits it at least twice as well
(:data:`MIRRORED_FIT_RATIO`) *and* as well as the training cases fit theirs (misfit at most ``typical_mm``).
The last condition keeps a scattered first prediction (a weakly trained model's stray organ centres, which fit
no layout) from being taken for a mirrored one by chance: such a case is noted (``notes: ["loose_fit"]``),
placed as usual, and the consistency check deals with its strays.

Placements that cannot be reconciled (the anatomical consistency check rejected more of the placed organs than
it kept) are noted (``notes: ["irreconcilable"]``) but not flagged: on BTCV that happened to a typical case
whose weak first prediction (α = 10 %) scattered false positives, and the prior placed from the joint layout
still raised its Dice from 0.16 to 0.27 (docs/benchmarks.md); dropping the prior there would be the harm.

With fewer than :data:`MIN_ORGANS` organs found the layout cannot be told (``undetermined``, not flagged): a
field of view holding a few organs is placed as usual, the missing organs move with the found ones.
What a flag does is the setting ``layout_guard`` (:mod:`.settings`): ``fallback`` (the default: no prior,
plain nnU-Net output), ``flag`` (report only) or ``off`` (no check).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from nnunet_stipple.priors.layout_spread import MIN_ORGANS, largest_case_misfit_mm, layout_misfit
from nnunet_stipple.priors.spatial_prior import SpatialPrior

__all__ = ["MIN_ORGANS", "MIRRORED_FIT_RATIO", "AS_TRAINED", "layout_misfit", "candidate_layouts",
           "typical_misfit_mm", "assess_layout", "layout_line"]

MIRRORED_FIT_RATIO = 0.5    # a mirrored layout must fit at least this much better (misfit ratio) to be believed
AS_TRAINED = "as_trained"


def candidate_layouts(reference_mm: np.ndarray) -> Dict[str, np.ndarray]:
    """The reference as trained and mirrored along each axis (translation is fitted, so mirroring about 0 is
    mirroring about any plane)."""
    out = {AS_TRAINED: reference_mm}
    for axis in range(reference_mm.shape[1]):
        mirrored = reference_mm.copy()
        mirrored[:, axis] *= -1
        out[f"mirrored_axis{axis}"] = mirrored
    return out


def typical_misfit_mm(prior: SpatialPrior) -> Optional[float]:
    """The largest misfit of a training case's organ centres to the prior's mean layout: from the per-case
    centres where the prior has them, else the value it stored (None in priors written before it was)."""
    if prior.case_centres:
        return largest_case_misfit_mm(prior.case_centres, prior.mean_centres, prior.spacing)
    return prior.layout_misfit_mm


def assess_layout(prior: SpatialPrior, component_centres: Mapping[int, Sequence[float]],
                  placed: Sequence[int] = (), rejected: Sequence[int] = ()) -> dict:
    """The layout report of one volume: ``component_centres`` (class -> centre of its largest predicted
    component, voxels), and the classes the consistency check kept (``placed``) and ``rejected``. JSON-ready:
    ``status`` (``typical``, ``undetermined`` or ``flagged``), ``reasons`` of a flag, ``notes``, the misfit of
    every candidate layout (mm), ``typical_mm`` (None: the prior does not know it, nothing is flagged) and the
    organs used."""
    classes = [c for c in prior.built_classes if component_centres.get(c) is not None]
    report: dict = {"organs": [int(c) for c in classes], "misfit_mm": {}, "typical_mm": None, "best": None,
                    "reasons": [], "notes": [], "status": "undetermined"}
    reasons: List[str] = []
    if len(rejected) > len(placed):
        report["notes"].append("irreconcilable")
    if len(classes) >= MIN_ORGANS:
        spacing = np.asarray(prior.spacing, dtype=np.float64)
        found = np.asarray([component_centres[c] for c in classes], dtype=np.float64) * spacing
        reference = np.asarray([prior.mean_centres[c] for c in classes], dtype=np.float64) * spacing
        misfit = {name: layout_misfit(found, layout) for name, layout in candidate_layouts(reference).items()}
        typical = typical_misfit_mm(prior)
        best = min(misfit, key=misfit.get)
        report.update(misfit_mm=misfit, typical_mm=typical, best=best, status="typical")
        mirrored_best = min((v for k, v in misfit.items() if k != AS_TRAINED))
        if typical is not None and misfit[AS_TRAINED] > typical:
            if mirrored_best <= min(MIRRORED_FIT_RATIO * misfit[AS_TRAINED], typical):
                reasons.append("different_layout")
            else:
                report["notes"].append("loose_fit")
    if reasons:
        report.update(status="flagged", reasons=reasons)
    return report


def layout_line(report: Optional[dict]) -> str:
    """A short text for logs and summaries."""
    if not report:
        return "layout not checked"
    if report["status"] == "flagged":
        misfit = report["misfit_mm"]
        detail = (f" (misfit {misfit['as_trained']:.0f} mm as trained, {misfit[report['best']]:.0f} mm "
                  f"{report['best'].replace('_', ' ')})" if misfit else "")
        return f"layout flagged: {', '.join(report['reasons'])}{detail}"
    return f"layout {report['status']}"
