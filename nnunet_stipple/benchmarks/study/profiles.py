"""Training budgets of the study (profiles): schedule, folds, label proportions, plans, bins, device and NSD
tolerance, and what a study reduces compared with the paper's protocol (the ``paper`` profile)."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Dict, Optional, Sequence, Tuple

from nnunet_stipple.benchmarks.reduced_plans import NetworkReduction
from nnunet_stipple.benchmarks.study.methods import DEFAULT_BINS
from nnunet_stipple.errors import StippleInputError

PAPER_ALPHAS = (100.0, 70.0, 50.0, 30.0, 10.0)
PAPER_FOLDS = (0, 1, 2, 3, 4)
NNUNET_SCHEDULE = {"num_epochs": 1000, "num_iterations_per_epoch": 250, "num_val_iterations_per_epoch": 50}
CPU_SMALL_PLANS = "nnUNetPlans_cpusmall"
CPU_2D_PLANS = "nnUNetPlans_cpu2d"
DEFAULT_NSD_TOLERANCE_MM = 2.0



@dataclass(frozen=True)
class Profile:
    name: str
    num_epochs: int
    num_iterations_per_epoch: int
    num_val_iterations_per_epoch: int
    folds: Tuple[int, ...]
    alphas: Tuple[float, ...]
    plans: str                        # plans identifier used unless -p is given
    coarse_spacing: bool              # plan its own coarser target spacing (nnUNetv2_plan_experiment)
    description: str
    bins: int = DEFAULT_BINS          # B of the prior methods unless --bins is given
    reduction: Optional[NetworkReduction] = None   # own plans derived from nnUNetPlans (smaller network / batch)
    save_every: Optional[int] = None  # epochs between checkpoints (nnU-Net: 50); None: nnU-Net's
    alpha_priority: Tuple[float, ...] = ()   # label proportions trained first, in this order (then the rest)
    device: str = "cuda"              # device of the trainings unless --device is given
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM
    seconds_per_iteration: Optional[float] = None   # measured on the profile's device (time estimates)

    @property
    def schedule(self) -> dict:
        out = {"num_epochs": self.num_epochs, "num_iterations_per_epoch": self.num_iterations_per_epoch,
               "num_val_iterations_per_epoch": self.num_val_iterations_per_epoch}
        if self.save_every is not None:
            out["save_every"] = self.save_every
        return out


PROFILES: Dict[str, Profile] = {
    "paper": Profile("paper", folds=PAPER_FOLDS, alphas=PAPER_ALPHAS, plans="nnUNetPlans", coarse_spacing=False,
                     description="nnU-Net's full schedule (1000 epochs x 250 iterations), 5 folds, "
                                 "alpha = 100/70/50/30/10 %, the dataset's own plans",
                     **NNUNET_SCHEDULE),
    "cpu-small": Profile("cpu-small", num_epochs=5, num_iterations_per_epoch=50, num_val_iterations_per_epoch=5,
                         folds=(0,), alphas=(100.0, 10.0), plans=CPU_SMALL_PLANS, coarse_spacing=True,
                         description="about 1 h on a 2-core CPU: coarse target spacing (own plans, at "
                                     "least 12 mm in-plane and 8 mm between slices), 5 epochs x 50 iterations, "
                                     "fold 0, alpha = 100/10 %, B = 3",
                         # at 12 x 8 mm a thin organ keeps few slices: BTCV's right adrenal gland is 3 slices
                         # deep in the 2 cases of alpha = 10 %, and Algorithm 1 needs B <= every organ's depth
                         bins=3, device="cpu", nsd_tolerance_mm=12.0),
    # The paper's backbone is a 2D U-Net: nnU-Net's 2d configuration with its own plans reduced to what 2 CPU
    # cores train in about an hour (batch 8, 5 stages of 16-256 features; BTCV lowres: 0.3-0.45 s per
    # iteration), every setting of nnU-Net's schedule but the number of epochs and validation iterations.
    "cpu-2d": Profile("cpu-2d", num_epochs=40, num_iterations_per_epoch=250, num_val_iterations_per_epoch=25,
                      folds=(0, 1), alphas=(100.0, 30.0, 10.0), plans=CPU_2D_PLANS, coarse_spacing=False,
                      description="nnU-Net's 2d plans reduced for a 2-core CPU (batch 8, 5 stages, 16-256 "
                                  "features), 40 epochs x 250 iterations, folds 0 and 1, alpha = 100/30/10 %, B = 5",
                      reduction=NetworkReduction(batch_size=8, n_stages=5, base_features=16, max_features=256),
                      save_every=1, alpha_priority=(10.0, 100.0, 30.0), device="cpu", nsd_tolerance_mm=5.0,
                      # 76 s per 250-iteration epoch on 2 quiet cores (Dataset102, 2026-12-02), validation included
                      seconds_per_iteration=0.3),
    # The same comparison on one GPU within a few minutes per training (scripts/gpu_study.sh): nnU-Net's own 2d
    # plans (batch and network as planned), a short schedule, fold 0, alpha = 10 and 100 %.
    "gpu-2d": Profile("gpu-2d", num_epochs=10, num_iterations_per_epoch=50, num_val_iterations_per_epoch=5,
                      folds=(0,), alphas=(100.0, 10.0), plans="nnUNetPlans", coarse_spacing=False,
                      description="nnU-Net's own 2d plans on one GPU, 10 epochs x 50 iterations, fold 0, "
                                  "alpha = 100/10 %, B = 5",
                      save_every=1, alpha_priority=(10.0, 100.0), device="cuda", nsd_tolerance_mm=5.0),
}
# What the 'paper' profile itself changes compared with the paper (it is the paper's protocol on nnU-Net).
PAPER_PROFILE_NOTE = ("The paper trains a 2D U-Net (Adam) on TCIA pancreas; here every method uses nnU-Net "
                      "(the configuration given, its own preprocessing, augmentation and SGD schedule). Label "
                      "subsets: nested, seeded (label_seed 0), patient level; relabeling rounds: 1 below 70 %, "
                      "2 at >= 70 %.")



def check_profile(profile: str) -> Profile:
    if profile not in PROFILES:
        raise StippleInputError(f"Unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}.")
    return PROFILES[profile]


def scaled_profile(profile: Profile, schedule_scale: float) -> Profile:
    """The profile with ``schedule_scale`` times its epochs (a whole number of epochs >= 1)."""
    try:
        epochs = float(schedule_scale) * profile.num_epochs
    except (TypeError, ValueError):
        epochs = float("nan")
    if not math.isfinite(epochs) or epochs < 1 or epochs != int(epochs):
        raise StippleInputError(f"Schedule scale {schedule_scale!r} must give a whole number of epochs >= 1 "
                                f"({profile.name}: {profile.num_epochs} epochs).")
    return profile if schedule_scale == 1 else replace(profile, num_epochs=int(epochs))


def check_nsd_tolerance(tolerance_mm) -> float:
    if isinstance(tolerance_mm, bool) or not isinstance(tolerance_mm, (int, float)) or not tolerance_mm >= 0:
        raise StippleInputError(f"NSD tolerance must be a number >= 0 (mm), got {tolerance_mm!r}.")
    return float(tolerance_mm)


def study_nsd_tolerance(study: dict) -> float:
    """The NSD tolerance a study was run with (study.json), else its profile's."""
    if study.get("nsd_tolerance_mm") is not None:
        return float(study["nsd_tolerance_mm"])
    prof = PROFILES.get(study.get("profile"))
    return prof.nsd_tolerance_mm if prof else DEFAULT_NSD_TOLERANCE_MM


