"""The KL translation search and the joint search's costs in torch, on the device of the probabilities.

Same definitions, tie rule and float64 accumulation as the numpy versions, which stay the oracles:
:func:`nnunet_stipple.positioning.kl_search.kl_translation_search` (module docstring there: the cost, the
FFT cross-correlation of ``logit(q)`` with the reference, the sliding box sums of ``log(1 - q)``, the exact
visible-voxel counts) and :func:`nnunet_stipple.positioning.joint_search.joint_costs`. Everything stays on
the device; only the best offset and its cost (a few numbers) come back to the host, for the report.

The reference spectra depend only on the prior, the class, the radius and the device: they are computed
once per prior and kept with it (:func:`reference_spectrum`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Sequence, Tuple

import numpy as np
import scipy.fft
import torch

from nnunet_stipple.positioning.kl_search import TIE_ATOL, TIE_RTOL, _confidence, _region_slices
from nnunet_stipple.tensors import workspace

Triple = Tuple[int, int, int]


@dataclass(frozen=True)
class Spectrum:
    """A reference's conjugate FFT for one search radius, on one device."""
    conj: torch.Tensor          # complex128, rfftn of the reference over fft_shape, conjugated
    reference_shape: Triple
    radius: Triple
    fft_shape: Triple
    size: int                   # number of reference voxels

    @classmethod
    def of(cls, reference: torch.Tensor, radius: Sequence[int]) -> "Spectrum":
        rad = tuple(int(k) for k in radius)
        shape = tuple(int(e) for e in reference.shape)
        # the region searched always has shape 2R + E (zero-padded outside the volume): one FFT shape per radius
        fft_shape = tuple(scipy.fft.next_fast_len(e + 2 * k, real=True) for e, k in zip(shape, rad))
        conj = torch.conj(torch.fft.rfftn(reference.double(), s=fft_shape)).resolve_conj()
        return cls(conj, shape, rad, fft_shape, int(np.prod(shape)))


def reference_spectrum(prior, key: tuple, reference: Callable[[], torch.Tensor], radius: Sequence[int]) -> Spectrum:
    """The cached spectrum of ``reference()`` (a tensor on the device) for ``radius``; ``key`` names the
    reference (what it is, the class, its grid) and must include the device."""
    cache: Dict[tuple, Spectrum] = prior.__dict__.setdefault("_device_spectra", {})
    full_key = (*key, tuple(int(k) for k in radius))
    if full_key not in cache:
        cache[full_key] = Spectrum.of(reference(), radius)
    return cache[full_key]


@dataclass(frozen=True)
class SearchResult:
    offset: Triple
    start: Triple
    cost: float
    confidence: float
    costs: torch.Tensor         # float64, (2R0+1, 2R1+1, 2R2+1), on the device; inf where nothing is visible


def _prefix_sums(cumulative: torch.Tensor, axis: int, first: int, n: int) -> torch.Tensor:
    """``P(clamp(first + w, 0, m))`` for ``w = 0..n-1``, where ``P(i)`` is the sum of the first ``i`` entries
    along ``axis`` (``cumulative`` holds ``P(1)..P(m)``): zeros, a slice of ``cumulative``, then the total.
    Slices and one concatenation: no gather over the large first axis."""
    m = cumulative.shape[axis]
    below = min(n, max(0, 1 - first))                  # P(0) = 0
    above = min(n - below, max(0, n - (m - first)))      # P(m), the total
    middle = n - below - above
    pieces = []
    if below:
        shape = list(cumulative.shape)
        shape[axis] = below
        pieces.append(torch.zeros(shape, dtype=cumulative.dtype, device=cumulative.device))
    if middle:
        pieces.append(cumulative.narrow(axis, first + below - 1, middle))
    if above:
        shape = list(cumulative.shape)
        shape[axis] = above
        pieces.append(cumulative.narrow(axis, m - 1, 1).expand(shape))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, axis)


