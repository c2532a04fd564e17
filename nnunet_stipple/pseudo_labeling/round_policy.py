"""Round policies of the pseudo-labeling loop (``round_policy`` in ``stipple_run.json``).

* ``gamma_schedule`` (the paper's Algorithm 2, the default of every loop trainer but one): round t keeps per case and
  class the gamma_t = t/T * gamma_max most confident predicted organ voxels (the selection strategy), T from
  ``rounds`` (None: 2 at alpha >= 0.7, else 1), every pseudo-labeled case enters the round's training set.
* ``agreement`` (the FLARE22 winners' multi-round recipe, default of ``nnUNetTrainer_FLARE22Rounds``): whole-case
  pseudo-labels (every predicted voxel; selection ``flare22``, the connected-component cleaning, unless another
  whole-case strategy is set), every round retrained from scratch, T = 3 when ``rounds`` is not set (m0 on the
  labeled cases, then three relabeled rounds: the winners' pseudo-label iterations 1, 2 and 3). From the second
  relabeled round on, a pseudo-labeled case enters the round's training set only when its pseudo-label agrees with
  its pseudo-label of the previous round (``agreement_measure``, ``agreement_threshold``); the others are dropped
  from that round's training set (not ignore-labelled), and ``round_<t>/round_log.json`` records every case's value
  and whether it was kept. Cases dropped in a round are still predicted in the next one and can come back.

What the winners did (Ziyan-Huang/FLARE22, ``README.md`` "2. Filter Low-quality Pseudo Labels": "We compare Pseudo
Labels in different rounds and filter out the labels with high variants", then "50 Labeled Data and 1924 Selected
Pseudo Labeled Data"; ``select.ipynb``): for every case, with the label maps of iterations 1, 2 and 3,
``uncertainty_k = np.sum(ite_{k-1} != ite_k) / np.sum(ite_k > 0)`` (voxels that changed between consecutive
iterations over the later iteration's foreground voxels), ``u = (uncertainty2 + uncertainty3) / 2``, and the cases
sorted by ``u`` descending. The notebook gives no threshold: the 76 cases with the highest ``u`` were left out
(1,924 of 2,000 kept) once, before the final (small) model was trained. Differences here, by design of this loop:
the filter compares consecutive rounds only (not the mean over both pairs) and applies from round 2 on at every
round, and it is a threshold on the measure, not a count of cases.

Measures (``agreement_measure``), computed with numpy on the stored ``pseudo_labels/<case>.npz`` of both rounds
(no prediction is repeated, so a resume with ``--c`` recomputes the same values):

* ``changed_fraction`` (default; the winners' measure, lower = more agreement): voxels whose label differs between the
  two rounds over the voxels of the later round labeled with an organ class; kept when ``<= agreement_threshold``.
  Default threshold 0.1: OUR choice (the winners' repository has none). When the later round labels no organ voxel
  the denominator is 1 (so identical empty labels give 0 and a vanished prediction a large value).
* ``dice`` (higher = more agreement): mean Dice over the organ classes present in at least one of the two rounds; a
  class absent from both does not count; two label maps without any organ voxel agree (1.0). Kept when
  ``>= agreement_threshold``; default threshold 0.9 (our choice).

The ignore label is not an organ class: it counts as background in ``dice``; in ``changed_fraction`` an ignore voxel
counts as changed where the other round differs (the policy only allows whole-case strategies, which write none).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Dict, Iterable, Optional

import numpy as np

from nnunet_stipple.errors import StippleInputError

GAMMA_SCHEDULE = "gamma_schedule"
AGREEMENT = "agreement"


@dataclass(frozen=True)
class RoundPolicy:
    name: str
    default_rounds: Optional[int]        # T when ``rounds`` is not set; None: the paper's choice by alpha
    default_selection: Optional[str]     # the selection strategy when ``selection`` is not set; None: the trainer's
    filters_by_agreement: bool
    description: str


ROUND_POLICIES: Dict[str, RoundPolicy] = {
    GAMMA_SCHEDULE: RoundPolicy(GAMMA_SCHEDULE, None, None, False,
                                "the paper's gamma_t = t/T * gamma_max schedule, every pseudo-labeled case trained on"),
    AGREEMENT: RoundPolicy(AGREEMENT, 3, "flare22", True,
                           "FLARE22 winners: whole-case pseudo-labels, from scratch, T = 3, from round 2 on only cases "
                           "whose pseudo-label agrees with the previous round's"),
}


@dataclass(frozen=True)
class AgreementMeasure:
    name: str
    higher_agrees: bool          # dice: kept when >= threshold; changed_fraction: kept when <= threshold
    default_threshold: float
    upper: float                 # largest meaningful threshold

    def keeps(self, value: float, threshold: float) -> bool:
        return value >= threshold if self.higher_agrees else value <= threshold

    @property
    def rule(self) -> str:
        return ">=" if self.higher_agrees else "<="


AGREEMENT_MEASURES: Dict[str, AgreementMeasure] = {
    "changed_fraction": AgreementMeasure("changed_fraction", False, 0.1, math.inf),
    "dice": AgreementMeasure("dice", True, 0.9, 1.0),
}
DEFAULT_AGREEMENT_MEASURE = "changed_fraction"


def _check_pair(previous: np.ndarray, current: np.ndarray) -> None:
    if previous.shape != current.shape:
        raise StippleInputError(f"pseudo-labels of consecutive rounds differ in shape ({previous.shape} vs "
                                f"{current.shape}); they must be of the same preprocessed case")


def changed_fraction(previous: np.ndarray, current: np.ndarray, classes: Iterable[int]) -> float:
    """FLARE22's ``np.sum(prev != cur) / np.sum(cur > 0)``, with the organ ``classes`` as foreground and a
    denominator of at least 1."""
    previous, current = np.asarray(previous), np.asarray(current)
    _check_pair(previous, current)
    changed = int(np.count_nonzero(previous != current))
    foreground = int(np.count_nonzero(np.isin(current, list(classes))))
    return changed / max(foreground, 1)


def mean_dice(previous: np.ndarray, current: np.ndarray, classes: Iterable[int]) -> float:
    """Mean Dice over the ``classes`` present in at least one of the two label maps (1.0 when none is)."""
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn   # nnU-Net's own Dice counts
    previous, current = np.asarray(previous), np.asarray(current)
    _check_pair(previous, current)
    scores = []
    for c in classes:
        tp, fp, fn, _ = compute_tp_fp_fn_tn(previous == c, current == c, None)
        if tp + fp + fn == 0:
            continue   # absent from both rounds: does not count
        scores.append(2.0 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 1.0


_MEASURE_FUNCTIONS = {"changed_fraction": changed_fraction, "dice": mean_dice}


def agreement_value(measure: str, previous: np.ndarray, current: np.ndarray, classes: Iterable[int]) -> float:
    return float(_MEASURE_FUNCTIONS[measure](previous, current, list(classes)))


def resolved_agreement(measure: Optional[str], threshold: Optional[float]) -> tuple:
    """(measure, threshold) with the defaults filled in."""
    measure = measure or DEFAULT_AGREEMENT_MEASURE
    return measure, (AGREEMENT_MEASURES[measure].default_threshold if threshold is None else float(threshold))


def check_round_policy(policy: Optional[str], where: str, measure=None, threshold=None, selection=None,
                       retrain: str = "scratch", policy_explicit: bool = True) -> Optional[RoundPolicy]:
    """Check the policy and the settings that go with it; raises :class:`StippleInputError` naming ``where``.
    ``policy`` None (the trainer's default, not known here) checks the agreement settings on their own."""
    if policy is not None and (not isinstance(policy, str) or policy not in ROUND_POLICIES):
        raise StippleInputError(f"{where}: round_policy must be one of {', '.join(ROUND_POLICIES)} (or null: the "
                                f"trainer's default), got {policy!r}")
    if measure is not None and (not isinstance(measure, str) or measure not in AGREEMENT_MEASURES):
        raise StippleInputError(f"{where}: agreement_measure must be one of {', '.join(AGREEMENT_MEASURES)} (or null: "
                                f"{DEFAULT_AGREEMENT_MEASURE}), got {measure!r}")
    if threshold is not None:
        m = AGREEMENT_MEASURES[measure or DEFAULT_AGREEMENT_MEASURE]
        ok = isinstance(threshold, numbers.Real) and not isinstance(threshold, bool) and math.isfinite(threshold) \
            and 0 <= threshold <= m.upper
        if not ok:
            interval = f"[0, {m.upper:g}]" if math.isfinite(m.upper) else "[0, inf)"
            raise StippleInputError(f"{where}: agreement_threshold for agreement_measure {m.name!r} must be a number "
                                    f"in {interval} (a case is kept when its value is {m.rule} the threshold), got "
                                    f"{threshold!r}")
    if policy is None:
        return None
    p = ROUND_POLICIES[policy]
    if not p.filters_by_agreement:
        given = [k for k, v in (("agreement_measure", measure), ("agreement_threshold", threshold)) if v is not None]
        if given:
            raise StippleInputError(f"{where}: {' and '.join(given)} only apply to round_policy 'agreement'"
                                    + ("" if policy_explicit else " (this trainer's default policy is "
                                       f"{policy!r})") + "; remove them or set round_policy 'agreement'.")
        return p
    if retrain != "scratch":
        raise StippleInputError(f"{where}: round_policy 'agreement' (the FLARE22 recipe) retrains every round from "
                                f"scratch; retrain {retrain!r} does not go with it.")
    if selection is not None:
        from nnunet_stipple.pseudo_labeling.selection import SELECTION_STRATEGIES
        cls = SELECTION_STRATEGIES.get(selection)
        if cls is not None and not getattr(cls, "whole_case", False):
            whole = ", ".join(sorted(n for n, c in SELECTION_STRATEGIES.items() if getattr(c, "whole_case", False)))
            raise StippleInputError(f"{where}: round_policy 'agreement' trains on whole-case pseudo-labels; selection "
                                    f"{selection!r} keeps a fraction of the voxels. Use one of {whole} (or leave "
                                    f"selection unset: flare22).")
    return p
