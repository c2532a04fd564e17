"""PNG figures of a prior: one image per class with every bin side by side, and an overview of all classes."""
from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np

from nnunet_stipple.atomic import atomic_path
from nnunet_stipple.priors.spatial_prior import SpatialPrior


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _bins(prior: SpatialPrior, c: int) -> List[np.ndarray]:
    h = np.moveaxis(prior.histograms[c], prior.axial_axis, 0)
    return [h[b] for b in range(h.shape[0])]


def save_prior_figures(prior: SpatialPrior, folder: "str | Path") -> List[Path]:
    plt = _pyplot()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for c in prior.built_classes:
        bins = _bins(prior, c)
        fig, axes = plt.subplots(1, len(bins), figsize=(2.2 * len(bins) + 0.8, 2.6), squeeze=False)
        for b, (ax, img) in enumerate(zip(axes[0], bins)):
            im = ax.imshow(img, vmin=0, vmax=1, cmap="magma")
            ax.set_title(f"bin {b + 1}/{len(bins)}\n{int(prior.slice_counts[c][b])} slices", fontsize=8)
            ax.axis("off")
        fig.colorbar(im, ax=list(axes[0]), fraction=0.02)
        fig.suptitle(f"class {c} ({prior.labels[c]}), {prior.num_cases_per_class[c]} cases, box "
                     f"{list(prior.box_size(c))} vox, fold {prior.fold}", fontsize=9)
        written.append(_save(fig, folder / f"class_{c:02d}_{prior.labels[c]}.png"))
        plt.close(fig)
    # overview: one row per class, every bin
    classes = prior.built_classes
    cols = prior.num_bins
    fig, axes = plt.subplots(len(classes), cols, figsize=(1.6 * cols + 1.5, 1.6 * len(classes) + 0.6),
                             squeeze=False)
    for r, c in enumerate(classes):
        for b, img in enumerate(_bins(prior, c)):
            axes[r][b].imshow(img, vmin=0, vmax=1, cmap="magma")
            axes[r][b].set_xticks([])
            axes[r][b].set_yticks([])
            if b == 0:
                axes[r][b].set_ylabel(prior.labels[c], fontsize=7)
            if r == 0:
                axes[r][b].set_title(f"bin {b + 1}", fontsize=8)
    fig.suptitle(f"{prior.dataset_name} {prior.configuration} fold {prior.fold}, B={prior.num_bins}", fontsize=9)
    written.append(_save(fig, folder / "overview.png"))
    plt.close(fig)
    return written


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png", bbox_inches="tight")
    return path