def window_sums(a: torch.Tensor, offset: Sequence[int], window: Sequence[int], n_out: Sequence[int]) -> torch.Tensor:
    """Sums of ``a`` over every window: ``a`` lies at ``offset`` of a region that is zero elsewhere, windows of
    size ``window`` start at ``0..n_out-1`` of the region (float64; from cumulative sums, one axis at a time)."""
    for axis in range(3):
        cumulative = workspace(a.shape, torch.float64, a.device)
        torch.cumsum(a, dim=axis, dtype=torch.float64, out=cumulative)
        first = -int(offset[axis])
        a = _prefix_sums(cumulative, axis, first + int(window[axis]), int(n_out[axis])) - \
            _prefix_sums(cumulative, axis, first, int(n_out[axis]))
        del cumulative
    return a


def _circular_window(x: torch.Tensor, axis: int, start: int, n: int) -> torch.Tensor:
    """Entries ``(start + w) mod size`` for ``w = 0..n-1`` along ``axis`` (``-size < start``, ``n <= size``)."""
    size = x.shape[axis]
    start %= size
    if start + n <= size:
        return x.narrow(axis, start, n)
    return torch.cat([x.narrow(axis, start, size - start), x.narrow(axis, 0, n - (size - start))], axis)


def visible_counts(volume_shape: Sequence[int], region_start: Sequence[int], reference_shape: Sequence[int],
                   n_off: Sequence[int], device) -> torch.Tensor:
    """Visible voxels of every window: the outer product of three 1D counts (exact)."""
    counts = []
    for n, a, e, no in zip(volume_shape, region_start, reference_shape, n_off):
        starts = a + torch.arange(no, device=device, dtype=torch.float64)
        counts.append((torch.clamp(starts + e, max=n) - torch.clamp(starts, min=0)).clamp(min=0))
    return counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :]


def region_slices(volume_shape, region_start, region_shape):
    """Slices of the search region inside the volume (``src``) and where they go in the region (``dst``);
    None when the region never touches the volume."""
    slices = _region_slices(volume_shape, region_start, region_shape)
    return None if slices is None else slices[:2]


def kl_sums(crop: torch.Tensor, dst, spectrum: Spectrum, eps: float) -> torch.Tensor:
    """The BCE summed over the visible voxels of every window, from ``crop``, the class probabilities of
    the search region inside the volume, which go at ``dst`` in the region ``[s0 - R, s0 + R + E)``."""
    rad, E = spectrum.radius, spectrum.reference_shape
    n_off = tuple(2 * k + 1 for k in rad)
    device = crop.device
    logit = workspace(crop.shape, torch.float64, device)
    logit.copy_(crop).clamp_(eps, 1.0 - eps)
    log1m = workspace(crop.shape, torch.float64, device)
    torch.neg(logit, out=log1m).log1p_()
    logit.log_().sub_(log1m)
    # corr(r, logit) by FFT with the crop at the region's origin instead of at dst: output t of the region
    # is then output t - dst.start (mod the FFT size) of the crop, without wrap-around because the crop
    # ends inside the region and the FFT size is at least the region's
    spectrum_of_crop = workspace(spectrum.conj.shape, torch.complex128, device)
    torch.fft.rfftn(logit, s=spectrum.fft_shape, out=spectrum_of_crop)
    del logit
    corr = workspace(spectrum.fft_shape, torch.float64, device)
    torch.fft.irfftn(spectrum_of_crop.mul_(spectrum.conj), s=spectrum.fft_shape, out=corr)
    del spectrum_of_crop
    for axis, n in enumerate(n_off):
        corr = _circular_window(corr, axis, -dst[axis].start, n)
    lows = [sl.start for sl in dst]
    return -(corr + window_sums(log1m, lows, E, n_off))


def kl_costs(crop: torch.Tensor, dst, volume_shape: Sequence[int], coarse_start: Sequence[int],
             spectrum: Spectrum, eps: float) -> torch.Tensor:
    """The costs of every offset: the mean BCE over the visible voxels of the window (``inf`` if none)."""
    n_off = tuple(2 * k + 1 for k in spectrum.radius)
    region_start = tuple(int(s) - k for s, k in zip(coarse_start, spectrum.radius))
    counts = visible_counts(volume_shape, region_start, spectrum.reference_shape, n_off, crop.device)
    costs = kl_sums(crop, dst, spectrum, eps) / counts.clamp(min=1.0)
    return torch.where(counts > 0, costs, torch.full_like(costs, math.inf))


