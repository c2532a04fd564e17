"""STIPPLETrainer: nnU-Net training whose final activation is the prior-driven softmax (or sigmoid).

What it changes in nnUNetTrainer, hook by hook:

* ``build_network_architecture``: nnU-Net's network plus a :class:`PriorModule` (the fold's prior as
  buffers, so checkpoints and exported zips carry it) and a guard that stops plain ``nnUNetPredictor``.
* ``initialize``: builds or reuses the fold's prior (``nnUNet_preprocessed/<dataset>/stipple_priors``)
  from the fold's training cases and loads it into the network.
* ``get_dataloaders``: nnU-Net's pipeline with :class:`STIPPLEDataLoader`, which carries the voxel
  coordinates of each patch through the augmentation.
* ``train_step`` / ``validation_step``: look the prior up at the augmented coordinates (organ boxes at the
  label's organ centres plus random jitter; some samples get a uniform prior, see below) and add
  ``ln p`` to every deep-supervision output before nnU-Net's loss sees it (a forward hook on the network).
* ``perform_actual_validation``: STIPPLE prediction (positioned prior) for the final validation, so
  ``nnUNetv2_find_best_configuration`` and ``nnUNetv2_ensemble`` see prior-driven probabilities.

Prior dropout: a network trained only with the prior leans on it so much that its prior-free logits,
which are what positions the prior at test time, become a poor first prediction. A fraction of the
training samples therefore gets a uniform prior (plain softmax), which keeps the visual logits usable.

Settings are class attributes (variants in :mod:`.variants` change one each); they are written to
``stipple.json`` in the fold folder and stored in the checkpoint with the prior. The positioning settings
(``stipple_search_radius_mm`` ...) become one :class:`PositioningSettings` when the trainer is created,
which checks them.
"""
from __future__ import annotations

import multiprocessing
import warnings
from pathlib import Path
from time import sleep
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from nnunetv2.configuration import default_num_processes
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
from nnunetv2.inference.export_prediction import export_prediction_from_logits
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.file_path_utilities import check_workers_alive_and_busy
from torch import distributed as dist

from nnunet_stipple.activation.prior_driven import region_probabilities, sigmoid_offset, softmax_offset
from nnunet_stipple.atomic import write_json_atomic
from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.positioning.settings import STORED_KEY, PositioningSettings
from nnunet_stipple.priors.algorithm import DEFAULT_NUM_BINS, box_start
from nnunet_stipple.priors.build import load_or_build, prior_path
from nnunet_stipple.nnunet_folders import open_preprocessed
from nnunet_stipple.priors.prior_module import allow_prior_free_forward, attach_prior_module, prior_module_of, \
    unwrap_network
from nnunet_stipple.priors.spatial_prior import DEFAULT_FLOOR, SpatialPrior, combine_class_probabilities
from nnunet_stipple.trainers.data_loader import BATCH_KEY, STIPPLEDataLoader, nnunet_augmenter, nnunet_transforms
from nnunet_stipple.trainers.label_proportion import LabelProportionMixin


