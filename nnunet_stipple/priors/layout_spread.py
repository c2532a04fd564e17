"""How far a layout of organ centres is from the mean layout, translation aside (the misfit of
:mod:`nnunet_stipple.positioning.layout`), and how far the fold's own training cases are: the typical misfit a
prior stores, so that the layout check works where the per-case centres are not kept (checkpoints)."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

MIN_ORGANS = 3              # the fewest organ centres that can tell one layout from another


def layout_misfit(centres_mm: np.ndarray, reference_mm: np.ndarray) -> float:
    """Median distance (mm) between centres and a reference layout after the median translation between them:
    ``t = median_c (p_c - r_c)``, misfit ``= median_c |p_c - r_c - t|``; rows are organs, columns axes. Medians
    keep one or two stray organs from deciding."""
    t = np.median(centres_mm - reference_mm, axis=0)
    return float(np.median(np.linalg.norm(centres_mm - reference_mm - t, axis=1)))


def largest_case_misfit_mm(case_centres: Mapping[str, Mapping[int, Sequence[float]]],
                           mean_centres: Mapping[int, Sequence[float]], spacing: Sequence[float]) -> Optional[float]:
    """The largest misfit of a training case's organ centres (voxels) to the mean centres, over the cases with at
    least :data:`MIN_ORGANS` organs (None if there is none)."""
    spacing_ = np.asarray(spacing, dtype=np.float64)
    misfits = []
    for centres in case_centres.values():
        classes = sorted(c for c in centres if c in mean_centres and centres[c] is not None)
        if len(classes) >= MIN_ORGANS:
            misfits.append(layout_misfit(np.asarray([centres[c] for c in classes], dtype=np.float64) * spacing_,
                                         np.asarray([mean_centres[c] for c in classes], dtype=np.float64) * spacing_))
    return max(misfits) if misfits else None
