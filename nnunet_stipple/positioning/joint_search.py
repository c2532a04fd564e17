"""Joint placement of all organs: one displacement of the field of view, searched over the whole volume.

A weak first prediction (short training, real CT) finds some organs and scatters false positives of
others; placing each organ from its own largest predicted component then starts far from the organ
for most classes (100-300 mm on BTCV, see docs/benchmarks.md). Between two scans of the same region the
organs move mostly together, with the field of view. This search places every organ's reference template
(the fold's mean aligned mask) at its mean training centre plus one common displacement ``d`` and picks
the ``d`` that best explains the first prediction of all the organs at once:

    cost(d) = sum_c sum_u BCE(r_c(u), q_c(s_c + d + u)),    s_c = box start at the mean training centre,

summed over the classes the prediction found (a class with no predicted voxel costs the same everywhere).
It is a sum, not a mean, over each box: the joint negative log-likelihood of the predicted organs under
the translated templates, so large, reliably predicted organs (liver) weigh more than a scatter of small
false positives. Voxels outside the volume count as background (``q = eps``): the scan is assumed to
contain the organs, which keeps boxes from sliding out of the field of view where nothing contradicts
them. Every displacement that puts some voxel of some box inside the volume is tried, on a coarse grid
(block means, about ``coarse_mm`` per voxel) because only a starting point is needed: each organ is
then refined by its own KL search (:mod:`.kl_search`) around ``mean centre + d``.

:func:`brute_force_joint_costs` evaluates the definition offset by offset (tests).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

from nnunet_stipple.positioning.kl_search import _select_best, kl_translation_search
from nnunet_stipple.priors.algorithm import box_start

# The first pass covers every displacement, so its FFTs span about three times the volume: at 6 mm that
# took 6.8 s on a BTCV 3d_fullres case (2-core CPU), at 12 mm 0.4 s (+1.2 s for the second pass), with
# the same placements on the three models of docs/benchmarks.md.
DEFAULT_COARSE_MM = 12.0
# Probabilities are clipped to [JOINT_EPS, 1 - JOINT_EPS]: an organ box over voxels the first prediction
# calls background costs at most -ln(0.01) = 4.6 per organ voxel. A weak first prediction misses most of
# an organ (false negatives) as readily as it scatters false positives; with the KL search's 1e-4 (9.2
# per voxel) the missed voxels decided the displacement (docs/benchmarks.md, BTCV_0023: 234 mm off with
# 1e-4, 18 mm with 1e-2).
JOINT_EPS = 1e-2


@dataclass(frozen=True)
class JointDisplacement:
    displacement: List[int]          # voxels of the volume, per axis: added to every mean training centre
    displacement_mm: List[float]
    cost: float                      # cost(d) at the best d (coarse grid)
    classes: List[int]               # classes that took part
    factors: List[int]               # coarse grid: voxels of the volume per coarse voxel, per axis


def coarse_factors(spacing: Sequence[float], coarse_mm: float = DEFAULT_COARSE_MM) -> List[int]:
    """Voxels per coarse voxel along each axis: about ``coarse_mm`` per coarse voxel, at least 1."""
    return [max(1, int(round(coarse_mm / float(s)))) for s in spacing]


def block_mean(a: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Mean over blocks of ``factors`` voxels; a partial block at the end is padded with zeros. With all
    factors 1 the array itself is returned (no copy)."""
    f = [int(v) for v in factors]
    if all(v == 1 for v in f):
        return a
    padded = np.zeros([n + (-n) % k for n, k in zip(a.shape, f)], dtype=np.float32)
    padded[tuple(slice(0, n) for n in a.shape)] = a
    n = [s // k for s, k in zip(padded.shape, f)]
    return padded.reshape(n[0], f[0], n[1], f[1], n[2], f[2]).mean(axis=(1, 3, 5))


def _grid_inputs(prior, probabilities: np.ndarray, classes: Sequence[int], factors: Sequence[int]):
    """Per class: the probabilities and the template on the grid, and the box start at the mean centre."""
    f = np.asarray(factors)
    out = {}
    for c in classes:
        r = block_mean(prior.template(c), factors)
        start = box_start(prior.mean_centres[c], prior.box_size(c))
        out[c] = (block_mean(probabilities[c], factors), r, np.floor(start / f + 0.5).astype(int))
    return out


def _full_range(inputs):
    """The radius per axis that covers every displacement putting some voxel of some class's box inside
    the volume (so no placement of the organs in the scan is left out)."""
    shape = next(iter(inputs.values()))[0].shape
    radius = [0, 0, 0]
    for _, r, start in inputs.values():
        for a in range(3):
            radius[a] = max(radius[a], int(start[a]) + r.shape[a] - 1, shape[a] - 1 - int(start[a]))
    return tuple(radius)


def joint_costs(inputs, around: Sequence[int], radius: Sequence[int], eps: float = 1e-4) -> np.ndarray:
    """cost(around + t) for every t in [-radius, radius] (module docstring), FFT-based."""
    shape = next(iter(inputs.values()))[0].shape
    radius = tuple(int(k) for k in radius)
    total = None
    for q, r, start in inputs.values():
        # the search region [s - R, s + R + E) of this class, background (0) where it leaves the volume:
        # every window is then fully "visible", and the mean cost of kl_translation_search times the box
        # size is the sum over the box, outside voxels included. Only the region is copied.
        lo = [int(a) + int(b) - k for a, b, k in zip(start, around, radius)]
        region = np.zeros([2 * k + e for k, e in zip(radius, r.shape)], dtype=np.result_type(q.dtype, np.float32))
        src = tuple(slice(max(0, a), min(n, a + m)) for a, m, n in zip(lo, region.shape, shape))
        if all(sl.stop > sl.start for sl in src):
            region[tuple(slice(sl.start - a, sl.stop - a) for sl, a in zip(src, lo))] = q[src]
        costs = kl_translation_search(region, r, radius, radius, eps=eps).costs * r.size
        total = costs if total is None else total + costs
    return total


def brute_force_joint_costs(inputs, around: Sequence[int], radius: Sequence[int], eps: float = 1e-4) -> np.ndarray:
    """:func:`joint_costs` by the definition, offset by offset (slow; for tests)."""
    shape = next(iter(inputs.values()))[0].shape
    costs = np.zeros(tuple(2 * int(k) + 1 for k in radius))
    for idx in np.ndindex(*costs.shape):
        t = np.asarray(idx) - np.asarray(radius) + np.asarray(around)
        for q, r, start in inputs.values():
            lo = start + t
            window = np.zeros(r.shape)
            src = tuple(slice(max(0, a), min(n, a + e)) for a, e, n in zip(lo, r.shape, shape))
            dst = tuple(slice(sl.start - a, sl.stop - a) for sl, a in zip(src, lo))
            if all(sl.stop > sl.start for sl in src):
                window[dst] = q[src]
            window = np.clip(window, eps, 1 - eps)
            costs[idx] += float(np.sum(-r * np.log(window) - (1 - r) * np.log(1 - window)))
    return costs


def joint_displacement(prior, probabilities: np.ndarray, classes: Sequence[int],
                       coarse_mm: float = DEFAULT_COARSE_MM, eps: float = JOINT_EPS) -> JointDisplacement:
    """The common displacement of ``classes`` (their mean training centres) that best explains
    ``probabilities`` (num_outputs, X, Y, Z); see the module docstring. Two passes: every displacement on
    the coarse grid, then the volume's own grid within one coarse voxel of the coarse optimum (the coarse
    grid rounds box starts and displacements to whole coarse voxels)."""
    if not classes:
        raise ValueError("joint_displacement needs at least one class")
    factors = coarse_factors(prior.spacing, coarse_mm)
    inputs = _grid_inputs(prior, probabilities, classes, factors)
    radius = _full_range(inputs)
    offset, cost = _select_best(joint_costs(inputs, (0, 0, 0), radius, eps), radius)
    disp = [int(t * k) for t, k in zip(offset, factors)]
    if any(k > 1 for k in factors):
        fine = _grid_inputs(prior, probabilities, classes, (1, 1, 1))
        offset, cost = _select_best(joint_costs(fine, disp, factors, eps), tuple(factors))
        disp = [d + t for d, t in zip(disp, offset)]
    return JointDisplacement(displacement=disp, displacement_mm=[float(d * s) for d, s in zip(disp, prior.spacing)],
                             cost=float(cost), classes=[int(c) for c in classes], factors=list(factors))