def reductions(profile: Profile, folds: Sequence[int], alphas: Sequence[float], plans: str,
               planning: Optional[dict] = None, plans_info: Optional[dict] = None) -> dict:
    """What this study reduces compared with the paper protocol (the 'paper' profile)."""
    paper = PROFILES["paper"]
    red = {}
    nnunet_defaults = {**paper.schedule, "save_every": 50}
    for k, v in profile.schedule.items():
        if v != nnunet_defaults[k]:
            red[k] = {"paper": nnunet_defaults[k], "used": v}
    if list(folds) != list(paper.folds):
        red["folds"] = {"paper": list(paper.folds), "used": list(folds)}
    if sorted(alphas) != sorted(paper.alphas):
        red["alphas"] = {"paper": list(paper.alphas), "used": list(alphas)}
    if plans != paper.plans:
        red["plans"] = {"paper": paper.plans, "used": plans}
    if planning and planning.get("target_spacing") is not None:
        red["target_spacing_mm"] = {"paper": planning.get("dataset_fullres_spacing"),
                                    "used": planning["target_spacing"], "axis_order": "array (z, y, x)"}
    if planning and planning.get("changed"):
        red["network"] = {"derived_from": planning.get("source_plans"), "changed": planning["changed"]}
    if plans_info:
        red.update(plans_info)
    return red