class STIPPLETrainer(LabelProportionMixin, nnUNetTrainer):
    stipple_num_bins: int = DEFAULT_NUM_BINS  # B of Algorithm 1 (B = 1: the 2D prior of the MIDL paper)
    stipple_floor: float = DEFAULT_FLOOR      # every class probability is floored here before renormalising
    stipple_jitter_mm: float = 10.0           # uniform random prior translation in training, per axis (+-)
    stipple_prior_dropout: float = 0.2        # fraction of training samples with a uniform prior
    # positioning (stored in the checkpoint, used by STIPPLE prediction; nnunet_stipple.positioning.settings
    # says what each does): stipple_<setting> for every field of PositioningSettings
    stipple_search_radius_mm: float = PositioningSettings.search_radius_mm
    stipple_repositioning_steps: int = PositioningSettings.repositioning_steps
    stipple_anatomy_tolerance_mm: float = PositioningSettings.anatomy_tolerance_mm
    stipple_coarse_placement: str = PositioningSettings.coarse_placement
    stipple_layout_guard: str = PositioningSettings.layout_guard

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # checked now, not when the final validation first positions a prior after the whole training
        self.positioning_settings = PositioningSettings.from_trainer(self)
        self._read_run_config()
        if self.run_config.num_bins is not None:
            self.stipple_num_bins = self.run_config.num_bins
        self.case_centres: Dict[str, Dict[int, List[float]]] = {}
        self._prior_offsets_for_batch: Optional[List[torch.Tensor]] = None
        self._stipple_rng = np.random.default_rng()

    # ---- settings -----------------------------------------------------------------------------------------
    def stipple_settings(self) -> dict:
        return {"trainer": self.__class__.__name__, "run_config": self.run_config.to_json(),
                "num_bins": self.stipple_num_bins, "floor": self.stipple_floor,
                "jitter_mm": self.stipple_jitter_mm, "prior_dropout": self.stipple_prior_dropout,
                STORED_KEY: self.positioning_settings.to_json()}

    # ---- network ------------------------------------------------------------------------------------------
    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        network = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager,
                                                           num_input_channels, num_output_channels,
                                                           enable_deep_supervision)
        return attach_prior_module(network)

    def initialize(self):
        if self.configuration_manager.previous_stage_name is not None:
            raise StippleInputError(f"STIPPLE does not support cascade configurations "
                                    f"('{self.configuration_name}'); use 2d, 3d_lowres or 3d_fullres.")
        super().initialize()
        allow_prior_free_forward(unwrap_network(self.network))
        self._load_fold_prior()
        self.network.register_forward_hook(self._add_prior_to_outputs)

    # ---- prior of the fold --------------------------------------------------------------------------------
    def prior_training_cases(self, tr_keys: List[str]) -> List[str]:
        """Cases whose labels build the prior (all of the fold's training cases; pseudo-label trainers
        restrict this to the labeled ones)."""
        return list(tr_keys)

    def _load_fold_prior(self) -> None:
        tr_keys, val_keys = self.do_split()
        ds = open_preprocessed(self.plans_manager.dataset_name, self.configuration_name,
                               self.plans_manager.plans_name)
        training_cases = self.prior_training_cases(tr_keys)
        centre_cases = sorted(set(tr_keys) | set(val_keys))
        path = self._prior_path = self.prior_file(ds)
        if self.local_rank == 0:
            prior, _ = load_or_build(ds, self.fold, self.stipple_num_bins, training_cases=training_cases,
                                     centre_cases=centre_cases, path=path, log=self.print_to_log_file)
        if self.is_ddp:
            dist.barrier()
            if self.local_rank != 0:
                prior = SpatialPrior.load(path)
        prior_module_of(self.network).set_prior(prior, self.stipple_settings())
        prior_module_of(self.network).to(self.device)
        self.case_centres = {case: dict(c) for case, c in prior.case_centres.items()}
        self._prior = prior

    def prior_file(self, ds) -> Path:
        path = prior_path(ds, self.fold, self.stipple_num_bins)
        rc = self.run_config
        if rc.label_proportion < 1:  # a prior per labeled subset: runs at other proportions keep theirs
            path = path.with_name(f"{path.stem}_alpha{rc.label_proportion:g}_seed{rc.label_seed}.npz")
        return path

    # ---- data -----------------------------------------------------------------------------------------------
    def get_dataloaders(self):
        # Same as nnUNetTrainer.get_dataloaders (nnunetv2 2.8.1) with STIPPLEDataLoader as the loader class.
        patch_size = self.configuration_manager.patch_size
        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        loaders = [STIPPLEDataLoader(dataset, self.batch_size, initial, patch_size, self.label_manager,
                                     oversample_foreground_percent=self.oversample_foreground_percent,
                                     sampling_probabilities=None, pad_sides=None, transforms=transforms,
                                     probabilistic_oversampling=self.probabilistic_oversampling)
                   for dataset, (transforms, initial) in ((dataset_tr, nnunet_transforms(self)),
                                                          (dataset_val, nnunet_transforms(self, validation=True)))]
        return nnunet_augmenter(self, loaders[0]), nnunet_augmenter(self, loaders[1], validation=True)

    # ---- prior-driven outputs -------------------------------------------------------------------------------
    def train_step(self, batch: dict) -> dict:
        self._prior_offsets_for_batch = self.prior_offsets_for_batch(batch, training=True)
        try:
            return super().train_step(batch)
        finally:
            self._prior_offsets_for_batch = None

    def validation_step(self, batch: dict) -> dict:
        self._prior_offsets_for_batch = self.prior_offsets_for_batch(batch, training=False)
        try:
            return super().validation_step(batch)
        finally:
            self._prior_offsets_for_batch = None

    def _add_prior_to_outputs(self, module, inputs, output):
        offsets = self._prior_offsets_for_batch
        if offsets is None:
            return output
        if isinstance(output, (list, tuple)):
            # float32 offsets promote fp16 autocast outputs: the prior is added in full precision
            return type(output)(o + off for o, off in zip(output, offsets))
        return output + offsets[0]

    def prior_offsets_for_batch(self, batch: dict, training: bool) -> List[torch.Tensor]:
        """``ln p`` (or the sigmoid offset) for every output resolution of the batch."""
        coords = batch.pop(BATCH_KEY).to(self.device, non_blocking=True)
        validity = coords[:, 3]
        xyz = coords[:, :3] / validity.clamp_min(1e-6).unsqueeze(1)
        n = coords.shape[0]
        prior = self._prior
        starts, present = {}, {}
        spacing = np.asarray(prior.spacing, dtype=np.float64)
        jitter = np.floor(self.stipple_jitter_mm / spacing).astype(int) if training else np.zeros(3, int)
        for c in prior.built_classes:
            box = prior.box_size(c)
            s = np.zeros((n, 3), dtype=np.int64)
            pres = np.zeros(n, dtype=bool)
            for i, key in enumerate(batch['keys']):
                centre = self.case_centres.get(key, {}).get(c)
                if centre is None:
                    continue
                pres[i] = True
                s[i] = box_start(centre, box) + self._stipple_rng.integers(-jitter, jitter + 1)
            starts[c] = torch.from_numpy(s)
            present[c] = torch.from_numpy(pres)
        q = prior_module_of(self.network).organ_probabilities_at(xyz, starts, present)
        p = combine_class_probabilities(q, self.stipple_floor, channel_dim=1)
        uniform = validity < 0.5
        if training and self.stipple_prior_dropout > 0:
            drop = torch.from_numpy(self._stipple_rng.random(n) < self.stipple_prior_dropout).to(self.device)
            uniform = uniform | drop.view((n,) + (1,) * (uniform.ndim - 1))
        p = torch.where(uniform.unsqueeze(1), torch.full_like(p, 1.0 / p.shape[1]), p)
        targets = batch['target'] if isinstance(batch['target'], list) else [batch['target']]
        offsets = []
        for t in targets:
            size = tuple(t.shape[2:])
            pt = p if tuple(p.shape[2:]) == size else F.interpolate(p, size=size, mode='area')
            offsets.append(self.output_offset(pt, uniform, size, batch))
        return offsets

    def output_offset(self, pt: torch.Tensor, uniform: torch.Tensor, size, batch: dict) -> torch.Tensor:
        """The logit offset of one output resolution from the class prior ``pt`` (B, 1 + K, *size) and the
        full-resolution map of voxels with a uniform prior (subclasses with other outputs override this)."""
        if self.label_manager.has_regions:
            off = sigmoid_offset(region_probabilities(pt, self.label_manager.foreground_regions, self.stipple_floor))
            if uniform.any():  # a uniform prior means no offset for a sigmoid either
                u = uniform.float().unsqueeze(1)
                u = u if tuple(u.shape[2:]) == size else F.interpolate(u, size=size, mode='area')
                off = off * (u < 0.5)
            return off
        return softmax_offset(pt)

    # ---- bookkeeping ----------------------------------------------------------------------------------------
    def on_train_start(self):
        super().on_train_start()
        self.print_to_log_file(
            "STIPPLE: the 'Pseudo dice' of each epoch is measured with the prior at each validation patch's true "
            "organ centres (as in training, without jitter), so it is optimistic; the final validation places the "
            "prior automatically from the network's own prediction (STIPPLE prediction) and gives the honest figure.")
        if self.local_rank == 0:
            write_json_atomic(Path(self.output_folder) / "stipple.json",
                              {**self.stipple_settings(), "prior_file": str(self._prior_path)})

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        module = prior_module_of(self.network)
        if not module.is_set:
            raise StippleInputError(f"{filename_or_checkpoint} holds no STIPPLE prior; it was not written by a "
                                    f"STIPPLE trainer.")
        module.to(self.device)
        self._prior = module.spatial_prior()

    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's final validation with STIPPLE prediction (positioned prior) instead of plain logits."""
        from nnunet_stipple.inference.predictor import predictor_for_trainer
        self.set_deep_supervision_enabled(False)
        self.network.eval()
        validation_folder = Path(self.output_folder) / 'validation'
        validation_folder.mkdir(parents=True, exist_ok=True)
        predictor = predictor_for_trainer(self, report_folder=str(validation_folder / 'stipple_positioning'))
        _, val_keys = self.do_split()
        if self.is_ddp:
            val_keys = val_keys[self.local_rank:: dist.get_world_size()]
        dataset_val = self.dataset_class(self.preprocessed_dataset_folder, val_keys,
                                         folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
        with multiprocessing.get_context("spawn").Pool(default_num_processes) as export_pool:
            workers = list(export_pool._pool)
            results = []
            for k in dataset_val.identifiers:
                while check_workers_alive_and_busy(export_pool, workers, results, allowed_num_queued=2):
                    sleep(0.1)
                self.print_to_log_file(f"predicting {k}")
                data, _, _, properties = dataset_val.load_case(k)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    data = torch.from_numpy(data[:])
                logits = predictor.predict_with_prior(data, k)
                results.append(export_pool.starmap_async(export_prediction_from_logits, (
                    (logits, properties, self.configuration_manager, self.plans_manager, self.dataset_json,
                     str(validation_folder / k), save_probabilities),)))
            _ = [r.get() for r in results]
        if self.is_ddp:
            dist.barrier()
        if self.local_rank == 0:
            lm = self.label_manager
            metrics = compute_metrics_on_folder(
                str(Path(self.preprocessed_dataset_folder_base) / 'gt_segmentations'), str(validation_folder),
                str(validation_folder / 'summary.json'), self.plans_manager.image_reader_writer_class(),
                self.dataset_json["file_ending"], lm.foreground_regions if lm.has_regions else lm.foreground_labels,
                lm.ignore_label, chill=True,
                num_processes=default_num_processes * dist.get_world_size() if self.is_ddp else default_num_processes)
            for label in metrics["mean"]:
                self.logger.log_summary(f"final_val/class_{label}_dice", metrics["mean"][label]["Dice"])
            self.logger.log_summary("final_val/foreground_dice", metrics['foreground_mean']["Dice"])
            self.print_to_log_file("Validation complete", also_print_to_console=True)
            self.print_to_log_file("Mean Validation Dice (STIPPLE prediction): ",
                                   metrics['foreground_mean']["Dice"], also_print_to_console=True)
        self.set_deep_supervision_enabled(True)
        compute_gaussian.cache_clear()
