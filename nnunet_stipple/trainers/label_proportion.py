"""Label-proportion simulation (paper section 4.1): only a nested, seeded alpha-subset of the fold's
training cases keeps its labels. Validation cases are untouched; alpha = 1 is plain training.

The settings a fold was trained with are recorded in ``fold_<f>/stipple_run_trained.json`` when its training
starts; resuming it (``nnUNetv2_train ... --c``) after an edit of ``stipple_run.json`` that changes what the model
learns from (:meth:`LabelProportionMixin.resume_keys`) is refused before anything is loaded or written.
Schedule changes (more epochs, ...) are a normal use of ``--c`` and only logged.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Sequence, Tuple

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_stipple.atomic import write_json_atomic
from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.pseudo_labeling.label_proportions import hidden_subset, labeled_subset
from nnunet_stipple.run_config import LEARNED_FROM_KEYS, RUN_CONFIG_FILE, SCHEDULE_KEYS, TRAINED_SETTINGS_FILE, \
    RunConfig


class LabelProportionMixin:
    """Reads ``stipple_run.json`` (see :mod:`nnunet_stipple.run_config`) and trains on the labeled subset."""

    takes_semi_supervised_settings = False   # the semi-supervised trainers read stipple_run.json's semi_supervised

    def _read_run_config(self) -> None:
        self.run_config = RunConfig.for_output_folder(self.output_folder_base)
        rc = self.run_config
        if rc.semi_supervised is not None and not self.takes_semi_supervised_settings:
            # a trainer that would silently ignore them: the user meant another trainer, or copied a file
            raise StippleInputError(
                f"{Path(self.output_folder_base) / RUN_CONFIG_FILE}: semi_supervised settings are for the "
                f"semi-supervised trainers (nnUNetTrainer_MeanTeacher, nnUNetTrainer_UAMT, nnUNetTrainer_SASSNet, "
                f"nnUNetTrainer_AdversarialConfidence); {type(self).__name__} "
                f"does not use them. Remove the key or train with one of those trainers.")
        for name in SCHEDULE_KEYS:
            if getattr(rc, name) is not None:
                setattr(self, name, getattr(rc, name))

    def fold_split(self) -> Tuple[List[str], List[str]]:
        """The fold's full training and validation cases (before hiding labels). Read once per trainer: nnU-Net
        prints its splits banner each time it reads splits_final.json, and the subsets ask for the split often."""
        if getattr(self, "_fold_split", None) is None:
            tr, val = nnUNetTrainer.do_split(self)
            self._fold_split = (list(tr), list(val))
        return list(self._fold_split[0]), list(self._fold_split[1])

    def labeled_cases(self) -> List[str]:
        tr, _ = self.fold_split()
        return labeled_subset(tr, self.run_config.label_proportion, self.run_config.label_seed)

    def hidden_cases(self) -> List[str]:
        tr, _ = self.fold_split()
        return hidden_subset(tr, self.run_config.label_proportion, self.run_config.label_seed)

    def do_split(self):
        tr, val = self.fold_split()
        if self.run_config.label_proportion >= 1:
            return tr, val
        return labeled_subset(tr, self.run_config.label_proportion, self.run_config.label_seed), val

    # ---- what the fold was trained with ------------------------------------------------------------------
    @property
    def fold_folder_path(self) -> Path:
        """``fold_<f>`` of the model folder (nnU-Net's ``output_folder`` until a pseudo-labeling round moves it)."""
        return Path(self.output_folder_base) / f"fold_{self.fold}"

    def trained_settings(self) -> dict:
        """The settings this training runs with, as recorded next to its checkpoints."""
        return {"trainer": type(self).__name__, **self.run_config.to_json()}

    def resume_keys(self) -> Sequence[str]:
        """Keys of :meth:`trained_settings` that a resume must keep (they change what the model learns from)."""
        return ("trainer",) + LEARNED_FROM_KEYS

    def check_resume_settings(self, recorded: dict, record_file: Path) -> None:
        """Refuse to continue a training recorded in ``record_file`` with other values of :meth:`resume_keys`;
        log every other change (schedule keys, settings the finished part did not use)."""
        current = self.trained_settings()
        differ = [k for k in self.resume_keys() if recorded.get(k) != current.get(k)]
        if differ:
            changes = "; ".join(f"{k} was {recorded.get(k)!r}, now {current.get(k)!r}" for k in differ)
            raise StippleInputError(
                f"{record_file}: refusing to resume this training with other settings ({changes}). They change what "
                f"the model learns from. Restore them in {Path(self.output_folder_base) / RUN_CONFIG_FILE}, or train "
                f"with the new settings into another nnUNet_results folder (or delete {self.fold_folder_path} "
                f"to train this fold again from scratch).")
        for k in sorted(set(recorded) | set(current)):
            if recorded.get(k) != current.get(k):
                why = "schedule" if k in SCHEDULE_KEYS else "not used by the finished part of the training"
                self.print_to_log_file(f"{RUN_CONFIG_FILE}: {k} {recorded.get(k)!r} -> {current.get(k)!r} on "
                                       f"resume ({why})")

    def _record_file(self) -> Path:
        return self.fold_folder_path / TRAINED_SETTINGS_FILE

    def _check_recorded_settings(self) -> None:
        path = self._record_file()
        if not path.is_file():
            self.print_to_log_file(f"No {TRAINED_SETTINGS_FILE} in {path.parent} (trained before the settings were "
                                   f"recorded): the settings of this resume cannot be checked.")
            return
        try:
            recorded = json.loads(path.read_text())["settings"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise StippleInputError(f"{path} is damaged ({e}); it records the settings this fold was trained "
                                    f"with. Restore it, or delete {self.fold_folder_path} to train the fold again.")
        self.check_resume_settings(recorded, path)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        # nnU-Net's --c / --val load a checkpoint of this fold: check before anything (a prior, a network) is
        # built from the current settings
        if isinstance(filename_or_checkpoint, (str, os.PathLike)) and \
                Path(filename_or_checkpoint).resolve().parent == self.fold_folder_path.resolve():
            self._check_recorded_settings()
        super().load_checkpoint(filename_or_checkpoint)

    def on_train_start(self):
        super().on_train_start()
        if self.local_rank == 0:
            write_json_atomic(self._record_file(), {"settings": self.trained_settings()})


class nnUNetTrainer_LabelProportion(LabelProportionMixin, nnUNetTrainer):
    """Plain nnU-Net on the labeled subset given by ``stipple_run.json`` (the baseline of the studies)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._read_run_config()
