"""Exhaustive KL-divergence translation search for placing a spatial prior (STIPPLE, section 3.2).

For a target (unlabeled / test) volume, a first network prediction gives the probability map ``q`` of
class ``k``. A reference template ``r`` (a one-hot reference label crop of the organ box, or a mean of
aligned labels; values in [0, 1], shape ``E = (E0, E1, E2)``) is placed with its voxel ``[0, 0, 0]`` at a
box start ``s`` of the target volume. Starting from a coarse start ``s0`` (from the first prediction)
every integer offset ``t`` in ``[-R0..R0] x [-R1..R1] x [-R2..R2]`` is tried and the one minimising

    cost(t) = sum_u valid(s0+t+u) * BCE(r(u), q(s0+t+u)) / max(1, sum_u valid(s0+t+u))
    BCE(r, q) = -r log q - (1 - r) log(1 - q),        q clipped to [eps, 1 - eps]

is kept. ``valid(v)`` is 1 inside the target volume and 0 outside: the window may leave the volume and
the cost is the mean over the visible voxels (``+inf`` if none is visible). For a binary reference this
is the mean voxel-wise KL(r || q).

Fast algorithm (:func:`kl_translation_search`): with ``L = valid * log(q / (1 - q))`` and
``M = valid * log(1 - q)``, ``BCE = -(r L + M)`` summed over the window, so

    cost(t) = -(corr(r, L)[t] + boxsum(M)[t]) / max(1, boxsum(valid)[t]).

``corr(r, L)`` is a float64 FFT cross-correlation restricted to the search region
``[s0 - R, s0 + R + E)`` (zero-padded outside the volume); the box sums are separable sliding sums
(cumulative sums along one axis at a time) and the visible-voxel count is an exact outer product of
three 1D counts. The reference spectrum only depends on the reference and the radius, so it can be
computed once with :func:`prepare_reference` and reused for many target volumes.

:func:`brute_force_kl_translation_search` evaluates the definition with plain loops over the offsets;
it is the ground truth for the tests and the benchmark.

Tie-breaking (both implementations): among offsets whose cost is within
``1e-9 * |cost_min| + 1e-12`` of the minimum, the one with the smallest Euclidean norm ``|t|`` wins,
then the lexicographically smallest ``t``. A uniform ``q`` therefore gives the offset ``(0, 0, 0)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import scipy.fft

__all__ = [
    "TranslationSearchResult",
    "PreparedReference",
    "prepare_reference",
    "kl_translation_search",
    "brute_force_kl_translation_search",
    "mm_to_voxel_radius",
    "TIE_RTOL",
    "TIE_ATOL",
]

#: Relative / absolute tolerance under which two costs count as a tie.
TIE_RTOL = 1e-9
TIE_ATOL = 1e-12
#: Slack allowed on probabilities slightly outside [0, 1] (float rounding of a softmax); they are clipped.
_PROB_SLACK = 1e-3

_LOG2 = math.log(2.0)


@dataclass(frozen=True)
class TranslationSearchResult:
    """Result of a translation search.

    Attributes:
        offset: best offset ``t`` (voxels, per axis).
        start: ``coarse_start + offset``: where the reference voxel ``[0, 0, 0]`` goes in the target volume.
        cost: cost at the best offset (mean BCE over the visible voxels of the window; ``inf`` if no
            window of the search range touches the volume).
        costs: all costs, shape ``(2R0+1, 2R1+1, 2R2+1)``; ``costs[R0+t0, R1+t1, R2+t2]`` is the cost of
            offset ``t``; ``inf`` where no voxel of the window is visible.
        confidence: ``clip(1 - cost / log(2), 0, 1)``: how much better the best placement explains the
            reference than an uninformative prediction (``q = 0.5`` everywhere has a BCE of exactly
            ``log 2``). 1 means a perfect match (cost 0), 0 means no better than chance or worse
            (also 0 when the cost is ``inf``).
    """

    offset: tuple[int, int, int]
    start: tuple[int, int, int]
    cost: float
    costs: np.ndarray
    confidence: float


# --------------------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------------------


def _as_int_triple(value, name: str, *, non_negative: bool, allow_scalar: bool = False) -> tuple[int, int, int]:
    if isinstance(value, (Integral, np.integer, Real)) and not isinstance(value, (bool, np.bool_)):
        if not allow_scalar:
            raise ValueError(f"{name} must be a sequence of 3 integers, got {value!r}")
        items = [value, value, value]
    else:
        try:
            items = list(np.asarray(value).reshape(-1)) if isinstance(value, np.ndarray) else list(value)
        except TypeError:
            raise ValueError(f"{name} must be a sequence of 3 integers, got {value!r}") from None
    if len(items) != 3:
        raise ValueError(f"{name} must have exactly 3 entries (one per axis), got {value!r}")
    out = []
    for v in items:
        if isinstance(v, (bool, np.bool_)):
            raise ValueError(f"{name} entries must be integers, got {value!r}")
        if isinstance(v, (Integral, np.integer)):
            iv = int(v)
        elif isinstance(v, (Real, np.floating)) and math.isfinite(float(v)) and float(v).is_integer():
            iv = int(v)
        else:
            raise ValueError(f"{name} entries must be integers, got {value!r}")
        if non_negative and iv < 0:
            raise ValueError(f"{name} entries must be non-negative, got {value!r}")
        out.append(iv)
    return (out[0], out[1], out[2])


def _check_eps(eps) -> float:
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"eps must be a number in (0, 0.5), got {eps!r}") from None
    if not (0.0 < e < 0.5):
        raise ValueError(f"eps must be in (0, 0.5), got {eps!r}")
    return e


def _check_volume(name: str, array) -> np.ndarray:
    """A non-empty, real-valued 3D array (shared shape/dtype checks of target and reference)."""
    a = np.asarray(array)
    if a.ndim != 3:
        raise ValueError(f"{name} must be a 3D array, got shape {a.shape}")
    if min(a.shape) < 1:
        raise ValueError(f"{name} must have all dimensions >= 1, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
        raise ValueError(f"{name} must be a real-valued array, got dtype {a.dtype}")
    return a


def _check_target(target_prob) -> np.ndarray:
    return _check_volume("target_prob", target_prob)


def _check_target_values(q: np.ndarray) -> None:
    if np.issubdtype(q.dtype, np.floating) and not np.isfinite(q).all():
        raise ValueError("target_prob contains non-finite values (nan or inf)")
    qmin, qmax = float(q.min()), float(q.max())
    if qmin < -_PROB_SLACK or qmax > 1.0 + _PROB_SLACK:
        raise ValueError(f"target_prob must hold probabilities in [0, 1], got values in [{qmin}, {qmax}]")


def _check_reference(reference) -> np.ndarray:
    r = _check_volume("reference", reference).astype(np.float64, copy=False)
    if not np.isfinite(r).all():
        raise ValueError("reference contains non-finite values (nan or inf)")
    if float(r.min()) < 0.0 or float(r.max()) > 1.0:
        raise ValueError(f"reference values must be in [0, 1], got [{float(r.min())}, {float(r.max())}]")
    return r


# --------------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------------


def mm_to_voxel_radius(radius_mm, spacing) -> tuple[int, int, int]:
    """Search radius in voxels per axis: ``ceil(radius_mm / spacing)``.

    ``radius_mm`` is a non-negative number or 3 of them; ``spacing`` 3 positive voxel sizes (mm), in the
    same axis order as the arrays. A tiny tolerance keeps e.g. ``3.9 / 1.3`` at 3 despite float rounding.
    """
    sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if sp.size != 3 or not np.isfinite(sp).all() or (sp <= 0).any():
        raise ValueError(f"spacing must be 3 positive finite numbers, got {spacing!r}")
    rm = np.asarray(radius_mm, dtype=np.float64).reshape(-1)
    if rm.size == 1:
        rm = np.repeat(rm, 3)
    if rm.size != 3 or not np.isfinite(rm).all() or (rm < 0).any():
        raise ValueError(f"radius_mm must be a non-negative number or 3 of them, got {radius_mm!r}")
    ratio = rm / sp
    vox = np.ceil(ratio - 1e-9 * np.maximum(1.0, ratio))
    return tuple(int(max(0, v)) for v in vox)  # type: ignore[return-value]


def _select_best(costs: np.ndarray, radius: tuple[int, int, int]) -> tuple[tuple[int, int, int], float]:
    """Deterministic argmin: ties (within TIE_RTOL/TIE_ATOL) go to the smallest |t|, then lexicographic."""
    cmin = float(np.min(costs))
    if math.isinf(cmin):  # nothing visible for any offset
        cand = np.argwhere(np.isinf(costs))
    else:
        cand = np.argwhere(costs <= cmin + TIE_RTOL * abs(cmin) + TIE_ATOL)
    t = cand - np.asarray(radius)[None, :]
    norm2 = (t.astype(np.int64) ** 2).sum(axis=1)
    order = np.lexsort((t[:, 2], t[:, 1], t[:, 0], norm2))  # last key is primary
    best = t[order[0]]
    offset = (int(best[0]), int(best[1]), int(best[2]))
    cost = float(costs[offset[0] + radius[0], offset[1] + radius[1], offset[2] + radius[2]])
    return offset, cost


def _confidence(cost: float) -> float:
    if not math.isfinite(cost):
        return 0.0
    return float(min(1.0, max(0.0, 1.0 - cost / _LOG2)))


def _make_result(costs, radius, coarse_start) -> TranslationSearchResult:
    offset, cost = _select_best(costs, radius)
    start = tuple(int(s + t) for s, t in zip(coarse_start, offset))
    return TranslationSearchResult(offset=offset, start=start, cost=cost, costs=costs,  # type: ignore[arg-type]
                                   confidence=_confidence(cost))


# --------------------------------------------------------------------------------------------------
# fast FFT search
# --------------------------------------------------------------------------------------------------


class PreparedReference:
    """A reference template with its FFT spectrum for a given search radius, reusable across targets.

    The search region always has shape ``2R + E`` (it is zero-padded where it leaves the volume), so the
    FFT shape, and hence the reference spectrum, only depends on the reference and the radius.
    """

    __slots__ = ("reference", "radius", "region_shape", "fft_shape", "spectrum_conj")

    def __init__(self, reference, radius):
        r = _check_reference(reference)
        rad = _as_int_triple(radius, "radius", non_negative=True, allow_scalar=True)
        self.reference = r
        self.radius = rad
        self.region_shape = tuple(e + 2 * k for e, k in zip(r.shape, rad))
        self.fft_shape = tuple(scipy.fft.next_fast_len(n, real=True) for n in self.region_shape)
        self.spectrum_conj = np.conj(scipy.fft.rfftn(r, s=self.fft_shape, workers=-1))


def prepare_reference(reference, radius) -> PreparedReference:
    """Pre-compute the reference spectrum for :func:`kl_translation_search` (reuse across target volumes)."""
    return PreparedReference(reference, radius)


def _sliding_sum(a: np.ndarray, window: int, axis: int, n_out: int) -> np.ndarray:
    """Sums of ``window`` consecutive entries along ``axis``, for starts ``0..n_out-1`` (float64)."""
    shape = list(a.shape)
    shape[axis] += 1
    c = np.empty(shape, dtype=np.float64)
    head = [slice(None)] * 3
    head[axis] = slice(0, 1)
    c[tuple(head)] = 0.0
    body = list(head)
    body[axis] = slice(1, None)
    np.cumsum(a, axis=axis, dtype=np.float64, out=c[tuple(body)])
    hi, lo = list(head), list(head)
    hi[axis] = slice(window, window + n_out)
    lo[axis] = slice(0, n_out)
    return c[tuple(hi)] - c[tuple(lo)]


def _region_slices(vol_shape, region_start, region_shape):
    """Slices of the region inside the volume (src) and where they go in the region array (dst)."""
    src, dst, inside = [], [], []
    for n, a, m in zip(vol_shape, region_start, region_shape):
        lo, hi = max(0, a), min(n, a + m)
        if hi <= lo:
            return None
        src.append(slice(lo, hi))
        dst.append(slice(lo - a, hi - a))
        inside.append((lo - a, hi - a))
    return tuple(src), tuple(dst), inside


def kl_translation_search(target_prob: np.ndarray, reference, coarse_start, radius,
                          eps: float = 1e-4) -> TranslationSearchResult:
    """Exhaustive translation search minimising the mean visible-voxel BCE / KL(r || q), FFT-based.

    Args:
        target_prob: 3D probability map ``q`` of the class in the target volume (network resolution).
        reference: 3D template ``r`` (values in [0, 1]) of the organ box, or a :class:`PreparedReference`
            built with the same ``radius`` (reuses its spectrum).
        coarse_start: 3 ints, coarse position of the template voxel ``[0, 0, 0]`` in the target volume.
        radius: non-negative int or 3 ints ``R``; offsets ``t`` in ``[-R, R]`` per axis are all tried.
        eps: probabilities are clipped to ``[eps, 1 - eps]``.

    Only the search region ``[s0 - R, s0 + R + E)`` of ``target_prob`` is read, so only its values are
    checked (finite, in [0, 1] up to a 1e-3 float slack); the brute-force version checks the whole volume.

    Returns:
        :class:`TranslationSearchResult`. See the module docstring for the cost, the tie-breaking rule
        and :class:`TranslationSearchResult` for the confidence.
    """
    eps = _check_eps(eps)
    q = _check_target(target_prob)
    s0 = _as_int_triple(coarse_start, "coarse_start", non_negative=False)
    rad = _as_int_triple(radius, "radius", non_negative=True, allow_scalar=True)
    if isinstance(reference, PreparedReference):
        if reference.radius != rad:
            raise ValueError(f"PreparedReference was built for radius {reference.radius}, searched with {rad}")
        prep = reference
    else:
        prep = PreparedReference(reference, rad)
    E = prep.reference.shape
    n_off = tuple(2 * k + 1 for k in rad)
    region_start = tuple(s - k for s, k in zip(s0, rad))
    region_shape = prep.region_shape

    # exact visible-voxel counts: outer product of 1D counts
    counts_1d = []
    for n, a, e, no in zip(q.shape, region_start, E, n_off):
        starts = a + np.arange(no)
        counts_1d.append(np.clip(np.minimum(starts + e, n) - np.maximum(starts, 0), 0, None).astype(np.float64))
    counts = counts_1d[0][:, None, None] * counts_1d[1][None, :, None] * counts_1d[2][None, None, :]

    sl = _region_slices(q.shape, region_start, region_shape)
    if sl is None:  # the search region never touches the volume
        costs = np.full(n_off, np.inf)
        return _make_result(costs, rad, s0)
    src, dst, inside = sl

    q_region = q[src]
    _check_target_values(q_region)  # only the voxels that can influence the result are read
    qc = q_region.astype(np.float64)  # always a fresh copy: clipped in place
    np.clip(qc, eps, 1.0 - eps, out=qc)
    log1m = np.log1p(-qc)

    # corr(r, L) over the region via FFT; region zero-padded outside the volume (valid = 0 there)
    L = np.zeros(prep.fft_shape, dtype=np.float64)
    L_in = L[dst]  # view
    np.log(qc, out=L_in)
    del qc
    np.subtract(L_in, log1m, out=L_in)  # logit(q)
    spec = scipy.fft.rfftn(L, workers=-1)
    del L
    spec *= prep.spectrum_conj
    corr = scipy.fft.irfftn(spec, s=prep.fft_shape, workers=-1)
    del spec
    corr_rl = corr[: n_off[0], : n_off[1], : n_off[2]]

    # box sums of M = valid * log(1 - q): sliding sums along each axis over the in-volume sub-block only
    box_m = log1m
    for ax in range(3):
        lo, hi = inside[ax]
        # pad only what is needed along this axis so that window starts 0..n_off-1 of the region map
        pad = [(0, 0)] * 3
        pad[ax] = (lo, region_shape[ax] - hi)
        box_m = np.pad(box_m, pad) if (lo or region_shape[ax] - hi) else box_m
        box_m = _sliding_sum(box_m, E[ax], ax, n_off[ax])

    with np.errstate(divide="ignore", invalid="ignore"):
        costs = -(corr_rl + box_m) / np.maximum(counts, 1.0)
    costs = np.where(counts > 0, costs, np.inf)
    return _make_result(np.ascontiguousarray(costs), rad, s0)


# --------------------------------------------------------------------------------------------------
# brute force reference implementation
# --------------------------------------------------------------------------------------------------


def brute_force_kl_translation_search(target_prob: np.ndarray, reference, coarse_start, radius,
                                      eps: float = 1e-4) -> TranslationSearchResult:
    """Same as :func:`kl_translation_search`, evaluating the cost definition offset by offset (slow)."""
    eps = _check_eps(eps)
    q = _check_target(target_prob)
    r = _check_reference(reference.reference if isinstance(reference, PreparedReference) else reference)
    s0 = _as_int_triple(coarse_start, "coarse_start", non_negative=False)
    rad = _as_int_triple(radius, "radius", non_negative=True, allow_scalar=True)
    _check_target_values(q)
    E = r.shape
    qc = np.clip(q.astype(np.float64), eps, 1.0 - eps)
    costs = np.full(tuple(2 * k + 1 for k in rad), np.inf)
    for i0 in range(2 * rad[0] + 1):
        for i1 in range(2 * rad[1] + 1):
            for i2 in range(2 * rad[2] + 1):
                start = (s0[0] + i0 - rad[0], s0[1] + i1 - rad[1], s0[2] + i2 - rad[2])
                vs, rs = [], []
                for n, a, e in zip(q.shape, start, E):
                    lo, hi = max(0, a), min(n, a + e)
                    if hi <= lo:
                        break
                    vs.append(slice(lo, hi))
                    rs.append(slice(lo - a, hi - a))
                else:
                    qq = qc[tuple(vs)]
                    rr = r[tuple(rs)]
                    bce = -rr * np.log(qq) - (1.0 - rr) * np.log(1.0 - qq)
                    costs[i0, i1, i2] = bce.sum() / bce.size
    return _make_result(costs, rad, s0)
