"""The label-efficiency study of the STIPPLE paper (section 4: Table 2 ablation, Figure 6 bins study) with nnU-Net.

One study lives in one folder ``DIR``:

* ``DIR/study.json``: dataset, configuration, plans, profile (and what it reduces compared with the paper's
  protocol), folds, label proportions, methods, bins, device, machine, versions, the planned runs;
* ``DIR/runs/<alpha>/<method>[_B<b>]/``: one ``nnUNet_results`` root per run (so runs never collide), holding
  ``<Dataset>/<Trainer>__<plans>__<configuration>/stipple_run.json`` (label proportion, seed, bins, schedule),
  nnU-Net's usual model folder, ``train_fold<f>.log`` (the training's stdout/stderr), ``run.json`` (the run's
  settings, wall time per fold and attempt, machine) and ``nsd_fold<f>_tol<t>mm.json`` (cached NSD per case);
* ``DIR/report/``: ``results.json``, ``results.csv``, ``table.md`` and PNG plots (see :func:`report_study`);
* ``DIR/cost.json``: the cost benchmark of :mod:`nnunet_stipple.benchmarks.cost` (``cost`` subcommand).

Methods (rows of the paper's Table 2) and the trainers that run them:

==================  ==================================  ===========================================
method              trainer                             paper row
==================  ==================================  ===========================================
``plain``           ``nnUNetTrainer_LabelProportion``   Baseline
``stipple_norelab`` ``STIPPLETrainer``                  STIPPLE w/o relab
``plain_relabel``   ``nnUNetTrainer_PseudoLabel``       Baseline w relab
``stipple``         ``STIPPLETrainer_PseudoLabel``      STIPPLE
==================  ==================================  ===========================================

A run is finished when nnU-Net's ``fold_<f>/validation/summary.json`` exists; finished runs are skipped, an
interrupted one resumes through ``nnUNetv2_train --c``. Rerunning the same command continues a study.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_stipple.atomic import write_json_atomic
from nnunet_stipple.benchmarks.provenance import git_commit, machine, now, versions
from nnunet_stipple.benchmarks.record import export_files, export_report, export_run, import_record
from nnunet_stipple.benchmarks.reduced_plans import NetworkReduction, ensure_reduced_plans
from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.run_config import RUN_CONFIG_FILE, RunConfig

STUDY_FILE = "study.json"
RUN_FILE = "run.json"
RUNS_FOLDER = "runs"
REPORT_FOLDER = "report"
COST_FILE = "cost.json"



@dataclass(frozen=True)
class Method:
    """One method of the study: a row of the paper's Table 2 and the nnU-Net trainer that runs it."""
    name: str                  # on the command line, in run ids and run folders
    trainer: str               # nnU-Net trainer class (of nnunet_stipple.trainers or of nnU-Net)
    label: str                 # row label in the report's tables and plots
    table_row: int             # position in the paper's Table 2: the report's row order and the training order
    uses_prior: bool           # trains with the spatial prior: runs per bins B, positioning quality measured
    # a relabeling method: the method without relabeling whose finished model is its round 0 and whose results
    # stand for it where there is nothing to relabel; None for the others
    relabel_counterpart: Optional[str] = None

    @property
    def relabels(self) -> bool:
        return self.relabel_counterpart is not None


# The methods, in the order the command line and study.json list them. A new method is one entry here (and its
# trainer); everything else about it derives from the entry.
METHOD_TABLE: Tuple[Method, ...] = (
    Method("plain", "nnUNetTrainer_LabelProportion", "Baseline (plain)", table_row=0, uses_prior=False),
    Method("plain_relabel", "nnUNetTrainer_PseudoLabel", "Baseline w relab", table_row=2, uses_prior=False,
           relabel_counterpart="plain"),
    Method("stipple_norelab", "STIPPLETrainer", "STIPPLE w/o relab", table_row=1, uses_prior=True),
    Method("stipple", "STIPPLETrainer_PseudoLabel", "STIPPLE", table_row=3, uses_prior=True,
           relabel_counterpart="stipple_norelab"),
)
_METHOD_BY_NAME: Dict[str, Method] = {m.name: m for m in METHOD_TABLE}
METHODS: Dict[str, str] = {m.name: m.trainer for m in METHOD_TABLE}          # name -> trainer
METHOD_ORDER = tuple(m.name for m in sorted(METHOD_TABLE, key=lambda m: m.table_row))   # the paper's Table 2


def method(name: str) -> Method:
    """The entry of :data:`METHOD_TABLE` named ``name`` (KeyError if none)."""
    return _METHOD_BY_NAME[name]


DEFAULT_BINS = 5                      # the paper's B for every proportion (and STIPPLETrainer's default)
PAPER_ALPHAS = (100.0, 70.0, 50.0, 30.0, 10.0)
PAPER_FOLDS = (0, 1, 2, 3, 4)
NNUNET_SCHEDULE = {"num_epochs": 1000, "num_iterations_per_epoch": 250, "num_val_iterations_per_epoch": 50}
SKIPPED_SAME = "same as without relabeling"
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


# ---------------------------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------------------------
def alpha_str(alpha: float) -> str:
    return f"{float(alpha):g}"


def _num(x) -> Optional[float]:
    """A float for JSON (NaN/None -> None)."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _nan(x) -> float:
    return float("nan") if x is None else float(x)


def console_script(name: str) -> str:
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    return found or name


def ext_trainer_folder() -> Path:
    try:
        from nnunet_stipple.paths import ext_trainer_dir
        return ext_trainer_dir()
    except ImportError:   # pragma: no cover - older layout
        import nnunet_stipple.trainers
        return Path(nnunet_stipple.trainers.__file__).resolve().parent / "nnunet_ext"


def resolve_dataset(dataset) -> str:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        return maybe_convert_to_dataset_name(str(dataset))
    except (RuntimeError, ValueError) as e:
        raise StippleInputError(f"Dataset {dataset} not found under nnUNet_raw / nnUNet_preprocessed ({e}). Check "
                                f"the id and the nnU-Net folder variables.") from e


def dataset_id(dataset_name: str) -> int:
    return int(dataset_name[len("Dataset"):len("Dataset") + 3])


def raw_dataset_folder(dataset_name: str) -> Optional[Path]:
    raw = os.environ.get("nnUNet_raw")
    return Path(raw) / dataset_name if raw else None


def has_unlabeled_images(dataset_name: str) -> bool:
    """True if ``nnUNet_raw/<Dataset>/imagesUnlabeled/`` exists and holds files."""
    folder = raw_dataset_folder(dataset_name)
    if folder is None:
        return False
    folder = folder / "imagesUnlabeled"
    return folder.is_dir() and any(folder.iterdir())


# ---------------------------------------------------------------------------------------------------------------
# planning the runs
# ---------------------------------------------------------------------------------------------------------------
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
    def run_id(self) -> str:
        return f"{alpha_str(self.alpha)}/{self.name}"

    def folder(self, study_dir: Path) -> Path:
        return Path(study_dir) / RUNS_FOLDER / alpha_str(self.alpha) / self.name

    def to_json(self) -> dict:
        d = asdict(self)
        d["run_id"] = self.run_id
        return d

    @classmethod
    def from_json(cls, d: dict) -> "RunSpec":
        return cls(**{k: d.get(k) for k in ("alpha", "method", "bins", "trainer", "skipped", "same_as",
                                            "added_for")})


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


def check_methods(methods: Iterable[str]) -> List[str]:
    methods = list(dict.fromkeys(methods))
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise StippleInputError(f"Unknown method(s) {bad}; valid methods: {', '.join(METHODS)}.")
    if not methods:
        raise StippleInputError(f"No method given; valid methods: {', '.join(METHODS)}.")
    return methods


def check_profile(profile: str) -> Profile:
    if profile not in PROFILES:
        raise StippleInputError(f"Unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}.")
    return PROFILES[profile]


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
        try:
            v = int(f)
        except (TypeError, ValueError):
            raise StippleInputError(f"Fold {f!r} is not an integer (the study uses the folds of splits_final.json).")
        if v < 0:
            raise StippleInputError(f"Fold {f!r} must be >= 0.")
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
    ``stipple_norelab``, same B) is added if it was not asked for."""
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
                if method(name).relabels and alpha >= 100 and not has_unlabeled:
                    counterpart = method(method(name).relabel_counterpart)
                    other = RunSpec(alpha, counterpart.name, b, counterpart.trainer)
                    spec.skipped, spec.same_as = SKIPPED_SAME, other.run_id
                    if other.run_id not in specs:   # not asked for: needed as what the skipped run equals
                        other.added_for = spec.run_id
                    add(other)
                add(spec)
    return sorted(specs.values(), key=lambda s: _spec_order(s, main_bins(bins)))


def _spec_order(s: RunSpec, main_b: int) -> tuple:
    """alpha descending; the paper's Table 2 rows (main B) first, then the bins-study rows."""
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
    """The ``stipple_run.json`` of a run (validated by :class:`RunConfig`)."""
    d = {"label_proportion": spec.alpha / 100.0, "label_seed": label_seed, **profile.schedule}
    if spec.uses_prior:
        d["num_bins"] = spec.bins
    RunConfig.from_dict(d, f"{spec.run_id}/{RUN_CONFIG_FILE}")
    return d


def model_folder(run_root: Path, dataset_name: str, trainer: str, plans: str, configuration: str) -> Path:
    return Path(run_root) / dataset_name / f"{trainer}__{plans}__{configuration}"


def fold_finished(model_dir: Path, fold: int) -> bool:
    return (Path(model_dir) / f"fold_{fold}" / "validation" / "summary.json").is_file()


