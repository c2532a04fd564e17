"""STIPPLE prediction: nnU-Net's predictor with the fold's prior positioned and added once per case.

One network pass per fold and case. The stitched full-volume logits (the "visual" prediction) give a
first segmentation; the fold's prior is placed from it by
:func:`nnunet_stipple.positioning.procedure.place_prior` (the procedure ``nnUNetv2_stipple_position`` runs
too), with the positioning settings stored in the fold's checkpoint or given to the predictor, and ``ln p``
is added once, in float32, to the full-volume logits. Sliding-window averaging, mirroring and fold averaging are linear,
so this equals adding the prior per patch, without the fp16 stitching error. nnU-Net's export then turns
the prior-driven logits into segmentations and (``--save_probabilities``) prior-driven probabilities.

Positioning and ``ln p`` run where nnU-Net left the logits: on the GPU with ``perform_everything_on_device``
(only the positioning report leaves it before the fold's result does, as nnU-Net moves each fold's logits
to the CPU), on the CPU otherwise; when the GPU runs out of memory, the fold is positioned on the CPU, as
nnU-Net falls back for its sliding window (:func:`with_cpu_fallback`).
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.helpers import empty_cache
from torch._dynamo import OptimizedModule

from nnunet_stipple.activation.prior_driven import class_sigmoid_offsets, region_probabilities, sigmoid_offset
from nnunet_stipple.atomic import write_json_atomic
from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.positioning.layout import layout_line
from nnunet_stipple.positioning.procedure import LAYOUT_FALLBACK, UNIFORM_FALLBACK, PriorPlacement, place_at_centres, \
    place_prior
from nnunet_stipple.positioning.settings import PositioningSettings, stored_positioning_settings
from nnunet_stipple.priors.prior_module import PRIOR_ATTRIBUTE, allow_prior_free_forward, prior_module_of, \
    prior_of_state_dict, unwrap_network
from nnunet_stipple.priors.spatial_prior import DEFAULT_FLOOR, SpatialPrior, check_floor
from nnunet_stipple.tensors import one_thread_on_cpu

POSITIONING_FOLDER = "stipple_positioning"
# key of the stored trainer settings: one sigmoid per class behind a fixed background logit (the INERRANT trainers)
CLASS_SIGMOID_KEY = "class_sigmoid"


@dataclass(frozen=True)
class FoldPrior:
    """One fold's prior with what prediction needs besides it: the floor the model was trained with
    (``stipple_floor``) and the positioning settings (the checkpoint's, with the predictor's overrides)."""
    prior: SpatialPrior
    floor: float
    positioning: PositioningSettings
    class_sigmoid: bool = False    # per-class sigmoid outputs (STIPPLETrainer_INERRANT): Eq. 3 offsets per class


class STIPPLEPredictor(nnUNetPredictor):
    """Drop-in replacement of ``nnUNetPredictor`` for models trained with a STIPPLE trainer.

    ``ground_truth_centres`` (case id -> {class: centre}) places the prior at known organ centres instead
    of positioning it, for studies of positioning quality. ``positioning_overrides`` (setting name -> value,
    see :class:`PositioningSettings`) replace the settings stored in the checkpoints. ``report_folder``
    receives one JSON per case with the chosen prior position, positioning confidence and positioning
    settings of every fold."""

    def __init__(self, *args, ground_truth_centres: Optional[Dict[str, Dict[int, list]]] = None,
                 report_folder: Optional[str] = None, positioning_overrides: Optional[Mapping[str, Any]] = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.ground_truth_centres = ground_truth_centres
        self.report_folder = report_folder
        self.positioning_overrides = dict(positioning_overrides or {})
        # checked now: a bad value must not wait until a model is loaded
        PositioningSettings().with_overrides(self.positioning_overrides, "positioning_overrides")
        self.last_report: Optional[dict] = None
        self.case_reports: List[dict] = []      # every case predicted by this predictor (for the summary)
        self._current_case: Optional[str] = None
        self._sequential_cases: Optional[List[Optional[str]]] = None
        self._in_sequential = False
        self._fold_priors: Dict[int, FoldPrior] = {}

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
            self._check_prior_matches(self.fold_prior(params, str(ckpt)).prior, str(ckpt))

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

    def fold_prior(self, params: Optional[dict], source: str = "the checkpoint") -> FoldPrior:
        """The prior of one fold's parameters (None: the network's current prior) and its settings;
        ``source`` names the checkpoint in errors."""
        key = id(params)
        if key not in self._fold_priors:
            if params is None:
                module = prior_module_of(self.network)
                if not module.is_set:
                    raise StippleInputError("The network holds no STIPPLE prior.")
                prior, stored = module.spatial_prior(), module.settings
            else:
                prior, stored = prior_of_state_dict(params, source)
            floor = stored.get("floor", DEFAULT_FLOOR)
            check_floor(floor)
            positioning = stored_positioning_settings(stored, source).with_overrides(
                self.positioning_overrides, "positioning_overrides")
            self._fold_priors[key] = FoldPrior(prior, floor, positioning,
                                               bool(stored.get(CLASS_SIGMOID_KEY, False)))
        return self._fold_priors[key]

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
        problem = check_input_intensities(data, case)
        for params in param_sets:
            visual, offsets, report = self.predict_fold(data, params, case)
            # like nnU-Net, each fold's result leaves the device before the next fold runs (memory)
            driven = visual.add_(offsets).to("cpu")
            del visual, offsets
            reports.append(report)
            total = driven if total is None else total.add_(driven)
        if len(param_sets) > 1:
            total /= len(param_sets)
        torch.set_num_threads(n_threads)
        self.last_report = {"case": case, "folds": reports}
        if problem:
            self.last_report["input_problem"] = problem
        if self.report_folder is not None and case is not None:
            write_json_atomic(Path(self.report_folder) / f"{case}.json", self.last_report)
        self.case_reports.append(self.last_report)
        print(positioning_line(self.last_report))
        empty_cache(self.device)
        return total

    def predict_fold(self, data: torch.Tensor, params: Optional[dict] = None, case: Optional[str] = None):
        """One fold: visual logits (float32), the positioned prior's logit offsets and the positioning report.
        ``params`` None uses the network's current weights and prior. The logits and offsets are on the device
        with ``perform_everything_on_device`` (on the CPU without it, or when the device ran out of memory)."""
        if params is not None:
            net = self.network._orig_mod if isinstance(self.network, OptimizedModule) else self.network
            net.load_state_dict(params)
        visual = self.predict_sliding_window_return_logits(data).float()
        fold = self.fold_prior(params)
        (offsets, report), visual = with_cpu_fallback(lambda logits: self.prior_offsets(fold, logits, case), visual)
        return visual, offsets, report

    def prior_offsets(self, fold: FoldPrior, logits: torch.Tensor, case: Optional[str] = None):
        """The logit offsets of the positioned prior for one fold (zero: uniform prior), on the device of
        ``logits``, and the report of the placement."""
        prior, shape = fold.prior, tuple(logits.shape[1:])
        started = time.perf_counter()
        with one_thread_on_cpu(logits.device):
            placement = self.place(fold, logits, case)
            if placement.centres is None:
                offsets = torch.zeros_like(logits)
            else:
                offsets = self._offsets_from_centres(fold, shape, placement.centres, logits.device)
        if logits.device.type == "cuda":
            torch.cuda.synchronize(logits.device)   # the seconds of the work, not of queueing it
        report = {"fold": prior.fold, **placement.report, "positioning_seconds": time.perf_counter() - started}
        return offsets, report

    def place(self, fold: FoldPrior, logits: torch.Tensor, case: Optional[str] = None) -> PriorPlacement:
        """Where the fold's prior goes in a case: the known centres of ``ground_truth_centres``, else the
        placement from the first prediction (``logits``, the network's visual logits), on their device."""
        if self.ground_truth_centres is not None and case is not None and case in self.ground_truth_centres:
            known = {int(c): centre for c, centre in self.ground_truth_centres[case].items()}
            return place_at_centres(fold.prior, known, "ground_truth")
        driven = None
        if self.label_manager.has_regions or fold.class_sigmoid:
            # sigmoid outputs: the prior-driven prediction needs the logits (the default of place_prior is
            # the prior-driven softmax)
            def driven(centres):
                return self._class_probabilities(
                    logits + self._offsets_from_centres(fold, logits.shape[1:], centres, logits.device))
        return place_prior(fold.prior, self._class_probabilities(logits), fold.positioning, fold.floor,
                           driven_probabilities=driven, case=case)

    def _class_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.label_manager.has_regions:
            return torch.softmax(logits, 0)
        seg = self.label_manager.convert_logits_to_segmentation(logits)
        num = max(self.label_manager.all_labels) + 1
        return torch.stack([seg == c for c in range(num)]).float()

    def _offsets_from_centres(self, fold: FoldPrior, shape, centres, device) -> torch.Tensor:
        if fold.class_sigmoid:   # 0 on the fixed background logit, Eq. 3 on each class
            p = fold.prior.probabilities_on_grid(tuple(shape), centres, fold.floor, device=device)
            return class_sigmoid_offsets(p, fold.floor, channel_dim=0)
        if not self.label_manager.has_regions:    # softmax_offset(p) = ln p
            return fold.prior.log_probabilities_on_grid(tuple(shape), centres, fold.floor, device=device)
        p = fold.prior.probabilities_on_grid(tuple(shape), centres, fold.floor, device=device)
        return sigmoid_offset(region_probabilities(p, self.label_manager.foreground_regions, fold.floor,
                                                   channel_dim=0))


def with_cpu_fallback(work, logits: torch.Tensor):
    """``work(logits)`` where the logits are, and again on the CPU if their device runs out of memory (nnU-Net's
    fallback of ``perform_everything_on_device``); returns its result and the logits it ran on."""
    try:
        return work(logits), logits
    except torch.OutOfMemoryError:
        if logits.device.type == "cpu":
            raise
        device = logits.device
        print(f"STIPPLE positioning ran out of memory on {device}; positioning on the CPU")
        logits = logits.to("cpu")
        empty_cache(device)
        return work(logits), logits


def check_input_intensities(data: torch.Tensor, case: Optional[str]) -> Optional[str]:
    """What is wrong with a preprocessed case's intensities (None when nothing is), with a warning: NaN or infinite
    voxels, or an image without any contrast (e.g. a NIfTI of NaNs, which SimpleITK reads as zeros) still give a
    full, confident-looking segmentation."""
    finite = torch.isfinite(data)
    if not bool(finite.all()):
        fraction = 1.0 - float(finite.float().mean())
        problem = f"{100 * fraction:.1f} % of the image's voxels are NaN or infinite"
    elif all(bool((channel == channel.flatten()[0]).all()) for channel in data):
        problem = "the image is constant (no contrast at all; a file of NaNs is read as zeros)"
    else:
        return None
    warnings.warn(f"STIPPLE: case {case}: {problem}: its segmentation is meaningless. Check the image file.")
    return problem


def positioning_line(report: dict) -> str:
    """One readable line per predicted case: per fold, how the prior was placed, its confidence, the organs the
    consistency check rejected, a layout flag, and the seconds positioning took."""
    parts = []
    for fold in report["folds"]:
        classes = fold.get("classes", {})
        rejected = [v.get("name", k) for k, v in classes.items() if v.get("rejected_centre") is not None]
        confidence = fold.get("confidence")
        layout = fold.get("layout")
        parts.append(f"fold {fold.get('fold')}: {fold.get('method')}"
                     + (f", confidence {confidence:.2f}" if isinstance(confidence, (int, float)) else "")
                     + (f", {layout_line(layout)}" if layout and layout.get("status") == "flagged" else "")
                     + (f", rejected by the consistency check: {', '.join(rejected)}" if rejected else "")
                     + (f", {fold['positioning_seconds']:.1f} s" if "positioning_seconds" in fold else ""))
    warning = f"; INPUT: {report['input_problem']}" if report.get("input_problem") else ""
    return f"STIPPLE positioning {report.get('case')}: " + "; ".join(parts) + warning


def positioning_summary(reports: List[dict]) -> str:
    """The summary line after a prediction run."""
    folds = [f for r in reports for f in r["folds"]]
    if not folds:
        return "STIPPLE positioning: no case predicted"
    fallbacks = sum(f.get("method") == UNIFORM_FALLBACK for f in folds)
    flagged = [r.get("case") for r in reports if any((f.get("layout") or {}).get("status") == "flagged"
                                                     for f in r["folds"])]
    layout_fallbacks = sum(f.get("method") == LAYOUT_FALLBACK for f in folds)
    confidences = [f["confidence"] for f in folds if isinstance(f.get("confidence"), (int, float))]
    seconds = sum(f.get("positioning_seconds", 0.0) for f in folds)
    rejected = sum(v.get("rejected_centre") is not None for f in folds for v in f.get("classes", {}).values())
    suspicious = sum(bool(r.get("input_problem")) for r in reports)
    return (f"STIPPLE positioning: {len(reports)} cases, {len(folds)} placements, {fallbacks} with a uniform prior "
            f"(no organ found), mean confidence {np.mean(confidences) if confidences else float('nan'):.2f}, "
            f"{rejected} organ placements rejected by the consistency check, {seconds:.1f} s in all"
            + (f"; {len(flagged)} cases flagged by the layout check ({', '.join(map(str, flagged))}), "
               f"{layout_fallbacks} placements left uniform for it" if flagged else "")
            + (f"; {suspicious} cases with a constant or non-finite image" if suspicious else ""))


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
