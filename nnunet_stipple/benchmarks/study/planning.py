"""Planning a study: its runs (one per label proportion alpha, method and, for the bins study, B), the order they
train in, each run's ``stipple_run.json`` and an estimate of the trainings and the time they take."""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_stipple.benchmarks.study.methods import DEFAULT_BINS, METHODS, method
from nnunet_stipple.benchmarks.study.profiles import Profile
from nnunet_stipple.benchmarks.study.study_folder import RUNS_FOLDER
from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.nnunet_folders import parse_fold
from nnunet_stipple.run_config import RUN_CONFIG_FILE, RunConfig

SKIPPED_SAME = "same as without relabeling"
SKIPPED_NOTHING_UNLABELED = "nothing unlabeled"     # semi-supervised methods at 100 % without imagesUnlabeled


def alpha_str(alpha: float) -> str:
    return f"{float(alpha):g}"


@dataclass
class RunSpec:
    alpha: float
    method: str
    bins: Optional[int]              # B for prior methods, None for the others
    trainer: str
    skipped: Optional[str] = None    # reason when the run is not trained
    same_as: Optional[str] = None    # run id whose results stand for this one (skipped relabel methods)
    added_for: Optional[str] = None  # the run id that needed this run (a counterpart of a skipped one)

    @property
    def name(self) -> str:
        return self.method if self.bins in (None, DEFAULT_BINS) else f"{self.method}_B{self.bins}"

    @property
    def uses_prior(self) -> bool:
        return method(self.method).uses_prior

    @property
    def relabels(self) -> bool:
        return method(self.method).relabels

    @property
    def semi_supervised(self) -> bool:
        return method(self.method).semi_supervised

    @property
    def label(self) -> str:
        """The run's row label in the report: the method's, with its B where that is not the paper's."""
        label = method(self.method).label
        if self.uses_prior and self.bins != DEFAULT_BINS:
            label += f" (B={self.bins})"
        return label

    @property
    def run_id(self) -> str:
        return f"{alpha_str(self.alpha)}/{self.name}"

    @property
    def relative_folder(self) -> str:
        """The run's folder relative to the study folder, ``runs/<alpha>/<name>`` (as the record names it)."""
        return f"{RUNS_FOLDER}/{alpha_str(self.alpha)}/{self.name}"

    def folder(self, study_dir: Path) -> Path:
        return Path(study_dir) / self.relative_folder

    def relabel_counterpart(self) -> Optional["RunSpec"]:
        """The run without relabeling (same alpha and B) whose model is this relabeling run's round 0 and whose
        results stand for it where there is nothing to relabel; None for a run that does not relabel."""
        if not self.relabels:
            return None
        counterpart = method(method(self.method).relabel_counterpart)
        return RunSpec(self.alpha, counterpart.name, self.bins, counterpart.trainer)

    def to_json(self) -> dict:
        d = asdict(self)
        d["run_id"] = self.run_id
        return d

    @classmethod
    def from_json(cls, d: dict) -> "RunSpec":
        return cls(**{k: d.get(k) for k in ("alpha", "method", "bins", "trainer", "skipped", "same_as",
                                            "added_for")})


def check_methods(methods: Iterable[str]) -> List[str]:
    methods = list(dict.fromkeys(methods))
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise StippleInputError(f"Unknown method(s) {bad}; valid methods: {', '.join(METHODS)}.")
    if not methods:
        raise StippleInputError(f"No method given; valid methods: {', '.join(METHODS)}.")
    return methods


def check_alphas(alphas: Iterable[float]) -> List[float]:
    out = []
    for a in alphas:
        try:
            v = float(a)
        except (TypeError, ValueError):
            raise StippleInputError(f"Label proportion {a!r} is not a number; give percentages in (0, 100].")
        if not math.isfinite(v) or not 0 < v <= 100:
            raise StippleInputError(f"Label proportion {a!r} % is outside (0, 100]: give the percentage of the "
                                    f"fold's training cases that keep their labels, e.g. 100 70 50 30 10.")
        out.append(v)
    if not out:
        raise StippleInputError("No label proportion given (--alphas).")
    return sorted(set(out), reverse=True)


def check_bins(bins: Iterable[int]) -> List[int]:
    out = []
    for b in bins:
        if int(b) != b or int(b) < 1:
            raise StippleInputError(f"Number of bins {b!r} must be an integer >= 1.")
        out.append(int(b))
    if not out:
        raise StippleInputError("No number of bins given (--bins).")
    return list(dict.fromkeys(out))