def train_command(dataset_name: str, configuration: str, fold: int, trainer: str, plans: str,
                  device: str) -> List[str]:
    return [console_script("nnUNetv2_train"), dataset_name, configuration, str(fold), "-tr", trainer, "-p", plans,
            "--c", "-device", device]


def train_env(run_root: Path, base: Optional[dict] = None) -> dict:
    from nnunet_stipple.paths import ext_trainer_env_value
    env = dict(os.environ if base is None else base)
    env["nnUNet_results"] = str(Path(run_root).resolve())
    try:
        env["nnUNet_extTrainer"] = ext_trainer_env_value(env.get("nnUNet_extTrainer"))
    except ImportError:  # pragma: no cover
        env["nnUNet_extTrainer"] = str(ext_trainer_folder())
    return env


# ---------------------------------------------------------------------------------------------------------------
# cpu-small: own coarse plans
# ---------------------------------------------------------------------------------------------------------------
def coarse_target_spacing(fullres_spacing: Sequence[float], inplane_factor: float = 2.0,
                          min_inplane_mm: float = 12.0, min_axial_mm: float = 8.0) -> List[float]:
    """Coarse target spacing (array axis order, as ``-overwrite_target_spacing``): ``inplane_factor`` x the
    in-plane spacing but at least ``min_inplane_mm``, and the dataset's spacing but at least ``min_axial_mm``
    along the out-of-plane axis (the axis of the largest spacing; the first on ties, z for nnU-Net's
    SimpleITK reader).

    Why so coarse: nnU-Net needs a few hundred iterations before plain training segments anything (75
    iterations at 8 x 6 mm left every BTCV organ at Dice 0), and on a 2-core CPU an iteration costs about
    1 s per 4e4 voxels of a batch-2 patch (BTCV 3d_fullres 80x160x128: 54 s; 48x80x48 at 8 x 6 mm: 5 s;
    32x56x32 at 12 x 8 mm: about 1.5 s). The floors make the abdomen fit one small patch whatever the
    dataset's resolution. Thin structures (adrenal glands, esophagus, portal vein) are a voxel or two wide
    at this spacing, so their Dice says little. z stays at 8 mm: the prior needs B slices of the
    shallowest organ box, and at 8 mm BTCV's right adrenal gland keeps only 3 slices in the two cases of
    alpha = 10 % (hence the profile's B = 3)."""
    s = [float(v) for v in fullres_spacing]
    z = int(np.argmax(s))
    return [round(max(min_axial_mm, v) if i == z else max(min_inplane_mm, inplane_factor * v), 4)
            for i, v in enumerate(s)]


def dataset_fullres_spacing(dataset_name: str) -> List[float]:
    """The dataset's 3d_fullres target spacing in array axis order (nnUNetPlans.json if planned, else what
    nnU-Net's planner would choose from the fingerprint)."""
    from nnunet_stipple.priors.build import nnunet_preprocessed_root
    base = nnunet_preprocessed_root() / dataset_name
    plans_file = base / "nnUNetPlans.json"
    if plans_file.is_file():
        plans = json.loads(plans_file.read_text())
        if "3d_fullres" in plans["configurations"] and "spacing" in plans["configurations"]["3d_fullres"]:
            sp = plans["configurations"]["3d_fullres"]["spacing"]
            back = plans["transpose_backward"]
            return [float(sp[back[i]]) for i in range(3)]
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    return [float(v) for v in ExperimentPlanner(dataset_name).determine_fullres_target_spacing()]


