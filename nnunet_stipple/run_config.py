"""Per-run settings that nnU-Net's command line has no flag for, in a JSON file next to the model.

``nnUNet_results/<Dataset>/<Trainer>__<Plans>__<Configuration>/stipple_run.json`` (optional). Every
nnunet_stipple trainer reads it at start; without it a trainer behaves as its class defines (all labels,
nnU-Net's schedule). Studies write one per run folder (see ``nnunet_stipple.benchmarks``); by hand:

    {"label_proportion": 0.1, "label_seed": 0, "rounds": 1, "gamma_max": 0.7}

Unknown keys are an error (a typo must not silently fall back to a default).
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import List, Optional

from nnunet_stipple.errors import StippleInputError

RUN_CONFIG_FILE = "stipple_run.json"
# fold_<f>/<this>: the settings the fold was trained with (written when its training starts)
TRAINED_SETTINGS_FILE = "stipple_run_trained.json"
# settings that set the nnU-Net trainer attribute of the same name (the training schedule)
SCHEDULE_KEYS = ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch", "save_every")
# settings that only concern the relabeling rounds: a model trained without relabeling can be round 0 of a loop
# whose other settings equal its own
RELABELING_KEYS = ("rounds", "gamma_max", "selection", "include_background", "retrain", "unlabeled_sources",
                   "round0_model_folder", "round_policy", "agreement_measure", "agreement_threshold")
UNLABELED_SOURCES = ("hidden", "imagesUnlabeled")
# settings every trained model learned from: a resume (--c) with other values is refused
LEARNED_FROM_KEYS = ("label_proportion", "label_seed", "num_bins")


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_integer(source: str, name: str, value, minimum: Optional[int], optional: bool = False) -> None:
    if value is None and optional:
        return
    if not _is_integer(value) or (minimum is not None and value < minimum):
        what = "an integer" + (f" >= {minimum}" if minimum is not None else "") + (" or null" if optional else "")
        raise StippleInputError(f"{source}: {name} must be {what}, got {value!r}")


def _check_number(source: str, name: str, value, lower: float, upper: float, lower_open: bool = False) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (lower < value if lower_open else lower <= value) and value <= upper
    if not ok:
        interval = f"{'(' if lower_open else '['}{lower:g}, {upper:g}]"
        raise StippleInputError(f"{source}: {name} must be a number in {interval}, got {value!r}")


@dataclass
class RunConfig:
    label_proportion: float = 1.0          # alpha: fraction of the fold's training cases that keep their labels
    label_seed: int = 0                    # seed of the nested patient-level subsets
    rounds: Optional[int] = None           # T; None: the paper's choice (2 at alpha >= 0.7, else 1)
    gamma_max: float = 0.7                 # proportion of predicted organ voxels kept at the last round
    selection: Optional[str] = None        # None: the trainer's default strategy
    include_background: bool = False       # also add the most confident background voxels
    retrain: str = "scratch"               # "scratch" (the paper) or "finetune" (continue from m_{t-1})
    unlabeled_sources: List[str] = field(default_factory=lambda: ["hidden", "imagesUnlabeled"])
    num_bins: Optional[int] = None         # B of the prior (STIPPLE trainers); None: the trainer's own
    num_epochs: Optional[int] = None       # schedule overrides for short studies
    num_iterations_per_epoch: Optional[int] = None
    num_val_iterations_per_epoch: Optional[int] = None
    save_every: Optional[int] = None       # epochs between nnU-Net's checkpoint_latest.pth (nnU-Net: 50)
    # pseudo-labeling trainers: m0 = <this model folder>/fold_<f>/checkpoint_final.pth, the same training without
    # relabeling (same data, seed and settings; absolute or relative to this file's folder), not trained again
    round0_model_folder: Optional[str] = None
    # pseudo-labeling trainers: how the rounds go (nnunet_stipple.pseudo_labeling.round_policy); None: the trainer's
    # default ("gamma_schedule", the paper; nnUNetTrainer_FLARE22Rounds: "agreement", the FLARE22 winners' recipe)
    round_policy: Optional[str] = None
    # round_policy "agreement" only: how a case's pseudo-label is compared with the previous round's
    # ("changed_fraction", the winners' measure, or "dice"; None: changed_fraction) and the value a case must reach
    # to enter the round's training set (None: the measure's default, 0.1 resp. 0.9, our choice)
    agreement_measure: Optional[str] = None
    agreement_threshold: Optional[float] = None
    # semi-supervised trainers (mean teacher, UA-MT, SASSNet, adversarial confidence): their settings object, checked
    # by nnunet_stipple.semi_supervised.settings (None: the trainer's defaults)
    semi_supervised: Optional[dict] = None

    def validate(self, source: str = RUN_CONFIG_FILE) -> "RunConfig":
        """Check every value's type and range once, when the file is read (a trainer reads it in ``__init__``,
        so a typo stops the run before anything is trained). Raises :class:`StippleInputError` naming ``source``."""
        _check_number(source, "label_proportion", self.label_proportion, lower=0, lower_open=True, upper=1)
        _check_integer(source, "label_seed", self.label_seed, minimum=None)
        _check_integer(source, "rounds", self.rounds, minimum=0, optional=True)
        _check_number(source, "gamma_max", self.gamma_max, lower=0, lower_open=True, upper=1)
        if self.selection is not None:
            from nnunet_stipple.pseudo_labeling.selection import check_selection_options
            if not isinstance(self.selection, str):
                raise StippleInputError(f"{source}: selection must be a strategy name (a string) or null, "
                                        f"got {self.selection!r}")
            check_selection_options(self.selection, self.include_background, where=source)
        if not isinstance(self.include_background, bool):
            raise StippleInputError(f"{source}: include_background must be true or false, got "
                                    f"{self.include_background!r}")
        if self.retrain not in ("scratch", "finetune"):
            raise StippleInputError(f"{source}: retrain must be 'scratch' or 'finetune', got {self.retrain!r}")
        sources = self.unlabeled_sources
        if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
            raise StippleInputError(f"{source}: unlabeled_sources must be a list of names, e.g. "
                                    f'["hidden", "imagesUnlabeled"], got {sources!r}')
        bad = set(sources) - set(UNLABELED_SOURCES)
        if bad:
            raise StippleInputError(f"{source}: unknown unlabeled_sources {sorted(bad)} "
                                    f"(use {', '.join(repr(s) for s in UNLABELED_SOURCES)})")
        _check_integer(source, "num_bins", self.num_bins, minimum=1, optional=True)
        for name in SCHEDULE_KEYS:   # 0 epochs would train nothing: a schedule value is a count >= 1 or absent
            _check_integer(source, name, getattr(self, name), minimum=1, optional=True)
        if self.round0_model_folder is not None and not isinstance(self.round0_model_folder, str):
            raise StippleInputError(f"{source}: round0_model_folder must be a folder (a string) or null, got "
                                    f"{self.round0_model_folder!r}")
        from nnunet_stipple.pseudo_labeling.round_policy import check_round_policy
        check_round_policy(self.round_policy, source, self.agreement_measure, self.agreement_threshold,
                           self.selection, self.retrain)
        if self.semi_supervised is not None:
            from nnunet_stipple.semi_supervised.settings import check_semi_supervised_object
            check_semi_supervised_object(self.semi_supervised, source)
        return self

    @property
    def effective_rounds(self) -> int:
        """T of the loop under :attr:`round_policy` (unset: the paper's gamma schedule; a trainer with another
        default policy asks :meth:`rounds_for`)."""
        from nnunet_stipple.pseudo_labeling.round_policy import GAMMA_SCHEDULE
        return self.rounds_for(self.round_policy or GAMMA_SCHEDULE)

    def rounds_for(self, policy: str) -> int:
        """T: ``rounds`` if set, else the policy's (agreement: 3), else the paper's (2 at alpha >= 0.7, else 1)."""
        from nnunet_stipple.pseudo_labeling.round_policy import ROUND_POLICIES
        if self.rounds is not None:
            return self.rounds
        if ROUND_POLICIES[policy].default_rounds is not None:
            return ROUND_POLICIES[policy].default_rounds
        return 2 if self.label_proportion >= 0.7 else 1

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = RUN_CONFIG_FILE) -> "RunConfig":
        if not isinstance(d, dict):
            raise StippleInputError(f"{source}: expected a JSON object of settings, e.g. "
                                    f'{{"label_proportion": 0.1}}, got {type(d).__name__}')
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise StippleInputError(f"{source}: unknown setting(s) {unknown}; known: {sorted(known)}")
        return cls(**d).validate(source)

    @classmethod
    def for_output_folder(cls, output_folder_base: Optional[str]) -> "RunConfig":
        if output_folder_base is None:
            return cls()
        path = Path(output_folder_base) / RUN_CONFIG_FILE
        if not path.is_file():
            return cls()
        try:
            return cls.from_dict(json.loads(path.read_text()), str(path))
        except json.JSONDecodeError as e:
            raise StippleInputError(f"{path} is not valid JSON: {e}") from e
