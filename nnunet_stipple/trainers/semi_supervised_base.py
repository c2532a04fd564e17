"""What every semi-supervised trainer (mean teacher, UA-MT, SASSNet, adversarial confidence) adds to nnU-Net's
trainer in the same way, in one place (:class:`UnlabeledTrainingMixin`); the methods' own parts are in their mixins.

* settings: the ``semi_supervised`` object of ``stipple_run.json`` as the method's settings class (``self.ssl``),
  recorded with the fold's trained settings and kept by ``--c`` (:meth:`trained_settings`, :meth:`resume_keys`);
* ``on_train_start``: the unlabeled cases (hidden training cases, ``imagesUnlabeled/``; never validation cases);
  with none it stops before anything trains or is written. Then nnU-Net's loaders, plus
  :class:`~nnunet_stipple.semi_supervised.unlabeled_loader.UnlabeledDataLoader` with nnU-Net's training
  augmentation over the unlabeled cases (labels never read); :meth:`next_unlabeled_batch` draws from it;
* :meth:`optimizer_step`: nnU-Net's backward, gradient clipping (norm 12) and step, with or without its grad scaler,
  for any optimizer (the extra networks have their own);
* ``on_train_epoch_end``: one line of the training log per epoch with the means of what ``train_step`` returned
  besides nnU-Net's ``loss`` (the loss parts, weights, fractions), prefixed by :attr:`log_prefix`;
* ``save_checkpoint`` / ``load_checkpoint``: nnU-Net's checkpoint (``network_weights``: the network
  ``nnUNetv2_predict`` builds, loadable by plain nnU-Net) plus one key, :attr:`checkpoint_key`, with what the method
  needs to resume (:meth:`checkpoint_extra` / :meth:`restore_checkpoint_extra`); written to a temporary file that
  replaces the checkpoint at once.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from nnunet_stipple.atomic import atomic_path
from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.pseudo_labeling.unlabeled import UnlabeledCase, UnlabeledCasesMixin
from nnunet_stipple.run_config import RUN_CONFIG_FILE
from nnunet_stipple.semi_supervised.settings import SETTINGS_KEY
from nnunet_stipple.semi_supervised.unlabeled_loader import UnlabeledDataLoader, UnlabeledImages, \
    unlabeled_batch_size
from nnunet_stipple.trainers.data_loader import nnunet_augmenter, nnunet_transforms

GRADIENT_CLIP = 12        # nnUNetTrainer.train_step's clip_grad_norm_ (nnunetv2 2.8.1)


class UnlabeledTrainingMixin(UnlabeledCasesMixin):
    """Mix in before ``nnUNetTrainer_LabelProportion``; the subclass sets ``self.ssl`` through
    :meth:`_setup_unlabeled_training` in ``__init__``."""
    takes_semi_supervised_settings = True
    checkpoint_key: str = ""              # the checkpoint's extra key (one per method)
    log_prefix: str = "semi-supervised"   # of the training log's line per epoch

    def _settings_source(self) -> str:
        return str(Path(self.output_folder_base) / RUN_CONFIG_FILE) if self.output_folder_base else RUN_CONFIG_FILE

    def _setup_unlabeled_training(self, settings) -> None:
        self.ssl = settings
        self.ssl_step = 0                  # optimizer steps taken: ramp-ups and schedules (kept by --c)
        self.dataloader_unlabeled = None

    def settings_json(self) -> dict:
        return self.ssl.to_json()

    # ---- what the fold is trained with ---------------------------------------------------------------------
    def trained_settings(self) -> dict:
        return {**super().trained_settings(), SETTINGS_KEY: self.settings_json()}

    def resume_keys(self):
        # the unlabeled pool and the method's settings change what the model learns from
        return tuple(super().resume_keys()) + (SETTINGS_KEY, "unlabeled_sources")

    @property
    def total_steps(self) -> int:
        return self.num_epochs * self.num_iterations_per_epoch

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, C, ...) logits -> probabilities, nnU-Net's nonlinearity (softmax over classes, sigmoid for regions)."""
        logits = logits.float()
        return torch.sigmoid(logits) if self.label_manager.has_regions else torch.softmax(logits, 1)

    # ---- data -------------------------------------------------------------------------------------------------
    def _checked_unlabeled_cases(self) -> List[UnlabeledCase]:
        cases = self.unlabeled_cases()
        where = Path(self.output_folder_base) / RUN_CONFIG_FILE
        if not cases:
            raise StippleInputError(
                f"{type(self).__name__} trains on unlabeled patches, and fold {self.fold} has none: label_proportion "
                f"is {self.run_config.label_proportion:g} (no hidden training cases) and unlabeled_sources "
                f"{self.run_config.unlabeled_sources} give no imagesUnlabeled/ images. Lower label_proportion in "
                f"{where}, add images to nnUNet_raw/{self.plans_manager.dataset_name}/imagesUnlabeled, or train "
                f"nnUNetTrainer_LabelProportion (plain nnU-Net) instead.")
        _, val = self.fold_split()
        leaked = sorted({c.case for c in cases} & set(val))
        if leaked:   # cannot happen through collect_unlabeled_cases; validation must stay unseen
            raise StippleInputError(f"Validation cases {leaked[:5]} are among the unlabeled cases; rename the "
                                    f"imagesUnlabeled/ files that clash with them.")
        return cases

    def describe_method(self) -> str:
        """What the start-of-training log line says about the method besides the data (e.g. who predicts)."""
        return ""

    def on_train_start(self):
        cases = self._checked_unlabeled_cases()   # before anything is built, trained or written
        super().on_train_start()
        transforms, initial_patch_size = nnunet_transforms(self, deep_supervision=False)
        u = unlabeled_batch_size(self.batch_size, self.ssl.unlabeled_batch_ratio)
        loader = UnlabeledDataLoader(UnlabeledImages(cases), u, initial_patch_size,
                                     self.configuration_manager.patch_size, self.label_manager, transforms=transforms)
        self.dataloader_unlabeled = nnunet_augmenter(self, loader)
        hidden = sum(c.hidden for c in cases)
        self.print_to_log_file(
            f"{type(self).__name__}: {len(cases)} unlabeled cases ({hidden} hidden training cases, "
            f"{len(cases) - hidden} from imagesUnlabeled), {self.batch_size} labeled + {u} unlabeled patches per "
            f"iteration; {self.describe_method()}settings {self.settings_json()}; step {self.ssl_step} of "
            f"{self.total_steps}")

    def on_train_end(self):
        super().on_train_end()
        finish = getattr(self.dataloader_unlabeled, "_finish", None)
        if finish is not None:
            finish()

    def labeled_batch_on_device(self, batch: dict):
        """nnU-Net's ``data`` and ``target`` (a list with deep supervision) on the trainer's device."""
        data = batch['data'].to(self.device, non_blocking=True)
        target = batch['target']
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) else \
            target.to(self.device, non_blocking=True)
        return data, target

    def next_unlabeled_batch(self) -> torch.Tensor:
        return next(self.dataloader_unlabeled)['data'].to(self.device, non_blocking=True)

    # ---- training step ------------------------------------------------------------------------------------------
    @staticmethod
    def optimizer_step(loss: torch.Tensor, optimizer, parameters, grad_scaler=None) -> None:
        """nnUNetTrainer.train_step's update (nnunetv2 2.8.1) for ``optimizer`` over ``parameters``."""
        parameters = list(parameters)
        if grad_scaler is not None:
            grad_scaler.scale(loss).backward()
            grad_scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, GRADIENT_CLIP)
            grad_scaler.step(optimizer)
            grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, GRADIENT_CLIP)
            optimizer.step()

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        keys = [k for k in train_outputs[0] if k != 'loss']
        means = {k: float(np.mean([o[k] for o in train_outputs])) for k in keys}
        self.print_to_log_file(f"{self.log_prefix}: " + ", ".join(f"{k} {v:.4g}" for k, v in means.items()))

    # ---- checkpoints ----------------------------------------------------------------------------------------------
    def has_checkpoint_extra(self) -> bool:
        """False until the method's extra networks exist (nnU-Net may save before initialising)."""
        return True

    def checkpoint_extra(self, checkpoint: dict) -> dict:
        """The value of :attr:`checkpoint_key`; may edit ``checkpoint`` (nnU-Net's, loaded on the CPU)."""
        raise NotImplementedError

    def restore_checkpoint_extra(self, extra: Optional[dict], checkpoint: dict, source: str) -> None:
        """Restore what :meth:`checkpoint_extra` saved (``extra`` None: a checkpoint without it, from ``source``)."""
        raise NotImplementedError

    def before_load_checkpoint(self, checkpoint: dict, source: str) -> None:
        """Called with the checkpoint before nnU-Net loads it (a method whose optimizer differs from nnU-Net's refuses
        a checkpoint without its key here, before nnU-Net's optimizer load fails on it less clearly)."""

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0 or self.disable_checkpointing or not self.has_checkpoint_extra():
            return super().save_checkpoint(filename)
        with atomic_path(filename) as tmp:
            super().save_checkpoint(str(tmp))
            checkpoint = torch.load(tmp, map_location="cpu", weights_only=False)
            checkpoint[self.checkpoint_key] = {**self.checkpoint_extra(checkpoint), "step": self.ssl_step,
                                               "settings": self.settings_json()}
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        source = filename_or_checkpoint if isinstance(filename_or_checkpoint, str) else "The"
        checkpoint = filename_or_checkpoint if isinstance(filename_or_checkpoint, dict) else \
            torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False)
        self.before_load_checkpoint(checkpoint, source)
        super().load_checkpoint(filename_or_checkpoint)    # network_weights -> self.network, optimizer, logger
        extra = checkpoint.get(self.checkpoint_key)
        self.restore_checkpoint_extra(extra, checkpoint, source)
        self.ssl_step = 0 if extra is None else int(extra["step"])
