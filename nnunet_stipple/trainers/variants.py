"""STIPPLE trainer variants, each named after the one setting it changes."""
import torch

from nnunet_stipple.trainers.pseudo_label import STIPPLETrainer_PseudoLabel
from nnunet_stipple.trainers.stipple_trainer import STIPPLETrainer


class STIPPLETrainer_B1(STIPPLETrainer):
    """The 2D prior of the MIDL paper: one bin along z."""
    stipple_num_bins = 1


class STIPPLETrainer_B10(STIPPLETrainer):
    stipple_num_bins = 10


class STIPPLETrainer_noJitter(STIPPLETrainer):
    """The prior sits exactly at the label's organ centres in training."""
    stipple_jitter_mm = 0.0


class STIPPLETrainer_noPriorDropout(STIPPLETrainer):
    """Every training sample sees the prior (the paper's setting; weaker first predictions for positioning)."""
    stipple_prior_dropout = 0.0


class ShortScheduleMixin:
    """Sets a short schedule (epochs, iterations, validation iterations) unless stipple_run.json sets one."""
    short_schedule = (1, 3, 1)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        rc = self.run_config
        epochs, iterations, val_iterations = self.short_schedule
        self.num_epochs = rc.num_epochs or epochs
        self.num_iterations_per_epoch = rc.num_iterations_per_epoch or iterations
        self.num_val_iterations_per_epoch = rc.num_val_iterations_per_epoch or val_iterations


class STIPPLETrainer_5epochs(ShortScheduleMixin, STIPPLETrainer):
    """Short schedule for CPU studies: 5 epochs of 50 iterations."""
    short_schedule = (5, 50, 10)


class STIPPLETrainer_CPUDemo(ShortScheduleMixin, STIPPLETrainer):
    """A handful of iterations, for the demo and the end-to-end tests on CPU (not a useful model)."""


class STIPPLETrainer_PseudoLabel_CPUDemo(ShortScheduleMixin, STIPPLETrainer_PseudoLabel):
    """The loop with a handful of iterations per round, for the demo and end-to-end tests on CPU."""
    round0_trainer = "STIPPLETrainer_CPUDemo"