def check_folds(folds: Iterable) -> List[int]:
    out = []
    for f in folds:
        v = parse_fold(f)
        if v == "all":
            raise StippleInputError("Fold 'all' has no validation cases of its own; the study uses the folds of "
                                    "splits_final.json (0, 1, ...).")
        out.append(v)
    if not out:
        raise StippleInputError("No fold given (--folds).")
    return sorted(set(out))


def main_bins(bins: Sequence[int]) -> int:
    """B of the prior methods that do not take part in the bins study: the paper's 5 if asked, else the first."""
    return DEFAULT_BINS if DEFAULT_BINS in bins else bins[0]


def plan_runs(alphas: Sequence[float], methods: Sequence[str], bins: Sequence[int] = (DEFAULT_BINS,),
              has_unlabeled: bool = False, bins_methods: Sequence[str] = ("stipple_norelab",)) -> List[RunSpec]:
    """The runs of a study (one per alpha, method and, for the prior methods of ``bins_methods``, B).

    Relabel methods at alpha = 100 % without ``imagesUnlabeled`` have nothing to relabel: they are recorded as
    skipped, "same as without relabeling", and their counterpart without relabeling (``plain`` /
    ``stipple_norelab``, same B) is added if it was not asked for. Semi-supervised methods (mean teacher, UA-MT)
    have no unlabeled patches there and no counterpart whose results would be theirs: skipped, "nothing
    unlabeled"."""
    alphas, methods, bins = check_alphas(alphas), check_methods(methods), check_bins(bins)
    check_methods(bins_methods)
    specs: Dict[str, RunSpec] = {}

    def add(spec: RunSpec) -> None:
        specs.setdefault(spec.run_id, spec)

    for alpha in alphas:
        for name in sorted(methods, key=lambda m: method(m).table_row):
            if method(name).uses_prior:
                method_bins = bins if name in bins_methods else [main_bins(bins)]
            else:
                method_bins = [None]
            for b in method_bins:
                spec = RunSpec(alpha, name, b, method(name).trainer)
                if spec.relabels and alpha >= 100 and not has_unlabeled:
                    other = spec.relabel_counterpart()
                    spec.skipped, spec.same_as = SKIPPED_SAME, other.run_id
                    if other.run_id not in specs:   # not asked for: needed as what the skipped run equals
                        other.added_for = spec.run_id
                    add(other)
                if spec.semi_supervised and alpha >= 100 and not has_unlabeled:
                    spec.skipped = SKIPPED_NOTHING_UNLABELED
                add(spec)
    return sorted(specs.values(), key=lambda s: table_order(s, main_bins(bins)))


def table_order(s: RunSpec, main_b: int) -> tuple:
    """Sort key of the report's rows: alpha descending; the paper's Table 2 rows (main B) first, then the
    bins-study rows."""
    variant = s.uses_prior and s.bins != main_b
    return -s.alpha, variant, method(s.method).table_row, s.bins or 0


def work_order(specs: Sequence[RunSpec], folds: Sequence[int], alpha_priority: Sequence[float] = ()
               ) -> List[Tuple[RunSpec, int]]:
    """(run, fold) pairs in training order: the profile's priority proportions first (in its order, then the
    others by decreasing alpha); within a proportion fold by fold, each fold's methods in Table 2 order, so a
    relabeling method comes right after the run whose model is its round 0."""
    rank = {float(a): i for i, a in enumerate(alpha_priority)}
    alphas = sorted({s.alpha for s in specs}, key=lambda a: (rank.get(float(a), len(rank)), -a))
    return [(s, f) for a in alphas for f in folds for s in specs if s.alpha == a and not s.skipped]


def run_config_for(spec: RunSpec, profile: Profile, label_seed: int = 0) -> dict:
    """The ``stipple_run.json`` of a run (validated by :class:`RunConfig`). A partial-labels method trains on
    every training case (alpha is there the proportion of cases that keep every organ): proportion 1."""
    from nnunet_stipple.benchmarks.study.partial_study import is_partial_method
    proportion = 1.0 if is_partial_method(spec.method) else spec.alpha / 100.0
    d = {"label_proportion": proportion, "label_seed": label_seed, **profile.schedule}
    if spec.uses_prior:
        d["num_bins"] = spec.bins
    if method(spec.method).round_policy is not None:
        d["round_policy"] = method(spec.method).round_policy
    RunConfig.from_dict(d, f"{spec.run_id}/{RUN_CONFIG_FILE}")
    return d


