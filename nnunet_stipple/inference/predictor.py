"""STIPPLE prediction: nnU-Net's predictor with the fold's prior positioned and added once per case.

One network pass per fold and case. The stitched full-volume logits (the "visual" prediction) give a
first segmentation; the fold's prior is positioned from it (coarse centres, by default from a joint
search over one displacement of all organs, then each organ's exhaustive KL translation search), then
re-positioned from the prior-driven probabilities (``repositioning_steps``), and ``ln p`` is added once, in
float32, to the full-volume logits. Sliding-window averaging, mirroring and fold averaging are linear,
so this equals adding the prior per patch, without the fp16 stitching error. nnU-Net's export then turns
the prior-driven logits into segmentations and (``--save_probabilities``) prior-driven probabilities.
"""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.helpers import empty_cache
from torch._dynamo import OptimizedModule

from nnunet_stipple.activation.prior_driven import region_probabilities, sigmoid_offset, softmax_offset
from nnunet_stipple.atomic import write_json_atomic
from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.positioning.place import DEFAULT_ANATOMY_TOLERANCE_MM, DEFAULT_COARSE, \
    DEFAULT_REPOSITIONING_STEPS, DEFAULT_SEARCH_RADIUS_MM, Placement, position_from_probabilities
from nnunet_stipple.priors.prior_module import PRIOR_ATTRIBUTE, allow_prior_free_forward, prior_module_of, \
    unwrap_network
from nnunet_stipple.priors.spatial_prior import DEFAULT_FLOOR, SpatialPrior

POSITIONING_FOLDER = "stipple_positioning"
DEFAULT_SETTINGS = {"floor": DEFAULT_FLOOR, "search_radius_mm": DEFAULT_SEARCH_RADIUS_MM,
                    "repositioning_steps": DEFAULT_REPOSITIONING_STEPS,
                    "anatomy_tolerance_mm": DEFAULT_ANATOMY_TOLERANCE_MM, "coarse_placement": DEFAULT_COARSE}