def _run_logged(cmd: List[str], log_file: Path, log: Callable[[str], None], env: Optional[dict] = None) -> None:
    log(f"$ {' '.join(cmd)}   (log: {log_file})")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as f:
        f.write(f"\n# {now()} $ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        raise StippleInputError(f"`{' '.join(cmd)}` failed (exit {rc}); see {log_file}.")


def ensure_cpu_small_plans(dataset_name: str, configuration: str, plans: str, study_dir: Path,
                           log: Callable[[str], None] = print) -> dict:
    """Plan (``nnUNetv2_plan_experiment -overwrite_target_spacing ... -overwrite_plans_name``) and preprocess
    (``nnUNetv2_preprocess -plans_name ... -c CONFIG -np 2``) the coarse plans unless already done.
    Returns what was used (spacings, commands)."""
    from nnunet_stipple.priors.build import nnunet_preprocessed_root, open_preprocessed
    base = nnunet_preprocessed_root() / dataset_name
    plans_file = base / f"{plans}.json"
    info: dict = {"plans": plans, "commands": []}
    did = dataset_id(dataset_name)
    log_file = Path(study_dir) / "planning.log"
    if not plans_file.is_file():
        if plans == "nnUNetPlans":
            raise StippleInputError(f"{plans_file} does not exist, and the cpu-small profile does not write its "
                                    f"coarse plans under nnU-Net's default name: leave -p out (it uses "
                                    f"{CPU_SMALL_PLANS}) or run nnUNetv2_plan_and_preprocess -d {did} first.")
        if not (base / "dataset_fingerprint.json").is_file():
            raw = raw_dataset_folder(dataset_name)
            if raw is None or not raw.is_dir():
                raise StippleInputError(f"{dataset_name} has no fingerprint in {base} and no raw data under "
                                        f"nnUNet_raw; the cpu-small profile plans its own coarse spacing from the "
                                        f"raw dataset. Set nnUNet_raw or run nnUNetv2_extract_fingerprint -d {did}.")
            cmd = [console_script("nnUNetv2_extract_fingerprint"), "-d", str(did), "-np", "2"]
            _run_logged(cmd, log_file, log)
            info["commands"].append(cmd)
        fullres = dataset_fullres_spacing(dataset_name)
        coarse = coarse_target_spacing(fullres)
        cmd = [console_script("nnUNetv2_plan_experiment"), "-d", str(did), "-overwrite_target_spacing",
               *[f"{v:g}" for v in coarse], "-overwrite_plans_name", plans]
        _run_logged(cmd, log_file, log)
        info["commands"].append(cmd)
    try:
        open_preprocessed(dataset_name, configuration, plans)
    except StippleInputError:
        p = json.loads(plans_file.read_text())
        if configuration not in p["configurations"]:
            raise StippleInputError(f"Configuration '{configuration}' is not in {plans_file} (available: "
                                    f"{', '.join(p['configurations'])}); use one of these with --profile cpu-small.")
        cmd = [console_script("nnUNetv2_preprocess"), "-d", str(did), "-plans_name", plans, "-c", configuration,
               "-np", "2"]
        _run_logged(cmd, log_file, log)
        info["commands"].append(cmd)
    ds = open_preprocessed(dataset_name, configuration, plans)
    p = ds.plans
    back = p["transpose_backward"]
    sp = ds.configuration_manager.spacing
    info["target_spacing"] = [float(sp[back[i]]) for i in range(len(sp))] if len(sp) == 3 else list(map(float, sp))
    try:
        info["dataset_fullres_spacing"] = dataset_fullres_spacing(dataset_name)
    except Exception:  # noqa: BLE001 - informative only
        info["dataset_fullres_spacing"] = None
    return info


def ensure_profile_plans(dataset_name: str, configuration: str, plans: str, reduction: NetworkReduction,
                         study_dir: Path, log: Callable[[str], None] = print) -> dict:
    """The reduced plans of a profile (:mod:`nnunet_stipple.benchmarks.reduced_plans`), after nnU-Net's own
    planning and preprocessing of ``configuration`` (``nnUNetv2_plan_and_preprocess -c CONFIG``) if missing."""
    from nnunet_stipple.priors.build import nnunet_preprocessed_root
    if plans == "nnUNetPlans":
        raise StippleInputError(f"The profile derives its own plans from nnUNetPlans and does not overwrite them: "
                                f"leave -p out (it uses {CPU_2D_PLANS}) or give another plans name.")
    did = dataset_id(dataset_name)
    commands = []

    def plan_and_preprocess() -> None:
        cmd = [console_script("nnUNetv2_plan_and_preprocess"), "-d", str(did), "-c", configuration, "-np", "2"]
        _run_logged(cmd, Path(study_dir) / "planning.log", log)
        commands.append(cmd)

    info = ensure_reduced_plans(dataset_name, configuration, plans, reduction, nnunet_preprocessed_root(),
                                plan_and_preprocess, log)
    info["commands"] = commands
    return info


# ---------------------------------------------------------------------------------------------------------------
# study.json
# ---------------------------------------------------------------------------------------------------------------
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


def _plans_summary(dataset_name: str, configuration: str, plans: str) -> dict:
    """Patch size / batch size / spacing of the used plans next to the dataset's own (nnUNetPlans)."""
    from nnunet_stipple.priors.build import nnunet_preprocessed_root
    base = nnunet_preprocessed_root() / dataset_name
    out = {}
    for key, ident in (("used", plans), ("paper", "nnUNetPlans")):
        f = base / f"{ident}.json"
        if not f.is_file():
            continue
        c = json.loads(f.read_text())["configurations"].get(configuration)
        if c:
            out[key] = {"patch_size": c.get("patch_size"), "batch_size": c.get("batch_size"),
                        "spacing": c.get("spacing"),
                        "median_image_size_in_voxels": c.get("median_image_size_in_voxels")}
    if "used" in out and "paper" in out and out["used"] != out["paper"]:
        return {"network_input": out}
    return {}


def load_study(study_dir: Path) -> Optional[dict]:
    f = Path(study_dir) / STUDY_FILE
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise StippleInputError(f"{f} is not valid JSON ({e}); repair or remove it.") from e


def merge_studies(existing: Optional[dict], recorded: dict) -> dict:
    """study.json of a study folder extended by a record's (its runs, folds, alphas, methods, bins)."""
    if existing is None:
        return json.loads(json.dumps(recorded))
    out = dict(existing)
    out["folds"] = sorted(set(existing.get("folds", [])) | set(recorded.get("folds", [])))
    out["alphas"] = sorted(set(existing.get("alphas", [])) | set(recorded.get("alphas", [])), reverse=True)
    for key in ("methods", "bins", "bins_methods"):
        out[key] = list(dict.fromkeys(list(existing.get(key, [])) + list(recorded.get(key, []))))
    runs = {k: dict(v) for k, v in existing.get("runs", {}).items()}
    for run_id, entry in recorded.get("runs", {}).items():
        mine = runs.setdefault(run_id, dict(entry))
        mine["folds"] = sorted(set(mine.get("folds", [])) | set(entry.get("folds", [])))
    out["runs"] = runs
    return out


def check_same_study(existing: dict, dataset_name: str, configuration: str, plans: str, profile: str,
                     study_dir: Path, schedule_scale: Optional[float] = None) -> None:
    mine = {"dataset": dataset_name, "configuration": configuration, "plans": plans, "profile": profile}
    if schedule_scale is not None:
        mine["schedule_scale"] = schedule_scale
    have = {"schedule_scale": 1, **existing}     # study folders from before the option ran at scale 1
    diff = {k: (have.get(k), v) for k, v in mine.items() if have.get(k) != v}
    if diff:
        what = "; ".join(f"{k}: study has {a!r}, asked {b!r}" for k, (a, b) in diff.items())
        raise StippleInputError(f"{Path(study_dir) / STUDY_FILE} is a study folder from another configuration "
                                f"({what}). Use another --study-dir, or the study's own settings to extend it "
                                f"(more alphas, methods, bins or folds are fine).")


# ---------------------------------------------------------------------------------------------------------------
# estimates
# ---------------------------------------------------------------------------------------------------------------
def trainings_per_fold(spec: RunSpec, round0_reused: bool = False) -> int:
    """nnU-Net trainings of one fold of a run: 1, or 1 + T rounds for the relabel methods (T when round 0 is
    the model of the counterpart run without relabeling)."""
    if spec.skipped:
        return 0
    if spec.relabels:
        return (0 if round0_reused else 1) + RunConfig(label_proportion=spec.alpha / 100).effective_rounds
    return 1


def _round0_reused(spec: RunSpec, specs: Sequence[RunSpec]) -> bool:
    """Whether the study also trains the counterpart whose model becomes this relabeling run's round 0."""
    if not spec.relabels:
        return False
    other = RunSpec(spec.alpha, method(spec.method).relabel_counterpart, spec.bins, "").run_id
    return any(s.run_id == other and not s.skipped for s in specs)


def estimate(specs: Sequence[RunSpec], folds: Sequence[int], profile: Profile, device: str,
             plans_config: Optional[dict] = None, cost: Optional[dict] = None,
             num_training_cases: Optional[int] = None, num_val_cases: Optional[int] = None) -> dict:
    """Number of trainings and a rough wall-time estimate (seconds).

    Seconds per training iteration: measured by the study's ``cost`` subcommand if ``cost.json`` exists
    (same device), else a rough throughput guess from the patch and batch size. Validation iterations count
    as 1/3 of a training iteration; nnU-Net's final validation and pseudo-label predictions as sliding-window
    passes with 8 mirrorings (3D)."""
    trainings = sum(trainings_per_fold(s, _round0_reused(s, specs)) for s in specs) * len(folds)
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
        it = s_stipple if s.uses_prior else s_plain
        per_case_pred = tiles * mirrors * it / batch / 3 + per_case
        epoch = (profile.num_iterations_per_epoch + profile.num_val_iterations_per_epoch / 3) * it + per_epoch
        n_trainings = trainings_per_fold(s, _round0_reused(s, specs))
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


# ---------------------------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------------------------
Runner = Callable[[List[str], dict, Path], int]


def subprocess_runner(cmd: List[str], env: dict, log_file: Path) -> int:
    with open(log_file, "a") as f:
        f.write(f"\n# {now()} $ {' '.join(cmd)}\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode


def _read_run_json(folder: Path) -> dict:
    f = folder / RUN_FILE
    if f.is_file():
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError:
            pass
    return {}


def _last_error_line(log_file: Path) -> Optional[str]:
    """The last line of a training log that looks like a Python exception (for run.json and the console)."""
    try:
        lines = Path(log_file).read_text(errors="replace").splitlines()[-400:]
    except OSError:
        return None
    for line in reversed(lines):
        head = line.split(":", 1)[0].strip()
        if head and " " not in head and (head.endswith(("Error", "Exception", "Interrupt")) or head == "Killed"):
            return line.strip()[:500]
    return None


def round0_model_folder(spec: RunSpec, fold: int, study_dir: Path, dataset_name: str, plans: str,
                        configuration: str) -> Optional[Path]:
    """For a relabeling run whose loop has not started: the model folder of its counterpart without relabeling
    when that fold's model exists here (its round 0: same data, seed and settings), else None."""
    if not spec.relabels:
        return None
    mdir = model_folder(spec.folder(study_dir), dataset_name, spec.trainer, plans, configuration)
    if (mdir / f"fold_{fold}" / "pseudo_labeling" / "state.json").is_file():
        return None
    counterpart = method(method(spec.method).relabel_counterpart)
    other = RunSpec(spec.alpha, counterpart.name, spec.bins, counterpart.trainer)
    odir = model_folder(other.folder(study_dir), dataset_name, other.trainer, plans, configuration)
    return odir if (odir / f"fold_{fold}" / "checkpoint_final.pth").is_file() and fold_finished(odir, fold) else None


def run_one(spec: RunSpec, fold: int, study_dir: Path, dataset_name: str, configuration: str, plans: str,
            profile: Profile, device: str, runner: Runner = subprocess_runner,
            log: Callable[[str], None] = print) -> str:
    """Train one (run, fold) unless finished. Returns 'finished', 'done' (trained now) or 'failed'."""
    root = spec.folder(study_dir)
    mdir = model_folder(root, dataset_name, spec.trainer, plans, configuration)
    run_file = root / RUN_FILE
    meta = _read_run_json(root)
    meta.update({**spec.to_json(), "dataset": dataset_name, "configuration": configuration, "plans": plans,
                 "profile": profile.name, "model_folder": str(mdir.relative_to(root))})
    meta.setdefault("folds", {})
    fmeta = meta["folds"].setdefault(str(fold), {"attempts": [], "wall_seconds": 0.0})
    if fold_finished(mdir, fold):
        fmeta["status"] = "finished"
        write_json_atomic(run_file, meta)
        return "finished"
    rc_dict = run_config_for(spec, profile)
    round0 = round0_model_folder(spec, fold, study_dir, dataset_name, plans, configuration)
    if round0 is not None:
        rc_dict["round0_model_folder"] = os.path.relpath(round0, mdir)
        log(f"[{spec.run_id} fold {fold}] round 0 = the finished {method(spec.method).relabel_counterpart} model "
            f"({round0}), not trained again")
    rc_file = mdir / RUN_CONFIG_FILE
    if not rc_file.is_file() or json.loads(rc_file.read_text()) != rc_dict:
        write_json_atomic(rc_file, rc_dict)
    cmd = train_command(dataset_name, configuration, fold, spec.trainer, plans, device)
    env = train_env(root)
    log_file = root / f"train_fold{fold}.log"
    attempt = {"started": now(), "command": cmd, "log": log_file.name, "git_commit": git_commit(),
               "versions": versions(), "machine": machine(device)}
    fmeta["status"] = "running"
    fmeta["attempts"].append(attempt)
    write_json_atomic(run_file, meta)
    log(f"[{spec.run_id} fold {fold}] {' '.join(cmd)}  (nnUNet_results={root}; log {log_file})")
    t0 = time.perf_counter()
    try:
        rc = runner(cmd, env, log_file)
    except KeyboardInterrupt:
        attempt.update({"ended": now(), "wall_seconds": time.perf_counter() - t0, "returncode": "interrupted"})
        fmeta["wall_seconds"] += attempt["wall_seconds"]
        fmeta["status"] = "interrupted"
        write_json_atomic(run_file, meta)
        raise
    wall = time.perf_counter() - t0
    attempt.update({"ended": now(), "wall_seconds": wall, "returncode": rc})
    fmeta["wall_seconds"] += wall
    ok = rc == 0 and fold_finished(mdir, fold)
    fmeta["status"] = "finished" if ok else "failed"
    if not ok:
        attempt["error"] = _last_error_line(log_file)
    write_json_atomic(run_file, meta)
    log(f"[{spec.run_id} fold {fold}] "
        + ("finished" if ok else f"FAILED (exit {rc}): {attempt['error'] or '(no error line)'}; see {log_file}")
        + f" after {format_duration(wall)}")
    return "done" if ok else "failed"


def run_study(dataset, configuration: str, study_dir, profile: str = "cpu-small",
              folds: Optional[Sequence[int]] = None, alphas: Optional[Sequence[float]] = None,
              methods: Optional[Sequence[str]] = None, bins: Optional[Sequence[int]] = None,
              bins_methods: Sequence[str] = ("stipple_norelab",), plans: Optional[str] = None,
              device: Optional[str] = None, dry_run: bool = False, report: bool = True,
              nsd_tolerance_mm: Optional[float] = None, runner: Runner = subprocess_runner,
              schedule_scale: float = 1, record_dir=None, log: Callable[[str], None] = print) -> dict:
    """Plan, (for cpu-small) plan/preprocess the coarse plans, train every unfinished run, then report.

    With ``record_dir`` (e.g. docs/results/<study>): the record's runs are imported first (finished there =
    finished here, see :mod:`nnunet_stipple.benchmarks.record`), and every run's record files are exported to
    it as soon as the run finishes (with its positioning rows), the report at the end.

    ``schedule_scale`` multiplies the profile's number of epochs (e.g. 2: the check that a longer schedule
    changes little); a study folder holds one schedule. Returns a dict with the planned runs, the estimate
    and the status of each (run, fold)."""
    prof = scaled_profile(check_profile(profile), schedule_scale)
    methods = check_methods(methods if methods is not None else list(METHODS))
    alphas = check_alphas(alphas if alphas is not None else prof.alphas)
    bins = check_bins(bins if bins is not None else [prof.bins])
    folds = check_folds(folds if folds is not None else prof.folds)
    bins_methods = check_methods(bins_methods)
    device = device or prof.device
    if device not in ("cpu", "cuda"):
        raise StippleInputError(f"Unknown device {device!r}; use cpu or cuda.")
    nsd_tolerance_mm = check_nsd_tolerance(prof.nsd_tolerance_mm if nsd_tolerance_mm is None else nsd_tolerance_mm)
    study_dir = Path(study_dir)
    plans = plans or prof.plans
    dataset_name = resolve_dataset(dataset)
    recorded = load_study(Path(record_dir)) if record_dir is not None else None
    if recorded is not None:
        check_same_study(recorded, dataset_name, configuration, plans, prof.name, Path(record_dir), schedule_scale)
    existing = load_study(study_dir)
    if existing is not None:
        check_same_study(existing, dataset_name, configuration, plans, prof.name, study_dir, schedule_scale)
    if recorded is not None and not dry_run:
        import_record(Path(record_dir), study_dir, log)
        existing = merge_studies(existing, recorded)

    from nnunet_stipple.priors.build import open_preprocessed, training_cases_of_fold
    planning = (existing or {}).get("planning")
    ds = None
    if prof.reduction is not None:
        if dry_run:
            try:
                ds = open_preprocessed(dataset_name, configuration, plans)
            except StippleInputError:
                log(f"(dry run) would derive {plans} from nnUNetPlans ({prof.reduction}) and preprocess "
                    f"{configuration} if needed")
        else:
            planning = ensure_profile_plans(dataset_name, configuration, plans, prof.reduction, study_dir, log)
            ds = open_preprocessed(dataset_name, configuration, plans)
    elif prof.coarse_spacing:
        if dry_run:
            try:
                ds = open_preprocessed(dataset_name, configuration, plans)
            except StippleInputError:
                log(f"(dry run) would plan {plans} with a coarse target spacing and preprocess {configuration}")
        else:
            previous = planning or {}
            planning = ensure_cpu_small_plans(dataset_name, configuration, plans, study_dir, log)
            if not planning["commands"] and previous.get("commands"):   # planned by an earlier invocation
                planning["commands"] = previous["commands"]
            ds = open_preprocessed(dataset_name, configuration, plans)
    else:
        ds = open_preprocessed(dataset_name, configuration, plans)

    unlabeled = has_unlabeled_images(dataset_name)
    specs = plan_runs(alphas, methods, bins, unlabeled, bins_methods)
    n_tr = n_val = None
    if ds is not None:
        try:
            tr, val = training_cases_of_fold(ds, folds[0])
            n_tr, n_val = len(tr), len(val)
        except StippleInputError as e:
            raise StippleInputError(f"{e} (asked --folds {' '.join(map(str, folds))})") from e
        for f in folds[1:]:
            training_cases_of_fold(ds, f)
    plans_config = ds.plans["configurations"][configuration] if ds is not None else None
    cost = json.loads((study_dir / COST_FILE).read_text()) if (study_dir / COST_FILE).is_file() else None
    est = estimate(specs, folds, prof, device, plans_config, cost, n_tr, n_val)

    # study.json (first run creates it; later runs extend alphas / methods / bins / folds)
    study = existing or {"dataset": dataset_name, "configuration": configuration, "plans": plans,
                         "profile": prof.name, "created": now(), "git_commit": git_commit(),
                         "versions": versions(), "machine": machine(device),
                         "nnUNet_preprocessed": os.environ.get("nnUNet_preprocessed"),
                         "nnUNet_raw": os.environ.get("nnUNet_raw")}
    study["profile_description"] = prof.description
    study["paper_protocol_note"] = PAPER_PROFILE_NOTE
    study["schedule"] = prof.schedule
    study["schedule_scale"] = schedule_scale
    study["nsd_tolerance_mm"] = nsd_tolerance_mm
    study["label_seed"] = 0
    study["folds"] = sorted(set(study.get("folds", [])) | set(folds))
    study["alphas"] = sorted(set(study.get("alphas", [])) | set(alphas), reverse=True)
    study["methods"] = [m for m in METHODS if m in set(study.get("methods", [])) | set(methods)]
    study["bins"] = list(dict.fromkeys(list(study.get("bins", [])) + list(bins)))
    study["bins_methods"] = list(dict.fromkeys(list(study.get("bins_methods", [])) + list(bins_methods)))
    study["device"] = device
    study["has_imagesUnlabeled"] = unlabeled
    if planning:
        study["planning"] = planning
    plans_info = _plans_summary(dataset_name, configuration, plans) if ds is not None else {}
    study["reduced_vs_paper"] = reductions(prof, study["folds"], study["alphas"], plans, planning, plans_info)
    runs = study.get("runs", {})
    for s in specs:
        entry = runs.setdefault(s.run_id, s.to_json())
        entry["folds"] = sorted(set(entry.get("folds", [])) | set(folds))
    study["runs"] = runs
    study["last_invocation"] = {"time": now(), "argv": sys.argv, "device": device}

    log(f"Study {study_dir}: {dataset_name} {configuration} -p {plans}, profile {prof.name} ({prof.description})")
    log(f"  folds {folds}, alphas {[alpha_str(a) for a in alphas]} %, methods {methods}, bins {bins}"
        + ("" if unlabeled else "; no imagesUnlabeled: relabel methods at 100 % are skipped (same as without "
                                "relabeling)"))
    log(f"  {est['runs']} runs x folds, {est['trainings']} nnU-Net trainings "
        f"(relabel methods train T models after the round 0 of their counterpart, 1 + T alone)"
        + (f"; rough time estimate {format_duration(est['seconds'])} on {device} "
           f"({est['seconds_per_iteration_source']}: {est['seconds_per_iteration']['plain']:.2f} s/iteration, "
           f"patch {est['patch_size']}, batch {est['batch_size']})" if "seconds" in est else ""))
    result = {"study_dir": str(study_dir), "runs": [s.to_json() for s in specs], "estimate": est, "status": {}}
    for s in specs:
        root = s.folder(study_dir)
        mdir = model_folder(root, dataset_name, s.trainer, plans, configuration)
        if s.skipped:
            log(f"  {s.run_id:28s} skipped: {s.skipped} (= {s.same_as})")
            continue
        for f in folds:
            state = "finished" if fold_finished(mdir, f) else "to do"
            if dry_run:
                log(f"  {s.run_id:28s} fold {f}: {state:8s} {s.trainer}  stipple_run.json "
                    f"{json.dumps(run_config_for(s, prof))}")
                cmd = train_command(dataset_name, configuration, f, s.trainer, plans, device)
                log(f"      nnUNet_results={root} {' '.join(cmd)}")
            result["status"][f"{s.run_id}/fold_{f}"] = state
    if dry_run:
        log("(dry run: nothing written, nothing trained)")
        return result

    study_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(study_dir / STUDY_FILE, study)
    failed = []
    for s, f in work_order(specs, folds, prof.alpha_priority):
        st = run_one(s, f, study_dir, dataset_name, configuration, plans, prof, device, runner, log)
        result["status"][f"{s.run_id}/fold_{f}"] = st
        if st == "failed":
            failed.append(f"{s.run_id}/fold_{f}")
            continue
        try:
            record_positioning(s, f, study_dir, dataset_name, plans, configuration, device, log)
        except Exception as e:  # noqa: BLE001 - a failed measurement must not stop the remaining trainings
            log(f"[{s.run_id} fold {f}] positioning quality FAILED ({type(e).__name__}: {e}); the next run of "
                f"the study retries it while the model exists")
        if record_dir is not None:
            mdir = model_folder(s.folder(study_dir), dataset_name, s.trainer, plans, configuration)
            done = [g for g in folds if fold_finished(mdir, g)]
            written = export_run(study_dir, Path(record_dir), s.folder(study_dir).relative_to(study_dir).as_posix(),
                                 done)
            export_files(study_dir, Path(record_dir), [STUDY_FILE])
            log(f"[{s.run_id} fold {f}] record: {len(written)} files written to {record_dir}")
    result["failed"] = failed
    if report:
        result["report"] = report_study(study_dir, nsd_tolerance_mm=nsd_tolerance_mm, record_dir=record_dir,
                                        log=log)
    return result


POSITIONING_MODES = ("visual", "naive", "auto", "ground_truth")   # the modes of positioning.csv


def record_positioning(spec: RunSpec, fold: int, study_dir: Path, dataset_name: str, plans: str,
                       configuration: str, device: str, log: Callable[[str], None] = print) -> Optional[Path]:
    """Positioning quality of a finished prior run's fold while its model exists: Dice per validation case and
    class with the visual prediction, naive centring, automatic positioning and ground-truth centres (and the
    other variants of :mod:`nnunet_stipple.benchmarks.positioning_eval`), nnU-Net's test-time mirroring on,
    written once to ``runs/<alpha>/<name>/positioning_fold<f>.json``."""
    if not spec.uses_prior:
        return None
    out = spec.folder(study_dir) / f"positioning_fold{fold}.json"
    if out.is_file():
        return out
    mdir = model_folder(spec.folder(study_dir), dataset_name, spec.trainer, plans, configuration)
    if not (mdir / f"fold_{fold}" / "checkpoint_final.pth").is_file():
        log(f"[{spec.run_id} fold {fold}] no checkpoint_final.pth here: positioning quality not measured")
        return None
    from nnunet_stipple.benchmarks.positioning_eval import MODES, evaluate_positioning
    log(f"[{spec.run_id} fold {fold}] positioning quality on the validation cases ({', '.join(MODES)})")
    t0 = time.perf_counter()
    res = evaluate_positioning(str(mdir), fold, device=device, mirroring=True)
    rows = [{"case": case, "class_key": str(c), "mode": m, "dice": _num(v)}
            for case, by_mode in res["per_case"].items() for m in MODES for c, v in by_mode[m].items()]
    write_json_atomic(out, {"run_id": spec.run_id, "fold": fold, "modes": list(MODES), "mirroring": True,
                            "space": "the network's (preprocessed) voxel grid", "created": now(),
                            "seconds": time.perf_counter() - t0, "git_commit": git_commit(),
                            "mean": res["mean"], "rows": rows})
    log(f"[{spec.run_id} fold {fold}] positioning: mean Dice "
        + ", ".join(f"{m} {res['mean'][m]:.3f}" for m in MODES))
    return out


def run_cost(dataset, configuration: str, study_dir, plans: Optional[str] = None, fold: int = 0,
             device: str = "cpu", iterations: int = 5, warmup: int = 2, repeats: int = 2, num_cases: int = 2,
             mirroring: bool = True, num_bins: int = DEFAULT_BINS, log: Callable[[str], None] = print) -> dict:
    """Run :func:`nnunet_stipple.benchmarks.cost.run_cost_benchmark` and store its JSON as ``DIR/cost.json``
    (used by ``run`` for its time estimate)."""
    from nnunet_stipple.benchmarks.cost import format_summary, run_cost_benchmark
    from nnunet_stipple.priors.build import open_preprocessed
    study_dir = Path(study_dir)
    dataset_name = resolve_dataset(dataset)
    existing = load_study(study_dir)
    if existing is not None:
        plans = plans or existing["plans"]
        check_same_study(existing, dataset_name, configuration, plans, existing["profile"], study_dir)
    plans = plans or "nnUNetPlans"
    open_preprocessed(dataset_name, configuration, plans)
    res = run_cost_benchmark(dataset_name, configuration, fold, device, plans, iterations, warmup, repeats,
                             num_cases, mirroring, num_bins, log=log)
    res["created"] = now()
    res["versions"] = versions()
    study_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(study_dir / COST_FILE, res)
    log(format_summary(res))
    log(f"written: {study_dir / COST_FILE}")
    return res


# ---------------------------------------------------------------------------------------------------------------
# metrics: NSD
# ---------------------------------------------------------------------------------------------------------------
def _key_labels(key: str) -> List[int]:
    """nnU-Net summary key ('1' or '(1, 2)' for regions) -> labels."""
    key = str(key).strip()
    if key.startswith("("):
        return [int(v) for v in key.strip("()").split(",") if v.strip()]
    return [int(key)]


def surface_dice(pred_mask: np.ndarray, gt_mask: np.ndarray, spacing: Sequence[float], tolerance_mm: float) -> float:
    """Normalised surface distance (NSD, surface Dice at ``tolerance_mm``) of one binary structure, by MONAI's
    ``compute_surface_dice`` on one-hot tensors, in the bounding box of both masks plus a margin (exact:
    distances between boundary voxels do not depend on the crop). NaN if both masks are empty, 0 if one is."""
    import torch
    from monai.metrics import compute_surface_dice
    pred_mask, gt_mask = np.asarray(pred_mask, bool), np.asarray(gt_mask, bool)
    if pred_mask.shape != gt_mask.shape:
        raise StippleInputError(f"prediction and reference have different shapes {pred_mask.shape} / {gt_mask.shape}")
    both = pred_mask | gt_mask
    if not both.any():
        return float("nan")
    if not pred_mask.any() or not gt_mask.any():
        return 0.0
    idx = np.nonzero(both)
    sl = tuple(slice(max(0, int(i.min()) - 2), int(i.max()) + 3) for i in idx)
    p, g = pred_mask[sl], gt_mask[sl]

    def onehot(m):
        t = torch.from_numpy(np.stack([~m, m])[None].astype(np.uint8))
        return t

    import warnings
    with warnings.catch_warnings():   # MONAI 1.5+ warns about its own internal use of a deprecated argument
        warnings.simplefilter("ignore", FutureWarning)
        val = compute_surface_dice(onehot(p), onehot(g), class_thresholds=[float(tolerance_mm)],
                                   include_background=False, distance_metric="euclidean",
                                   spacing=[float(s) for s in spacing])
    return float(val[0, 0])


def read_segmentation(path: Path) -> Tuple[np.ndarray, List[float]]:
    """Label array (SimpleITK axis order z, y, x) and its spacing in the same order."""
    import SimpleITK as sitk
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), list(img.GetSpacing())[::-1]


def case_nsd(pred_file: Path, gt_file: Path, keys: Sequence[str], tolerance_mm: float) -> Dict[str, Optional[float]]:
    pred, _ = read_segmentation(pred_file)
    gt, spacing = read_segmentation(gt_file)
    out = {}
    for k in keys:
        labels = _key_labels(k)
        out[k] = _num(surface_dice(np.isin(pred, labels), np.isin(gt, labels), spacing, tolerance_mm))
    return out


# ---------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------
def _file_ending(dataset_json: dict) -> str:
    return dataset_json.get("file_ending", ".nii.gz")


def _case_id(path: str, ending: str) -> str:
    name = Path(path).name
    return name[: -len(ending)] if name.endswith(ending) else name.split(".")[0]


def _label_names(dataset_json: dict) -> Dict[str, str]:
    """summary key -> class name (foreground classes and regions; no background, no ignore)."""
    names = {}
    for name, v in dataset_json.get("labels", {}).items():
        if name == "ignore" or name == "background":
            continue
        if isinstance(v, (list, tuple)):
            key = str(v[0]) if len(v) == 1 else "(" + ", ".join(str(int(i)) for i in v) + ")"
        else:
            key = str(int(v))
        names[key] = name
    return names


def pancreas_key(names: Dict[str, str]) -> Optional[str]:
    for k, n in names.items():
        if "pancreas" in n.lower():
            return k
    return None


def _find_dataset_json(study: dict, study_dir: Path) -> Tuple[dict, Optional[Path]]:
    """dataset.json and gt_segmentations folder of the study's dataset."""
    for root in (os.environ.get("nnUNet_preprocessed"), study.get("nnUNet_preprocessed")):
        if root and (Path(root) / study["dataset"] / "dataset.json").is_file():
            base = Path(root) / study["dataset"]
            return json.loads((base / "dataset.json").read_text()), base / "gt_segmentations"
    for f in sorted((Path(study_dir) / RUNS_FOLDER).glob(f"*/*/{study['dataset']}/*/dataset.json")):
        return json.loads(f.read_text()), None
    raise StippleInputError(f"dataset.json of {study['dataset']} not found: set nnUNet_preprocessed (the study "
                            f"reads gt_segmentations/ and dataset.json there).")


def _fold_cases(study_dir: Path, spec: RunSpec, study: dict, fold: int, dataset_json: dict,
                gt_folder: Optional[Path], names: Dict[str, str], tolerance_mm: float,
                log: Callable[[str], None]) -> Optional[List[dict]]:
    """Per-case Dice (nnU-Net's summary.json) and NSD (cached) of one finished (run, fold); None if unfinished."""
    root = spec.folder(study_dir)
    mdir = model_folder(root, study["dataset"], spec.trainer, study["plans"], study["configuration"])
    val = mdir / f"fold_{fold}" / "validation"
    summary_file = val / "summary.json"
    if not summary_file.is_file():
        return None
    summary = json.loads(summary_file.read_text())
    ending = _file_ending(dataset_json)
    keys = [k for k in names if any(k in c["metrics"] for c in summary["metric_per_case"])]
    cache_file = root / f"nsd_fold{fold}_tol{tolerance_mm:g}mm.json"
    cache = {}
    if cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
        except json.JSONDecodeError:
            cache = {}
    if cache.get("tolerance_mm") != tolerance_mm:
        cache = {"tolerance_mm": tolerance_mm, "cases": {}}
    changed = False
    cases = []
    for c in summary["metric_per_case"]:
        case = _case_id(c["prediction_file"], ending)
        pred = val / f"{case}{ending}"
        if not pred.is_file():
            pred = Path(c["prediction_file"])
        gt = gt_folder / f"{case}{ending}" if gt_folder is not None else None
        if gt is None or not gt.is_file():
            gt = Path(c["reference_file"])
        stamp = None
        if pred.is_file():
            st = pred.stat()
            stamp = [st.st_size, st.st_mtime_ns]
        cached = cache["cases"].get(case)
        # a recorded value stands when the prediction is gone (a study rebuilt from its record)
        if cached is not None and all(k in cached["nsd"] for k in keys) and stamp in (None, cached.get("stamp")):
            nsd = cached["nsd"]
        elif pred.is_file() and gt.is_file():
            nsd = case_nsd(pred, gt, keys, tolerance_mm)
            cache["cases"][case] = {"stamp": stamp, "nsd": nsd}
            changed = True
        else:
            log(f"  warning: {pred} or {gt} missing; NSD of {case} not computed")
            nsd = {k: None for k in keys}
        classes = {}
        for k in keys:
            m = c["metrics"].get(k, {})
            classes[k] = {"name": names[k], "dice": _num(m.get("Dice")), "nsd": _num(nsd.get(k))}
        dices = [_nan(v["dice"]) for v in classes.values()]
        nsds = [_nan(v["nsd"]) for v in classes.values()]
        cases.append({"fold": fold, "case": case, "classes": classes,
                      "mean_fg_dice": _num(np.nanmean(dices)) if not all(map(math.isnan, dices)) else None,
                      "mean_fg_nsd": _num(np.nanmean(nsds)) if not all(map(math.isnan, nsds)) else None})
    if changed:
        write_json_atomic(cache_file, cache)
    return cases


def _metric(case: dict, metric: str, pancreas: Optional[str]) -> float:
    if metric in ("dice", "nsd"):
        return _nan(case[f"mean_fg_{metric}"])
    kind = metric.split("_", 1)[1]
    c = case["classes"].get(pancreas) if pancreas else None
    return _nan(c[kind]) if c else float("nan")


def _aggregate(cases_by_fold: Dict[int, List[dict]], metric: str, pancreas: Optional[str]) -> dict:
    fold_means = {f: float(np.nanmean([_metric(c, metric, pancreas) for c in cs]))
                  for f, cs in cases_by_fold.items()
                  if cs and not all(math.isnan(_metric(c, metric, pancreas)) for c in cs)}
    values = list(fold_means.values())
    if not values:
        return {"mean": None, "std": None, "std_over": None, "per_fold": {}, "n_cases": 0}
    all_cases = [v for cs in cases_by_fold.values() for v in (_metric(c, metric, pancreas) for c in cs)
                 if not math.isnan(v)]
    if len(values) >= 2:
        std, over = float(np.std(values, ddof=1)), "folds"
    else:
        std, over = (float(np.std(all_cases, ddof=1)) if len(all_cases) >= 2 else None), "cases"
    return {"mean": float(np.mean(values)), "std": std, "std_over": over,
            "per_fold": {str(f): v for f, v in fold_means.items()}, "n_cases": len(all_cases)}


def _row_label(spec: RunSpec) -> str:
    label = method(spec.method).label
    if spec.uses_prior and spec.bins != DEFAULT_BINS:
        label += f" (B={spec.bins})"
    return label


def paired_ttest(a: Dict[Tuple[int, str], float], b: Dict[Tuple[int, str], float]) -> dict:
    """Paired tests over the cases present (not NaN) in both: scipy.stats.ttest_rel (``t``, ``p``) and the
    Wilcoxon signed-rank test scipy.stats.wilcoxon (``w``, ``p_wilcoxon``; None when every difference is 0)."""
    from scipy.stats import ttest_rel, wilcoxon
    keys = sorted(k for k in set(a) & set(b) if not math.isnan(a[k]) and not math.isnan(b[k]))
    x, y = np.array([a[k] for k in keys]), np.array([b[k] for k in keys])
    out = {"n": len(keys), "mean_a": _num(x.mean()) if keys else None, "mean_b": _num(y.mean()) if keys else None,
           "mean_diff": _num((x - y).mean()) if keys else None, "t": None, "p": None, "w": None,
           "p_wilcoxon": None}
    if len(keys) >= 2:
        res = ttest_rel(x, y)
        out["t"], out["p"] = _num(res.statistic), _num(res.pvalue)
        if np.any(x != y):
            res = wilcoxon(x, y)
            out["w"], out["p_wilcoxon"] = _num(res.statistic), _num(res.pvalue)
    return out


def _fmt_cell(agg: Optional[dict], bold: bool, scale: float = 100.0) -> str:
    if agg is None or agg.get("mean") is None:
        return "n/a"
    m = f"{agg['mean'] * scale:.2f}"
    m = f"**{m}**" if bold else m
    s = "n/a" if agg.get("std") is None else f"{agg['std'] * scale:.2f}"
    cell = f"{m} (± {s})"
    if agg.get("incomplete"):
        cell += f" [{agg['incomplete']} folds]"
    return cell


def _fmt_p(p: Optional[float]) -> str:
    if p is None:
        return "n/a"
    return f"{p:.3g}" if p >= 1e-3 else f"{p:.2e}"


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


def report_study(study_dir, nsd_tolerance_mm: Optional[float] = None, record_dir=None,
                 log: Callable[[str], None] = print) -> dict:
    """(Re)aggregate every finished (run, fold) of a study into ``DIR/report/``.

    * ``results.json`` / ``results.csv``: per run, fold, case and class: Dice (nnU-Net's ``summary.json``) and
      NSD (MONAI ``compute_surface_dice``, tolerance ``nsd_tolerance_mm`` mm, image spacing from the files),
      with the runs' metadata (trainer, wall time, git commit, versions, machine);
    * aggregates per (alpha, method, B): mean over folds of each fold's mean (over cases) of the per-case mean
      foreground Dice / NSD, ± the sample std over folds (over cases when only one fold finished), and the
      same for the pancreas (a class whose name contains "pancreas") if any;
    * paired t-tests (``scipy.stats.ttest_rel`` over the validation cases of all folds, per alpha) of every
      method vs ``plain`` and of ``stipple`` vs ``plain_relabel``;
    * ``positioning.csv`` (run_id, fold, case, class_key, mode, dice): the prior runs' positioning quality per
      validation case and class (modes visual, naive, auto, ground_truth; see :func:`record_positioning`);
    * ``table.md`` (the paper's Table 2 layout, Dice per organ, positioning) and PNG plots.

    With ``record_dir`` the report and study.json are copied there too."""
    study_dir = Path(study_dir)
    study = load_study(study_dir)
    if study is None:
        raise StippleInputError(f"{study_dir / STUDY_FILE} not found: not a study folder (create one with "
                                f"`nnUNetv2_stipple_study run ... --study-dir {study_dir}`).")
    nsd_tolerance_mm = check_nsd_tolerance(study_nsd_tolerance(study) if nsd_tolerance_mm is None
                                           else nsd_tolerance_mm)
    dataset_json, gt_folder = _find_dataset_json(study, study_dir)
    names = _label_names(dataset_json)
    pancreas = pancreas_key(names)
    specs = [RunSpec.from_json(d) for d in study.get("runs", {}).values()]
    specs.sort(key=lambda s: _spec_order(s, main_bins(study.get("bins") or [DEFAULT_BINS])))
    run_folds = {d["run_id"] if "run_id" in d else RunSpec.from_json(d).run_id: d.get("folds", study["folds"])
                 for d in study.get("runs", {}).values()}

    runs_out, cases_of = [], {}
    for s in specs:
        entry = {**s.to_json(), "label": _row_label(s)}
        if s.skipped:
            runs_out.append(entry)
            continue
        meta = _read_run_json(s.folder(study_dir))
        folds = run_folds.get(s.run_id, study["folds"])
        by_fold = {}
        for f in folds:
            cs = _fold_cases(study_dir, s, study, f, dataset_json, gt_folder, names, nsd_tolerance_mm, log)
            if cs is not None:
                by_fold[f] = cs
        cases_of[s.run_id] = by_fold
        fmeta = meta.get("folds", {})
        last = {}
        for fm in fmeta.values():
            if fm.get("attempts"):
                last = fm["attempts"][-1]
        entry.update({"folds_planned": folds, "folds_finished": sorted(by_fold),
                      "wall_seconds": {f: fm.get("wall_seconds") for f, fm in fmeta.items()},
                      "git_commit": last.get("git_commit"), "versions": last.get("versions"),
                      "machine": last.get("machine"),
                      "cases": [c for f in sorted(by_fold) for c in by_fold[f]]})
        runs_out.append(entry)

    metrics = ["dice", "nsd"] + (["pancreas_dice", "pancreas_nsd"] if pancreas else [])
    aggregates = []
    agg_of: Dict[Tuple[str, str], dict] = {}
    for s in specs:
        base = {"alpha": s.alpha, "method": s.method, "bins": s.bins, "run_id": s.run_id, "label": _row_label(s)}
        if s.skipped:
            aggregates.append({**base, "skipped": s.skipped, "same_as": s.same_as})
            continue
        by_fold = cases_of.get(s.run_id, {})
        a = {**base, "folds_finished": sorted(by_fold), "folds_planned": run_folds.get(s.run_id, study["folds"])}
        for m in metrics:
            agg = _aggregate(by_fold, m, pancreas)
            if by_fold and len(by_fold) < len(a["folds_planned"]):
                agg["incomplete"] = f"{len(by_fold)}/{len(a['folds_planned'])}"
            a[m] = agg
            agg_of[(s.run_id, m)] = agg
        per_class = {}
        for k, n in names.items():
            vals = [c["classes"][k] for cs in by_fold.values() for c in cs if k in c["classes"]]
            per_class[n] = {"dice": _num(np.nanmean([_nan(v["dice"]) for v in vals])) if vals and not all(
                                v["dice"] is None for v in vals) else None,
                            "nsd": _num(np.nanmean([_nan(v["nsd"]) for v in vals])) if vals and not all(
                                v["nsd"] is None for v in vals) else None}
        a["per_class"] = per_class
        aggregates.append(a)

    # paired t-tests per alpha
    def case_values(run_id: str, metric: str) -> Dict[Tuple[int, str], float]:
        return {(c["fold"], c["case"]): _metric(c, metric, pancreas)
                for cs in cases_of.get(run_id, {}).values() for c in cs}

    ttests = []
    for alpha in sorted({s.alpha for s in specs}, reverse=True):
        at = [s for s in specs if s.alpha == alpha]
        plain = next((s for s in at if s.method == "plain"), None)
        relab = next((s for s in at if s.method == "plain_relabel"), None)
        pairs = []
        if plain is not None:
            pairs += [(s, plain) for s in at if s.method != "plain"]
        stipple = next((s for s in at if s.method == "stipple" and s.bins == main_bins(study.get("bins", [5]))), None)
        if stipple is not None and relab is not None:
            pairs.append((stipple, relab))
        for a_spec, b_spec in pairs:
            if a_spec.skipped or b_spec.skipped:   # "-" in the table; its counterpart is tested already
                continue
            ra, rb = a_spec.run_id, b_spec.run_id
            for m in metrics:
                va, vb = case_values(ra, m), case_values(rb, m)
                if not va or not vb:
                    continue
                t = paired_ttest(va, vb)
                t.update({"alpha": alpha, "metric": m, "a": ra, "b": rb,
                          "a_label": _row_label(a_spec), "b_label": _row_label(b_spec)})
                ttests.append(t)

    positioning_rows = collect_positioning(study_dir, specs, cases_of)
    positioning = summarise_positioning(positioning_rows, names)
    pseudo_labels = collect_pseudo_label_quality(study_dir, study, specs, cases_of, names)

    out_dir = study_dir / REPORT_FOLDER
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"study": {k: v for k, v in study.items() if k != "runs"}, "created": now(),
               "report_git_commit": git_commit(), "report_versions": versions(),
               "settings": {"nsd_tolerance_mm": nsd_tolerance_mm, "pancreas_key": pancreas, "classes": names,
                            "aggregation": "per fold: mean over validation cases of the per-case mean over "
                                           "foreground classes (NaN classes skipped); then mean ± sample std "
                                           "over folds (over cases when one fold)",
                            "ttest": "scipy.stats.ttest_rel over (fold, case) pairs, per alpha"},
               "runs": runs_out, "aggregates": aggregates, "ttests": ttests, "positioning": positioning,
               "pseudo_labels": pseudo_labels}
    write_json_atomic(out_dir / "results.json", results)
    _write_csv(out_dir / "results.csv", runs_out)
    _write_positioning_csv(out_dir / "positioning.csv", positioning_rows)
    table = _table_md(study, aggregates, ttests, metrics, nsd_tolerance_mm, names.get(pancreas) if pancreas else None)
    table += (_per_class_md(aggregates, names, pancreas) + _positioning_md(positioning)
              + _pseudo_labels_md(pseudo_labels) + _runs_md(runs_out))
    (out_dir / "table.md").write_text(table)
    plots = _plots(out_dir, aggregates, names)
    n_fin = sum(len(r.get("folds_finished", [])) for r in runs_out)
    n_all = sum(len(r.get("folds_planned", [])) for r in runs_out if not r.get("skipped"))
    log(f"report: {n_fin}/{n_all} (run, fold) finished; {out_dir / 'table.md'}, results.json, results.csv, "
        f"positioning.csv ({len(positioning_rows)} rows), {len(plots)} plots")
    if record_dir is not None and Path(record_dir).resolve() != study_dir.resolve():
        written = []
        for r in runs_out:     # the NSD computed now belongs to the runs' records
            if not r.get("skipped") and r.get("folds_finished"):
                run_folder = RunSpec.from_json(r).folder(study_dir).relative_to(study_dir).as_posix()
                written += export_run(study_dir, Path(record_dir), run_folder, r["folds_finished"])
        written += export_report(study_dir, Path(record_dir))
        log(f"report recorded in {record_dir} ({len(written)} files written)")
    return {"folder": str(out_dir), "finished": n_fin, "planned": n_all, "plots": [str(p) for p in plots],
            "table": table, "aggregates": aggregates, "ttests": ttests}