def select_best(costs: torch.Tensor, radius: Sequence[int]) -> Tuple[Triple, float]:
    """The numpy ``_select_best`` rule on the device: among costs within the tie tolerance of the minimum,
    the smallest ``|t|``, then the lexicographically smallest ``t``; one small transfer to the host."""
    rad = torch.as_tensor([int(k) for k in radius], device=costs.device)
    flat = costs.reshape(-1)
    cmin = flat.min()
    # when every cost is inf (nothing visible anywhere), so is the threshold: every offset is a candidate
    candidates = flat <= cmin + TIE_RTOL * cmin.abs() + TIE_ATOL
    index = torch.arange(flat.numel(), device=costs.device)
    t = torch.stack(torch.unravel_index(index, costs.shape), 1) - rad
    norm2 = (t * t).sum(1)
    # the flat index orders t lexicographically: norm first, then the index
    key = torch.where(candidates, norm2 * flat.numel() + index, torch.iinfo(torch.int64).max)
    best = int(torch.argmin(key))
    offset = tuple(int(v) for v in np.unravel_index(best, tuple(costs.shape)))
    offset = tuple(o - int(k) for o, k in zip(offset, radius))
    return offset, float(flat[best])


def translation_search(crop: torch.Tensor, dst, volume_shape, coarse_start, spectrum: Spectrum,
                       eps: float = 1e-4) -> SearchResult:
    """:func:`nnunet_stipple.positioning.kl_search.kl_translation_search` on the device (``crop`` and
    ``dst`` as in :func:`kl_costs`; ``crop`` None: the search region never touches the volume)."""
    n_off = tuple(2 * k + 1 for k in spectrum.radius)
    if crop is None:
        costs = torch.full(n_off, math.inf, dtype=torch.float64, device=spectrum.conj.device)
    else:
        costs = kl_costs(crop, dst, volume_shape, coarse_start, spectrum, eps)
    offset, cost = select_best(costs, spectrum.radius)
    start = tuple(int(s) + t for s, t in zip(coarse_start, offset))
    return SearchResult(offset, start, cost, _confidence(cost), costs)


def block_mean(a: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """:func:`nnunet_stipple.positioning.joint_search.block_mean` in torch: a partial block at the end counts its
    missing voxels as zeros (the divisor is always the whole block), without a padded copy."""
    f = [int(v) for v in factors]
    if all(v == 1 for v in f):
        return a
    a = a.float()
    short = [max(0, k - n) for n, k in zip(a.shape, f)]
    if any(short):  # pooling needs one whole block per axis: pad an axis shorter than its block (small arrays)
        a = torch.nn.functional.pad(a, (0, short[2], 0, short[1], 0, short[0]))
    return torch.nn.functional.avg_pool3d(a[None, None], f, f, ceil_mode=True, divisor_override=int(np.prod(f)))[0, 0]


def joint_costs(inputs, around: Sequence[int], radius: Sequence[int], eps: float) -> torch.Tensor:
    """:func:`nnunet_stipple.positioning.joint_search.joint_costs` on the device: ``inputs`` holds per class
    (probabilities on the grid, spectrum of the template on the grid for ``radius``, box start on the grid)."""
    total = None
    for q, spectrum, start in inputs:
        # the class's search region, background (0) where it leaves the volume: every window is fully
        # "visible", so the mean cost times the box size is the sum over the box, outside voxels included
        lo = [int(a) + int(b) - int(k) for a, b, k in zip(start, around, radius)]
        region_shape = [2 * int(k) + e for k, e in zip(radius, spectrum.reference_shape)]
        region = workspace(region_shape, q.dtype, q.device, zeros=True)
        slices = region_slices(q.shape, lo, region_shape)
        if slices is not None:
            region[slices[1]] = q[slices[0]]
        full = tuple(slice(0, n) for n in region_shape)
        costs = kl_sums(region, full, spectrum, eps)
        total = costs if total is None else total + costs
    return total