class STIPPLEPredictor(nnUNetPredictor):
    """Drop-in replacement of ``nnUNetPredictor`` for models trained with a STIPPLE trainer.

    ``ground_truth_centres`` (case id -> {class: centre}) places the prior at known organ centres instead
    of positioning it, for studies of positioning quality. ``report_folder`` receives one JSON per case with
    the chosen prior position and positioning confidence of every fold."""

    def __init__(self, *args, ground_truth_centres: Optional[Dict[str, Dict[int, list]]] = None,
                 report_folder: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.ground_truth_centres = ground_truth_centres
        self.report_folder = report_folder
        self.last_report: Optional[dict] = None
        self._current_case: Optional[str] = None
        self._sequential_cases: Optional[List[Optional[str]]] = None
        self._in_sequential = False
        self._prior_cache: Dict[int, SpatialPrior] = {}

    # ---- initialisation -----------------------------------------------------------------------------------
    def initialize_from_trained_model_folder(self, model_training_output_dir: str, use_folds,
                                             checkpoint_name: str = 'checkpoint_final.pth'):
        super().initialize_from_trained_model_folder(model_training_output_dir, use_folds, checkpoint_name)
        allow_prior_free_forward(unwrap_network(self.network))
        if use_folds is None:
            use_folds = self.auto_detect_available_folds(model_training_output_dir, checkpoint_name)
        for fold, params in zip(use_folds, self.list_of_parameters):
            ckpt = Path(model_training_output_dir) / f"fold_{fold}" / checkpoint_name
            if not any(k.startswith(PRIOR_ATTRIBUTE + ".") for k in params):
                raise StippleInputError(
                    f"{ckpt} holds no STIPPLE prior (trainer '{self.trainer_name}'). Predict models of plain nnU-Net "
                    f"trainers with nnUNetv2_predict; STIPPLE models must be trained with a STIPPLE trainer.")
            self._check_prior_matches(self._prior_for(params), str(ckpt))

    def manual_initialization(self, network, plans_manager, configuration_manager, parameters, dataset_json,
                              trainer_name, inference_allowed_mirroring_axes):
        super().manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json,
                                      trainer_name, inference_allowed_mirroring_axes)
        allow_prior_free_forward(unwrap_network(self.network))

    def _check_prior_matches(self, prior: SpatialPrior, source: str) -> None:
        fg = [int(c) for c in self.label_manager.foreground_labels]
        if sorted(prior.labels) != sorted(fg):
            raise StippleInputError(f"The prior in {source} has classes {sorted(prior.labels)} but the model's "
                                    f"dataset.json has {sorted(fg)}: the prior belongs to another dataset.")
        want = [round(float(s), 5) for s in self.configuration_manager.spacing]
        if [round(s, 5) for s in prior.spacing][-len(want):] != want:  # 2d: in-plane spacing only
            raise StippleInputError(f"The prior in {source} was built at spacing {prior.spacing}, the model's "
                                    f"configuration uses {want}: it belongs to another configuration.")

    def _prior_for(self, params: Optional[dict]) -> SpatialPrior:
        key = id(params)
        if key not in self._prior_cache:
            if params is None:
                module = prior_module_of(self.network)
                if not module.is_set:
                    raise StippleInputError("The network holds no STIPPLE prior.")
                prior = module.spatial_prior()
                settings = module.settings
            else:
                prefix = PRIOR_ATTRIBUTE + "."
                arrays = {k[len(prefix):]: v.cpu().numpy() for k, v in params.items() if k.startswith(prefix)}
                import json
                meta = json.loads(bytes(arrays.pop("meta_json").tobytes()).decode())
                prior = SpatialPrior.from_metadata_and_arrays(meta, arrays, source="the checkpoint's STIPPLE prior")
                settings = meta.get("stipple_settings", {})
            prior.settings = {**DEFAULT_SETTINGS, **settings}
            self._prior_cache[key] = prior
        return self._prior_cache[key]

    # ---- prediction ---------------------------------------------------------------------------------------
    def predict_from_data_iterator(self, data_iterator, save_probabilities: bool = False,
                                   num_processes_segmentation_export: int = 3):
        def remember_case(iterator):
            for item in iterator:
                ofile = item.get("ofile")
                self._current_case = os.path.basename(ofile) if ofile is not None else None
                yield item
        return super().predict_from_data_iterator(remember_case(data_iterator), save_probabilities,
                                                  num_processes_segmentation_export)

    def _manage_input_and_output_lists(self, list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
                                       *args, **kwargs):
        lists, outputs, prev = super()._manage_input_and_output_lists(
            list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files, *args, **kwargs)
        # nnU-Net's sequential path predicts the cases in this order without handing their names on; remember
        # them so that each case still gets its positioning report
        ending = len("_0000" + self.dataset_json["file_ending"])
        self._sequential_cases = [os.path.basename(o) if o is not None else os.path.basename(li[0])[:-ending]
                                  for li, o in zip(lists, outputs or [None] * len(lists))]
        return lists, outputs, prev

    def predict_from_files_sequential(self, list_of_lists_or_source_folder,
                                      output_folder_or_list_of_truncated_output_files, save_probabilities=False,
                                      overwrite=True, folder_with_segs_from_prev_stage=None):
        # same signature as nnU-Net's: it records its arguments by inspecting the (overridden) signature
        self._in_sequential = True
        try:
            return super().predict_from_files_sequential(
                list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files, save_probabilities,
                overwrite, folder_with_segs_from_prev_stage)
        finally:
            self._in_sequential = False
            self._sequential_cases = None

    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        case = self._current_case
        if self._in_sequential and self._sequential_cases:
            case = self._sequential_cases.pop(0)
        return self.predict_with_prior(data, case)

    def predict_with_prior(self, data: torch.Tensor, case: Optional[str] = None) -> torch.Tensor:
        """Prior-driven logits (num_outputs, *S) in float32 on the CPU, averaged over the folds."""
        n_threads = torch.get_num_threads()
        param_sets = self.list_of_parameters if self.list_of_parameters else [None]
        total, reports = None, []
        for params in param_sets:
            visual, offsets, report = self.predict_fold(data, params, case)
            visual += offsets
            reports.append(report)
            total = visual if total is None else total.add_(visual)
        if len(param_sets) > 1:
            total /= len(param_sets)
        torch.set_num_threads(n_threads)
        self.last_report = {"case": case, "folds": reports}
        if self.report_folder is not None and case is not None:
            write_json_atomic(Path(self.report_folder) / f"{case}.json", self.last_report)
        empty_cache(self.device)
        return total

    def predict_fold(self, data: torch.Tensor, params: Optional[dict] = None, case: Optional[str] = None):
        """One fold: visual logits (float32, CPU), the positioned prior's logit offsets and the positioning
        report. ``params`` None uses the network's current weights and prior."""
        if params is not None:
            net = self.network._orig_mod if isinstance(self.network, OptimizedModule) else self.network
            net.load_state_dict(params)
        visual = self.predict_sliding_window_return_logits(data).to("cpu").float()
        offsets, report = self.prior_offsets(self._prior_for(params), visual, case)
        return visual, offsets, report

    def prior_offsets(self, prior: SpatialPrior, logits: torch.Tensor, case: Optional[str] = None):
        """The logit offsets of the positioned prior for one fold, and a report of the positioning."""
        settings = prior.settings
        shape = tuple(logits.shape[1:])
        started = time.perf_counter()
        if self.ground_truth_centres is not None and case is not None and case in self.ground_truth_centres:
            gt = self.ground_truth_centres[case]
            centres = {c: gt.get(c, gt.get(str(c))) for c in prior.built_classes}
            report = {"fold": prior.fold, "method": "ground_truth", "centres": {str(c): v for c, v in centres.items()}}
        else:
            placement = position_from_probabilities(prior, self._class_probabilities(logits),
                                                    settings["search_radius_mm"],
                                                    anatomy_tolerance_mm=settings["anatomy_tolerance_mm"],
                                                    coarse=settings["coarse_placement"])
            joint = placement.joint   # the joint search only runs for the first placement: keep it for the report
            steps = 0
            for steps in range(1, int(settings["repositioning_steps"]) + 1):
                if not placement.ok:
                    break
                driven = logits + self._offsets_from_centres(prior, shape, placement.centres)
                placement = position_from_probabilities(prior, self._class_probabilities(driven),
                                                        settings["search_radius_mm"],
                                                        start_centres=placement.centres,
                                                        anatomy_tolerance_mm=settings["anatomy_tolerance_mm"])
                if all(p.offset == [0, 0, 0] for p in placement.classes.values() if p.method == "kl"):
                    break  # converged: another step would search from the same centres
            if not placement.ok:
                msg = (f"STIPPLE: no organ of the prior was found in the first prediction of case {case}; "
                       f"using a uniform prior (plain nnU-Net output) for fold {prior.fold}.")
                warnings.warn(msg)
                return torch.zeros_like(logits), {"fold": prior.fold, "method": "uniform_fallback"}
            centres = placement.centres
            report = {"fold": prior.fold, "method": "kl_search", "repositioning_steps": steps, **placement.to_json()}
            if joint is not None:
                report["joint"] = joint
        offsets = self._offsets_from_centres(prior, shape, centres)
        report["positioning_seconds"] = time.perf_counter() - started
        return offsets, report

    def _class_probabilities(self, logits: torch.Tensor) -> np.ndarray:
        if not self.label_manager.has_regions:
            return torch.softmax(logits, 0).numpy()
        seg = self.label_manager.convert_logits_to_segmentation(logits)
        num = max(self.label_manager.all_labels) + 1
        onehot = np.zeros((num, *seg.shape), dtype=np.float32)
        for c in range(num):
            onehot[c] = np.asarray(seg) == c
        return onehot

    def _offsets_from_centres(self, prior: SpatialPrior, shape, centres) -> torch.Tensor:
        p = torch.from_numpy(prior.probabilities_on_grid(shape, centres, prior.settings["floor"]))
        if not self.label_manager.has_regions:
            return softmax_offset(p)
        return sigmoid_offset(region_probabilities(p, self.label_manager.foreground_regions,
                                                   prior.settings["floor"], channel_dim=0))


def predictor_for_trainer(trainer, predictor_class=None, **kwargs) -> nnUNetPredictor:
    """A predictor around a trainer's live network (final validation, pseudo-labels), with nnU-Net's
    validation settings (step 0.5, Gaussian weighting, mirroring)."""
    predictor_class = predictor_class or STIPPLEPredictor
    predictor = predictor_class(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=True, device=trainer.device, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False, **kwargs)
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager, None,
                                    trainer.dataset_json, trainer.__class__.__name__,
                                    trainer.inference_allowed_mirroring_axes)
    return predictor