def collect_positioning(study_dir: Path, specs: Sequence[RunSpec], cases_of: Dict[str, Dict[int, List[dict]]]
                        ) -> List[dict]:
    """positioning.csv rows of the finished folds of the prior runs (from their positioning_fold<f>.json)."""
    rows = []
    for s in specs:
        if s.skipped or not s.uses_prior:
            continue
        for f in sorted(cases_of.get(s.run_id, {})):
            path = s.folder(study_dir) / f"positioning_fold{f}.json"
            if not path.is_file():
                continue
            for r in json.loads(path.read_text())["rows"]:
                if r["mode"] in POSITIONING_MODES:
                    rows.append({"run_id": s.run_id, "fold": f, "case": r["case"], "class_key": r["class_key"],
                                 "mode": r["mode"], "dice": r["dice"]})
    return rows


def summarise_positioning(rows: List[dict], names: Dict[str, str]) -> List[dict]:
    """Per run and mode: mean over cases of the per-case mean Dice over organs, per organ, and the positioning
    efficiency (auto - visual) / (ground_truth - visual) of the means."""
    out = []
    for run_id in dict.fromkeys(r["run_id"] for r in rows):
        mine = [r for r in rows if r["run_id"] == run_id]
        entry = {"run_id": run_id, "folds": sorted({r["fold"] for r in mine}),
                 "cases": len({(r["fold"], r["case"]) for r in mine}), "mean": {}, "per_class": {}}
        for m in POSITIONING_MODES:
            per_case: Dict[Tuple[int, str], List[float]] = {}
            for r in mine:
                if r["mode"] == m and r["dice"] is not None:
                    per_case.setdefault((r["fold"], r["case"]), []).append(r["dice"])
            entry["mean"][m] = _num(np.mean([np.mean(v) for v in per_case.values()])) if per_case else None
            entry["per_class"][m] = {names.get(k, k): _num(np.mean(v)) for k in names
                                     for v in [[r["dice"] for r in mine if r["mode"] == m and r["class_key"] == k
                                                and r["dice"] is not None]] if v}
        mean = entry["mean"]
        gap = None if None in (mean.get("ground_truth"), mean.get("visual")) else mean["ground_truth"] - mean["visual"]
        entry["efficiency"] = (_num((mean["auto"] - mean["visual"]) / gap)
                               if gap and mean.get("auto") is not None else None)
        out.append(entry)
    return out


