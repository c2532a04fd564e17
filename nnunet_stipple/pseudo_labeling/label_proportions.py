"""Nested label-proportion simulation: which training cases keep their labels at a proportion alpha.

The subsets are chosen at patient (case) level with one seeded permutation of the *sorted* case ids;
the labeled subset at ``alpha`` is the first ``n(alpha) = floor(alpha * N + 1/2)`` ids of that
permutation (round half up, computed exactly on the decimal value of alpha, never more than N).
Hence, for the same ids and seed, the subsets are nested: alpha_1 <= alpha_2 implies
``labeled_subset(ids, alpha_1) ⊆ labeled_subset(ids, alpha_2)``. The input order of ``case_ids``
does not matter; results are returned sorted.
"""
from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import List, Sequence

import numpy as np

from nnunet_stipple.errors import StippleInputError

__all__ = ["labeled_count", "labeled_subset", "hidden_subset"]


def _sorted_ids(case_ids: Sequence[str]) -> List[str]:
    if isinstance(case_ids, str):
        raise StippleInputError("case_ids must be a sequence of case identifiers, not a single string")
    ids = list(case_ids)
    if not ids:
        raise StippleInputError("case_ids is empty: there are no training cases to split")
    for c in ids:
        if not isinstance(c, str):
            raise StippleInputError(f"case ids must be strings, got {c!r} ({type(c).__name__})")
    sorted_ids = sorted(ids)
    dups = sorted({a for a, b in zip(sorted_ids, sorted_ids[1:]) if a == b})
    if dups:
        raise StippleInputError(f"duplicate case ids: {', '.join(dups)}")
    return sorted_ids


def _check_alpha(alpha) -> Fraction:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise StippleInputError(f"alpha must be a number in (0, 1], got {alpha!r}")
    value = float(alpha)
    if not math.isfinite(value) or not (0.0 < value <= 1.0):
        raise StippleInputError(
            f"alpha must be in (0, 1] (the fraction of the fold's training cases that keep their labels), got {alpha!r}"
        )
    # Exact decimal value as written (0.15 -> 3/20), so that round-half-up is not defeated by binary floats.
    return Fraction(repr(value))


def labeled_count(num_cases: int, alpha: float) -> int:
    """``n(alpha) = floor(alpha * N + 1/2)`` (round half up), capped at ``N``. May be 0."""
    frac = _check_alpha(alpha)
    if isinstance(num_cases, bool) or not isinstance(num_cases, numbers.Integral) or num_cases < 0:
        raise StippleInputError(f"num_cases must be a non-negative integer, got {num_cases!r}")
    return min(int(num_cases), math.floor(frac * int(num_cases) + Fraction(1, 2)))


def _permuted(sorted_ids: List[str], seed: int) -> List[str]:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise StippleInputError(f"seed must be a non-negative integer, got {seed!r}")
    perm = np.random.default_rng(int(seed)).permutation(len(sorted_ids))
    return [sorted_ids[i] for i in perm]


def labeled_subset(case_ids: Sequence[str], alpha: float, seed: int = 0) -> List[str]:
    """The sorted ids of the cases that keep their labels at proportion ``alpha`` in (0, 1].

    ``alpha == 1`` returns all cases (sorted). Raises a ValueError if ``alpha`` is outside (0, 1]
    or if it gives no labeled case (``round(alpha * N) == 0``), stating the smallest alpha that
    gives one labeled case for ``N`` cases (``1 / (2N)``).
    """
    ids = _sorted_ids(case_ids)
    n_total = len(ids)
    n = labeled_count(n_total, alpha)
    if n == 0:
        smallest = Fraction(1, 2 * n_total)
        raise StippleInputError(
            f"alpha={alpha!r} gives round({alpha!r} * {n_total}) = 0 labeled cases for {n_total} cases; "
            f"use alpha >= 1/(2*{n_total}) = {float(smallest):.6g} to keep at least one labeled case"
        )
    return sorted(_permuted(ids, seed)[:n])


def hidden_subset(case_ids: Sequence[str], alpha: float, seed: int = 0) -> List[str]:
    """The sorted ids of the cases whose labels are hidden at ``alpha``: the complement of
    :func:`labeled_subset` (empty for ``alpha == 1``). Same errors as :func:`labeled_subset`."""
    labeled = set(labeled_subset(case_ids, alpha, seed))
    return [c for c in _sorted_ids(case_ids) if c not in labeled]
