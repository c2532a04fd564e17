"""Label-proportion simulation (paper section 4.1): only a nested, seeded alpha-subset of the fold's
training cases keeps its labels. Validation cases are untouched; alpha = 1 is plain training."""
from __future__ import annotations

from typing import List, Tuple

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_stipple.pseudo_labeling.label_proportions import hidden_subset, labeled_subset
from nnunet_stipple.run_config import SCHEDULE_KEYS, RunConfig


class LabelProportionMixin:
    """Reads ``stipple_run.json`` (see :mod:`nnunet_stipple.run_config`) and trains on the labeled subset."""

    def _read_run_config(self) -> None:
        self.run_config = RunConfig.for_output_folder(self.output_folder_base)
        rc = self.run_config
        for name in SCHEDULE_KEYS:
            if getattr(rc, name) is not None:
                setattr(self, name, getattr(rc, name))

    def fold_split(self) -> Tuple[List[str], List[str]]:
        """The fold's full training and validation cases (before hiding labels)."""
        return nnUNetTrainer.do_split(self)

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


class nnUNetTrainer_LabelProportion(LabelProportionMixin, nnUNetTrainer):
    """Plain nnU-Net on the labeled subset given by ``stipple_run.json`` (the baseline of the studies)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._read_run_config()
