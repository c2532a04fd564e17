"""A simulated BTCV 3d_fullres case and fold prior, for positioning benchmarks without the dataset.

The geometry is that of the BTCV case of docs/benchmarks.md (BTCV_0023 at nnU-Net's 3d_fullres network
resolution: 160 x 234 x 234 voxels, spacing 3 x 1.35 x 1.35 mm, z first) and of the BTCV fold-0 prior (13
classes, B = 5, the box sizes of its "Prior building" section). The organs' shapes are smooth random blobs
filling most of each box (the prior's templates and histograms are means of a few of them), placed at
typical relative positions in the abdomen.

Two first predictions (network logits, 14 channels):

* ``untrained``: what a network with random weights gives, smooth low-amplitude logits without structure:
  every class wins scattered voxels all over the volume, so every organ is "found", the joint search and
  all 13 KL searches run and nothing agrees. The worst case of docs/benchmarks.md.
* ``trained``: the organs displaced together by a few centimetres (a field of view other than the training
  mean), each jittered by a few voxels, as confident logits with unit Gaussian noise.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from nnunet_stipple.priors.algorithm import bin_of_slice, box_start
from nnunet_stipple.priors.spatial_prior import SpatialPrior

SHAPE = (160, 234, 234)
SPACING = (3.0, 1.35, 1.35)
NUM_BINS = 5
# label, name, box (voxels, z y x) of the BTCV fold-0 prior, relative box centre in the volume (z, y, x)
ORGANS = [
    (1, "spleen", (88, 169, 117), (0.55, 0.45, 0.72)),
    (2, "right kidney", (43, 70, 62), (0.45, 0.62, 0.28)),
    (3, "left kidney", (42, 79, 68), (0.50, 0.62, 0.72)),
    (4, "gallbladder", (24, 77, 74), (0.50, 0.38, 0.32)),
    (5, "esophagus", (76, 47, 47), (0.70, 0.55, 0.54)),
    (6, "liver", (72, 167, 225), (0.60, 0.45, 0.50)),
    (7, "stomach", (56, 140, 164), (0.60, 0.40, 0.62)),
    (8, "aorta", (116, 93, 60), (0.50, 0.58, 0.52)),
    (9, "inferior vena cava", (93, 52, 58), (0.50, 0.55, 0.42)),
    (10, "portal/splenic vein", (40, 110, 180), (0.52, 0.47, 0.50)),
    (11, "pancreas", (37, 78, 129), (0.46, 0.50, 0.55)),
    (12, "right adrenal gland", (18, 40, 26), (0.62, 0.56, 0.37)),
    (13, "left adrenal gland", (22, 49, 29), (0.62, 0.56, 0.63)),
]
# the trained case's field of view relative to the training mean (voxels; 15 mm, -20 mm, 16 mm)
TRAINED_DISPLACEMENT = (5, -15, 12)


def organ_shape(box: Tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth random blob filling most of ``box`` (one-hot, float64)."""
    grids = np.meshgrid(*[np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1) for n in box], indexing="ij")
    d = sum(g**2 for g in grids)
    noise = gaussian_filter(rng.normal(0.0, 1.0, box), sigma=[max(1.0, n / 6) for n in box])
    noise /= np.abs(noise).max() + 1e-12
    return (d + 0.35 * noise <= 0.85).astype(np.float64)


def _mean_centre(box, relative) -> list:
    return [float(np.clip(r * n, (b - 1) / 2, n - 1 - (b - 1) / 2)) for r, n, b in zip(relative, SHAPE, box)]


def simulated_prior(seed: int = 0, cases: int = 4) -> SpatialPrior:
    """A fold prior with the BTCV boxes; templates and histograms are means over ``cases`` random organs."""
    rng = np.random.default_rng(seed)
    histograms, templates, centres = {}, {}, {}
    for label, _, box, relative in ORGANS:
        mean = np.mean([organ_shape(box, rng) for _ in range(cases)], 0)
        bins = bin_of_slice(np.arange(box[0]), box[0], NUM_BINS)
        histograms[label] = np.stack([mean[bins == b].mean(0) for b in range(NUM_BINS)]).astype(np.float32)
        templates[label] = np.round(mean * 255).astype(np.uint8)
        centres[label] = _mean_centre(box, relative)
    return SpatialPrior(
        dataset_name="Dataset101_BTCV (simulated)", plans_identifier="nnUNetPlans", configuration="3d_fullres",
        fold="0", num_bins=NUM_BINS, axial_axis=0, spacing=list(SPACING),
        labels={label: name for label, name, _, _ in ORGANS}, histograms=histograms,
        slice_counts={c: np.ones(NUM_BINS, np.int64) for c in histograms}, templates=templates,
        num_cases_per_class={c: cases for c in histograms}, mean_centres=centres,
        training_cases=[f"simulated_{i}" for i in range(cases)])


def simulated_label(prior: SpatialPrior, displacement=TRAINED_DISPLACEMENT, seed: int = 1) -> np.ndarray:
    """The organs (the prior's templates above one half) at the training mean plus ``displacement``, each
    jittered by up to 3 voxels per axis; later classes overwrite earlier ones where they overlap."""
    rng = np.random.default_rng(seed)
    label = np.zeros(SHAPE, np.uint8)
    for c in prior.built_classes:
        jitter = rng.integers(-3, 4, 3)
        start = box_start(np.add(prior.mean_centres[c], displacement) + jitter, prior.box_size(c))
        organ = prior.template(c) >= 0.5
        dst = tuple(slice(max(0, s), min(n, s + e)) for s, n, e in zip(start, SHAPE, organ.shape))
        src = tuple(slice(d.start - s, d.stop - s) for d, s in zip(dst, start))
        label[dst][organ[src]] = c
    return label


def simulated_logits(kind: str, prior: SpatialPrior, seed: int = 2) -> torch.Tensor:
    """First-prediction logits (14, *SHAPE), float32: ``untrained`` or ``trained`` (module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    channels = prior.num_outputs
    if kind == "untrained":
        coarse = torch.randn((1, channels, 20, 30, 30), generator=generator)
        return torch.nn.functional.interpolate(coarse, size=SHAPE, mode="trilinear", align_corners=False)[0] * 0.5
    if kind != "trained":
        raise ValueError(f"kind must be 'untrained' or 'trained', got {kind!r}")
    label = torch.from_numpy(simulated_label(prior)).long()
    logits = torch.randn((channels, *SHAPE), generator=generator)
    logits.scatter_add_(0, label[None], torch.full((1, *SHAPE), 6.0))
    return logits


def case_summary() -> Dict[str, object]:
    return {"shape": list(SHAPE), "spacing_mm": list(SPACING), "classes": len(ORGANS), "num_bins": NUM_BINS}
