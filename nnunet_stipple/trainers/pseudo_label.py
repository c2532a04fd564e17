"""Trainers that run the pseudo-labeling loop (Algorithm 2), with and without the spatial prior."""
from __future__ import annotations

import json
from typing import List

import torch

from nnunet_stipple.pseudo_labeling.loop import PseudoLabelLoopMixin
from nnunet_stipple.trainers.label_proportion import nnUNetTrainer_LabelProportion
from nnunet_stipple.trainers.stipple_trainer import STIPPLETrainer


class STIPPLETrainer_PseudoLabel(PseudoLabelLoopMixin, STIPPLETrainer):
    """STIPPLE: prior-driven training plus pseudo-labels ranked by prior-driven probabilities."""
    default_selection = "prior_confidence"
    round0_trainer = "STIPPLETrainer"
    has_spatial_prior = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._setup_pseudo_labeling(dataset_json)

    def pseudo_label_predictor(self):
        from nnunet_stipple.inference.predictor import predictor_for_trainer
        return predictor_for_trainer(self)

    def predict_for_pseudo_label(self, predictor, data, case):
        visual, offsets, report = predictor.predict_fold(data, None, case)
        driven = torch.softmax(visual + offsets, 0).cpu().numpy()
        centres = {}
        for c, p in report.get("classes", {}).items():
            if p.get("centre") is not None:
                centres[c] = p["centre"]
        return torch.softmax(visual, 0).cpu().numpy(), driven, {"centres": centres,
                                                          "positioning_confidence": report.get("confidence")}

    def _round_pseudo_centres(self, t: int, pseudo_ids: List[str]) -> None:
        for case in pseudo_ids:
            record = json.loads(self.pseudo_label_path(t, case).with_suffix(".json").read_text())
            self.case_centres[case] = {int(c): v for c, v in record.get("centres", {}).items()}


class nnUNetTrainer_PseudoLabel(PseudoLabelLoopMixin, nnUNetTrainer_LabelProportion):
    """Baseline with relabeling: plain nnU-Net, pseudo-labels ranked by the plain softmax (no prior)."""
    default_selection = "max_probability"
    round0_trainer = "nnUNetTrainer_LabelProportion"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._setup_pseudo_labeling(dataset_json)


class nnUNetTrainer_FLARE22Rounds(nnUNetTrainer_PseudoLabel):
    """The FLARE22 winners' multi-round recipe (Huang et al., Ziyan-Huang/FLARE22) on plain nnU-Net: round policy
    ``agreement`` preset (see :mod:`nnunet_stipple.pseudo_labeling.round_policy`): whole-case pseudo-labels cleaned
    by connected components (selection ``flare22``), every round retrained from scratch, T = 3 unless ``rounds`` is
    set, and from round 2 on only the cases whose pseudo-label agrees with the previous round's
    (``agreement_measure``, ``agreement_threshold``) in the round's training set. Round 0 is the plain model
    (``nnUNetTrainer_LabelProportion``), as for :class:`nnUNetTrainer_PseudoLabel`."""
    default_round_policy = "agreement"
    default_selection = "flare22"
