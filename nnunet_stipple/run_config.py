"""Per-run settings that nnU-Net's command line has no flag for, in a JSON file next to the model.

``nnUNet_results/<Dataset>/<Trainer>__<Plans>__<Configuration>/stipple_run.json`` (optional). Every
nnunet_stipple trainer reads it at start; without it a trainer behaves as its class defines (all labels,
nnU-Net's schedule). Studies write one per run folder (see ``nnunet_stipple.benchmarks``); by hand:

    {"label_proportion": 0.1, "label_seed": 0, "rounds": 1, "gamma_max": 0.7}

Unknown keys are an error (a typo must not silently fall back to a default).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import List, Optional

from nnunet_stipple.errors import StippleInputError

RUN_CONFIG_FILE = "stipple_run.json"
# settings that set the nnU-Net trainer attribute of the same name (the training schedule)
SCHEDULE_KEYS = ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch", "save_every")
# settings that only concern the relabeling rounds: a model trained without relabeling can be round 0 of a loop
# whose other settings equal its own
RELABELING_KEYS = ("rounds", "gamma_max", "selection", "include_background", "retrain", "unlabeled_sources",
                   "round0_model_folder")


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

    def validate(self, source: str = RUN_CONFIG_FILE) -> "RunConfig":
        if not 0 < self.label_proportion <= 1:
            raise StippleInputError(f"{source}: label_proportion must be in (0, 1], got {self.label_proportion}")
        if self.rounds is not None and self.rounds < 0:
            raise StippleInputError(f"{source}: rounds must be >= 0, got {self.rounds}")
        if not 0 < self.gamma_max <= 1:
            raise StippleInputError(f"{source}: gamma_max must be in (0, 1], got {self.gamma_max}")
        if self.num_bins is not None and self.num_bins < 1:
            raise StippleInputError(f"{source}: num_bins must be >= 1, got {self.num_bins}")
        if self.save_every is not None and (int(self.save_every) != self.save_every or self.save_every < 1):
            raise StippleInputError(f"{source}: save_every must be an integer >= 1 (epochs), got {self.save_every!r}")
        if self.retrain not in ("scratch", "finetune"):
            raise StippleInputError(f"{source}: retrain must be 'scratch' or 'finetune', got {self.retrain!r}")
        bad = set(self.unlabeled_sources) - {"hidden", "imagesUnlabeled"}
        if bad:
            raise StippleInputError(f"{source}: unknown unlabeled_sources {sorted(bad)} (use 'hidden', 'imagesUnlabeled')")
        return self

    @property
    def effective_rounds(self) -> int:
        if self.rounds is not None:
            return self.rounds
        return 2 if self.label_proportion >= 0.7 else 1

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = RUN_CONFIG_FILE) -> "RunConfig":
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