# ---------------------------------------------------------------------------------------------------------------
# estimates
# ---------------------------------------------------------------------------------------------------------------
def trainings_per_fold(spec: RunSpec, round0_reused: bool = False) -> int:
    """nnU-Net trainings of one fold of a run: 1, or 1 + T rounds for the relabel methods (T when round 0 is
    the model of the counterpart run without relabeling; T of the method's round policy)."""
    if spec.skipped:
        return 0
    if spec.relabels:
        rc = RunConfig(label_proportion=spec.alpha / 100, round_policy=method(spec.method).round_policy)
        return (0 if round0_reused else 1) + rc.effective_rounds
    return 1


def counterpart_in_study(spec: RunSpec, specs: Sequence[RunSpec]) -> bool:
    """Whether the study also trains the counterpart whose model becomes this relabeling run's round 0."""
    counterpart = spec.relabel_counterpart()
    return counterpart is not None and any(s.run_id == counterpart.run_id and not s.skipped for s in specs)


def estimate(specs: Sequence[RunSpec], folds: Sequence[int], profile: Profile, device: str,
             plans_config: Optional[dict] = None, cost: Optional[dict] = None,
             num_training_cases: Optional[int] = None, num_val_cases: Optional[int] = None) -> dict:
    """Number of trainings and a rough wall-time estimate (seconds).

    Seconds per training iteration: measured by the study's ``cost`` subcommand if ``cost.json`` exists
    (same device), else a rough throughput guess from the patch and batch size. Validation iterations count
    as 1/3 of a training iteration; nnU-Net's final validation and pseudo-label predictions as sliding-window
    passes with 8 mirrorings (3D)."""
    trainings = sum(trainings_per_fold(s, counterpart_in_study(s, specs)) for s in specs) * len(folds)
    out = {"runs": sum(1 for s in specs if not s.skipped) * len(folds), "trainings": trainings,
           "skipped_runs": [s.run_id for s in specs if s.skipped]}
    if not plans_config:
        return out
    patch = [int(v) for v in plans_config["patch_size"]]
    batch = int(plans_config["batch_size"])
    measured = None
    if cost and cost.get("settings", {}).get("device") == device:
        measured = cost["summary"]["train_seconds_per_iteration"]
    if measured:
        s_plain, s_stipple = measured["plain"], measured["stipple"]
        source = "measured (cost.json)"
    elif profile.seconds_per_iteration and device == profile.device:
        s_plain = s_stipple = profile.seconds_per_iteration
        source = "the profile's measured figure"
    else:
        ncpu = os.cpu_count() or 2
        # voxel-samples / s, forward + backward + augmentation; CPU: measured with nnU-Net's 3D U-Nets on
        # 2 cores (BTCV patches, see coarse_target_spacing), about 4e4 per core
        throughput = 2e7 if device == "cuda" else 4e4 * ncpu
        s_plain = batch * float(np.prod(patch)) / throughput
        s_stipple = 1.1 * s_plain
        source = f"rough guess ({'GPU' if device == 'cuda' else f'{os.cpu_count()} CPU cores'})"
    # fixed costs seen on a 2-core CPU with the phantom: process start + initialisation, per-epoch
    # bookkeeping (checkpoint, plot), per predicted case (nnU-Net's export workers, resampling)
    startup, per_epoch, per_case = (15.0, 2.0, 30.0) if device != "cuda" else (30.0, 1.0, 3.0)
    median_shape = plans_config.get("median_image_size_in_voxels") or patch
    tiles = 1
    for s, p in zip(median_shape, patch):
        tiles *= max(1, math.ceil((float(s) - p) / (0.5 * p)) + 1)
    mirrors = 2 ** len(patch)
    n_tr = num_training_cases or 16
    n_val = num_val_cases or max(1, n_tr // 4)
    total = 0.0
    for s in specs:
        if s.skipped:
            continue
        it = (s_stipple if s.uses_prior else s_plain) * method(s.method).relative_cost
        per_case_pred = tiles * mirrors * it / batch / 3 + per_case
        epoch = (profile.num_iterations_per_epoch + profile.num_val_iterations_per_epoch / 3) * it + per_epoch
        n_trainings = trainings_per_fold(s, counterpart_in_study(s, specs))
        per_fold = n_trainings * (startup + profile.num_epochs * epoch) + n_val * per_case_pred
        if s.relabels:
            hidden = round(n_tr * (1 - s.alpha / 100))
            per_fold += trainings_per_fold(s, round0_reused=True) * hidden * per_case_pred   # one prediction per round
        total += per_fold * len(folds)
    out.update({"seconds": total, "seconds_per_iteration": {"plain": s_plain, "stipple": s_stipple},
                "seconds_per_iteration_source": source, "patch_size": patch, "batch_size": batch})
    return out


def format_duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