def collect_pseudo_label_quality(study_dir: Path, study: dict, specs: Sequence[RunSpec],
                                 cases_of: Dict[str, Dict[int, List[dict]]], names: Dict[str, str]) -> List[dict]:
    """Per relabeling run, finished fold and round: voxels added and their precision / recall against the hidden
    labels (pooled over classes and per class), from the loop's ``round_<t>/round_log.json``."""
    out = []
    for s in specs:
        if s.skipped or not s.relabels:
            continue
        mdir = model_folder(s.folder(study_dir), study["dataset"], s.trainer, study["plans"], study["configuration"])
        for f in sorted(cases_of.get(s.run_id, {})):
            for log_file in sorted((mdir / f"fold_{f}" / "pseudo_labeling").glob("round_*/round_log.json")):
                lg = json.loads(log_file.read_text())
                pooled = lg.get("quality_pooled") or {}
                out.append({"run_id": s.run_id, "fold": f, "round": lg["round"], "gamma": lg["gamma"],
                            "cases": lg["cases"], "voxels_added": lg["voxels_added"],
                            "precision": pooled.get("precision"), "recall": pooled.get("recall"),
                            "per_class": {names.get(k, k): {"precision": v.get("precision"),
                                                            "recall": v.get("recall"), "added": v.get("added")}
                                          for k, v in (lg.get("quality_per_class") or {}).items()}})
    return out


