"""A readable text summary of a spatial prior (what ``nnUNetv2_stipple_show_prior`` prints)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from nnunet_stipple.priors.spatial_prior import SpatialPrior



def _fmt(values, digits: int = 1) -> str:
    return "(" + ", ".join(f"{float(v):.{digits}f}" for v in values) + ")"


def summarize_prior(prior: SpatialPrior, npz_path: "Optional[str | Path]" = None) -> str:
    """Multi-line summary: provenance, geometry, and per class its cases, box and histogram statistics.

    With ``npz_path`` (the prior's file), the file and its figures folder (if present) are listed too."""
    lines = []
    if npz_path is not None:
        lines.append(f"File:              {npz_path}")
    lines += [
        f"Dataset:           {prior.dataset_name}",
        f"Plans:             {prior.plans_identifier}",
        f"Configuration:     {prior.configuration}",
        f"Fold:              {prior.fold}",
        f"B (bins):          {prior.num_bins}",
        f"Axial axis:        {prior.axial_axis} (of the preprocessed arrays)",
        f"Spacing (mm):      {_fmt(prior.spacing, 3)}",
        f"Training cases:    {len(prior.training_cases)}",
        f"Cases with centres: {len(prior.case_centres)}",
        f"Format version:    {prior.version}",
        "",
        "Classes (box sizes in voxels of the preprocessed arrays, centres in voxel coordinates):",
    ]
    header = f"  {'label':>5}  {'name':<18} {'#cases':>6}  {'box (voxels)':<16} {'box (mm)':<24} " \
             f"{'mean centre':<22} {'hist max':>8} {'hist mean':>9}"
    lines.append(header)
    for c in prior.built_classes:
        size = prior.box_size(c)
        mm_text = "x".join(f"{b * s:.1f}" for b, s in zip(size, prior.spacing)) \
            if len(prior.spacing) == len(size) else "n/a (spacing not 3D)"
        hist = np.asarray(prior.histograms[c], dtype=np.float64)
        lines.append(
            f"  {c:>5}  {prior.labels.get(c, f'label_{c}'):<18} {prior.num_cases_per_class.get(c, 0):>6}  "
            f"{'x'.join(str(s) for s in size):<16} {mm_text:<24} "
            f"{_fmt(prior.mean_centres[c]):<22} {hist.max():>8.3f} {hist.mean():>9.3f}")
    missing = prior.missing_classes
    lines.append("")
    if missing:
        lines.append("Missing classes (in no training case; they get the floor probability): "
                     + ", ".join(f"{c} ({prior.labels.get(c, f'label_{c}')})" for c in missing))
    else:
        lines.append("Missing classes:   none")
    if npz_path is not None:
        from nnunet_stipple.priors.build import figures_folder
        figs = figures_folder(npz_path)
        if figs.is_dir():
            n = len(list(figs.glob("*.png")))
            lines.append(f"Figures:           {figs} ({n} PNG file{'s' if n != 1 else ''})")
        else:
            lines.append("Figures:           none")
    return "\n".join(lines)