def _pseudo_labels_md(rows: List[dict]) -> str:
    if not rows:
        return ""
    lines = ["## Pseudo-labels against the hidden labels (pooled over organs)", "",
             "| run | fold | round | γ | cases | voxels added | precision | recall |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pr = "n/a" if r["precision"] is None else f"{r['precision']:.3f}"
        rc = "n/a" if r["recall"] is None else f"{r['recall']:.3f}"
        lines.append(f"| {r['run_id']} | {r['fold']} | {r['round']} | {r['gamma']:.2f} | {r['cases']} | "
                     f"{r['voxels_added']} | {pr} | {rc} |")
    lines += ["", "Recall counts the hidden organ voxels that received their true label; per organ in results.json.", ""]
    return "\n".join(lines) + "\n"


def _write_positioning_csv(path: Path, rows: List[dict]) -> None:
    cols = ["run_id", "fold", "case", "class_key", "mode", "dice"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow([r[c] if not (c == "dice" and r[c] is None) else "" for c in cols])


def _per_class_md(aggregates: List[dict], names: Dict[str, str], pancreas: Optional[str]) -> str:
    """Dice per organ (%) of every finished row, one table per alpha (the pancreas column marked)."""
    done = [a for a in aggregates if not a.get("skipped") and a.get("per_class")]
    if not done:
        return ""
    pname = names.get(pancreas) if pancreas else None
    cols = list(names.values())
    lines = ["## Dice per organ (%, mean over validation cases)", ""]
    for al in sorted({a["alpha"] for a in done}, reverse=True):
        lines += [f"α = {alpha_str(al)} %", "",
                  "| method | " + " | ".join(f"**{c}**" if c == pname else c for c in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for a in (a for a in done if a["alpha"] == al):
            vals = [a["per_class"].get(c, {}).get("dice") for c in cols]
            lines.append(f"| {a['label']} | " + " | ".join("n/a" if v is None else f"{v * 100:.1f}" for v in vals)
                         + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _positioning_md(summary: List[dict]) -> str:
    if not summary:
        return ""
    lines = ["## Positioning of the prior (Dice %, mean over validation cases of the mean over organs)", "",
             "| run | cases | visual (no prior) | naive centring | automatic | ground-truth centres | efficiency |",
             "|---|---|---|---|---|---|---|"]
    for e in summary:
        cells = ["n/a" if e["mean"].get(m) is None else f"{e['mean'][m] * 100:.2f}" for m in POSITIONING_MODES]
        eff = "n/a" if e["efficiency"] is None else f"{e['efficiency']:.2f}"
        lines.append(f"| {e['run_id']} | {e['cases']} | " + " | ".join(cells) + f" | {eff} |")
    lines += ["", "Network voxel grid, test-time mirroring on; efficiency = (automatic - visual) / "
                  "(ground truth - visual). Per case and organ: positioning.csv.", ""]
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, runs: List[dict]) -> None:
    cols = ["alpha", "method", "bins", "trainer", "run_id", "fold", "case", "class_key", "class_name", "dice",
            "nsd", "wall_seconds_fold", "git_commit", "nnunetv2", "torch", "platform", "device"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in runs:
            if r.get("skipped"):
                continue
            ver, mach = r.get("versions") or {}, r.get("machine") or {}
            for c in r.get("cases", []):
                for k, v in c["classes"].items():
                    w.writerow([r["alpha"], r["method"], r["bins"], r["trainer"], r["run_id"], c["fold"], c["case"],
                                k, v["name"], "" if v["dice"] is None else v["dice"],
                                "" if v["nsd"] is None else v["nsd"],
                                (r.get("wall_seconds") or {}).get(str(c["fold"])), r.get("git_commit"),
                                ver.get("nnunetv2"), ver.get("torch"), mach.get("platform"), mach.get("device")])


def _table_md(study: dict, aggregates: List[dict], ttests: List[dict], metrics: List[str], tol: float,
              pancreas_name: Optional[str]) -> str:
    alphas = sorted({a["alpha"] for a in aggregates}, reverse=True)
    rows = list(dict.fromkeys((a["method"], a["bins"], a["label"]) for a in aggregates))
    by = {(a["method"], a["bins"], a["alpha"]): a for a in aggregates}
    titles = {"dice": "Dice (DSC, %), mean over foreground classes",
              "nsd": f"NSD (%, tolerance {tol:g} mm), mean over foreground classes",
              "pancreas_dice": f"Dice (DSC, %), {pancreas_name}",
              "pancreas_nsd": f"NSD (%, {tol:g} mm), {pancreas_name}"}
    lines = [f"# Label-efficiency study: {study['dataset']}, {study['configuration']}, plans {study['plans']}, "
             f"profile {study['profile']}", ""]
    if study.get("reduced_vs_paper"):
        red = "; ".join(f"{k}: {v.get('used') if isinstance(v, dict) and 'used' in v else v}"
                        for k, v in study["reduced_vs_paper"].items() if k not in ("network_input", "network"))
        lines += [f"Reduced compared with the paper protocol: {red}.", ""]
        network = study["reduced_vs_paper"].get("network")
        if network:
            changes = ", ".join(f"{k} {v['nnunet']} → {v['used']}" for k, v in network["changed"].items()
                                if k in ("batch_size", "n_stages", "features_per_stage"))
            lines += [f"Network and batch (plans derived from nnU-Net's {network['derived_from']}, same preprocessed "
                      f"data): {changes}.", ""]
    any_case_std = any(isinstance(a.get(m), dict) and a[m].get("std_over") == "cases"
                       for a in aggregates for m in metrics)
    for m in metrics:
        lines += [f"## {titles[m]}", "",
                  "| Proportion (α) | " + " | ".join(f"{alpha_str(a)}%" for a in alphas) + " |",
                  "|---|" + "---|" * len(alphas)]
        best = {}
        for al in alphas:
            vals = [by[(r[0], r[1], al)][m]["mean"] for r in rows
                    if (r[0], r[1], al) in by and not by[(r[0], r[1], al)].get("skipped")
                    and by[(r[0], r[1], al)][m]["mean"] is not None]
            best[al] = max(vals) if vals else None
        for method_name, b, label in rows:
            cells = []
            for al in alphas:
                a = by.get((method_name, b, al))
                if a is None:
                    cells.append("")
                elif a.get("skipped"):
                    cells.append("-")
                else:
                    agg = a[m]
                    cells.append(_fmt_cell(agg, agg["mean"] is not None and best[al] is not None
                                           and agg["mean"] == best[al]))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Cells: mean (± std) over folds of each fold's mean over its validation cases"
              + (" (± std over cases where only one fold finished)" if any_case_std else "")
              + "; **bold**: best of the column; n/a: not finished; [k/n folds]: only k of n folds finished so far.",
              f"-: {SKIPPED_SAME} (α = 100 % and no imagesUnlabeled: nothing to relabel), as in the paper.", ""]
    if ttests:
        lines += ["## Paired tests over validation cases, per α: p-values of the t-test (scipy.stats.ttest_rel) / "
                  "the Wilcoxon signed-rank test (scipy.stats.wilcoxon)", ""]
        comps = sorted(dict.fromkeys((t["metric"], t["a_label"], t["b_label"]) for t in ttests),
                       key=lambda c: metrics.index(c[0]))     # stable: comparisons in order within a metric
        lines += ["| metric | comparison | " + " | ".join(f"{alpha_str(a)}%" for a in alphas) + " |",
                  "|---|---|" + "---|" * len(alphas)]
        tb = {(t["metric"], t["a_label"], t["b_label"], t["alpha"]): t for t in ttests}
        for metric, al_, bl in comps:
            cells = []
            for al in alphas:
                t = tb.get((metric, al_, bl, al))
                if t is None:
                    cells.append("")
                else:
                    d = "" if t["mean_diff"] is None else f" (Δ {t['mean_diff'] * 100:+.2f}, n={t['n']})"
                    cells.append(f"{_fmt_p(t['p'])} / {_fmt_p(t.get('p_wilcoxon'))}{d}")
            lines.append(f"| {metric} | {al_} vs {bl} | " + " | ".join(cells) + " |")
        lines += ["", "Δ: mean paired difference (first minus second) in points (%), n: paired cases; runs "
                      "shown as - are not tested (their counterpart without relabeling is).", ""]
    return "\n".join(lines) + "\n"


def _runs_md(runs: List[dict]) -> str:
    """Wall time, machine and commit of every finished (run, fold)."""
    lines = ["## Runs", "", "| run | fold | wall time | machine | git commit |", "|---|---|---|---|---|"]
    for r in runs:
        if r.get("skipped"):
            continue
        mach = r.get("machine") or {}
        where = f"{mach.get('cpu_count')} CPU cores" + (f", {mach['gpu']}" if mach.get("gpu") else "")
        for f in r.get("folds_finished", []):
            wall = (r.get("wall_seconds") or {}).get(str(f))
            lines.append(f"| {r['run_id']} | {f} | {'n/a' if wall is None else format_duration(wall)} | "
                         f"{mach.get('device', 'n/a')}, {where} | {str(r.get('git_commit'))[:12]} |")
    lines += ["", "Wall time: all attempts of that fold (training, nnU-Net's final validation); a relabeling run's "
                  "includes its pseudo-labels and retraining, not the round 0 taken from its counterpart.", ""]
    return "\n".join(lines) + "\n"


def _plots(out_dir: Path, aggregates: List[dict], names: Dict[str, str]) -> List[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    done = [a for a in aggregates if not a.get("skipped") and a["dice"]["mean"] is not None]
    if not done:
        return written
    # Dice (and NSD) vs alpha, one line per row (method, B)
    rows = list(dict.fromkeys((a["method"], a["bins"], a["label"]) for a in done))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, m in zip(axes, ("dice", "nsd")):
        for method_name, b, label in rows:
            pts = sorted((a["alpha"], a[m]["mean"], a[m]["std"] or 0.0) for a in done
                         if a["method"] == method_name and a["bins"] == b and a[m]["mean"] is not None)
            if not pts:
                continue
            x, y, e = zip(*pts)
            ax.errorbar(x, [v * 100 for v in y], yerr=[v * 100 for v in e], marker="o", capsize=3, label=label)
        ax.set_xlabel("labeled training cases α (%)")
        ax.set_ylabel(f"{'Dice' if m == 'dice' else 'NSD'} (%)")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    p = out_dir / "dice_vs_alpha.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    written.append(p)
    # Dice vs B (Figure 6) where a method has several B at one alpha
    multi = {(a["alpha"], a["method"]) for a in done if method(a["method"]).uses_prior}
    multi = sorted(k for k in multi if len({a["bins"] for a in done if (a["alpha"], a["method"]) == k}) > 1)
    if multi:
        alphas = sorted({k[0] for k in multi}, reverse=True)
        fig, axes = plt.subplots(1, len(alphas), figsize=(5 * len(alphas), 4), squeeze=False)
        for ax, al in zip(axes[0], alphas):
            for (a_, method_name) in multi:
                if a_ != al:
                    continue
                pts = sorted((a["bins"], a["dice"]["mean"], a["dice"]["std"] or 0.0) for a in done
                             if a["alpha"] == al and a["method"] == method_name)
                x, y, e = zip(*pts)
                ax.errorbar(x, [v * 100 for v in y], yerr=[v * 100 for v in e], marker="o", capsize=3,
                            label=method(method_name).label)
            base = next((a for a in done if a["alpha"] == al and a["method"] == "plain"), None)
            if base is not None:
                ax.axhline(base["dice"]["mean"] * 100, color="red", linestyle=":", label=method("plain").label)
            ax.set_title(f"α = {alpha_str(al)} %")
            ax.set_xlabel("bins B")
            ax.set_ylabel("Dice (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        p = out_dir / "dice_vs_bins.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p)
    # per-organ bars per method at each alpha
    classes = list(names.values())
    for al in sorted({a["alpha"] for a in done}, reverse=True):
        at = [a for a in done if a["alpha"] == al]
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(classes) * max(1, len(at)) / 2), 4))
        width = 0.8 / len(at)
        x = np.arange(len(classes))
        for i, a in enumerate(at):
            vals = [(a["per_class"].get(n, {}).get("dice") or 0.0) * 100 for n in classes]
            ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=a["label"])
        ax.set_xticks(x)
        ax.set_xticklabels(classes, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("Dice (%)")
        ax.set_title(f"Dice per class, α = {alpha_str(al)} %")
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out_dir / f"organs_alpha{alpha_str(al)}.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p)
    return written
