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


class STIPPLETrainer_5epochs(STIPPLETrainer):
    """Short schedule for CPU studies: 5 epochs of 50 iterations."""
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 5
        self.num_iterations_per_epoch = 50
        self.num_val_iterations_per_epoch = 10


class STIPPLETrainer_CPUDemo(STIPPLETrainer):
    """A handful of iterations, for the demo and the end-to-end tests on CPU (not a useful model)."""
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.run_config.num_epochs or 1
        self.num_iterations_per_epoch = self.run_config.num_iterations_per_epoch or 3
        self.num_val_iterations_per_epoch = self.run_config.num_val_iterations_per_epoch or 1


class STIPPLETrainer_PseudoLabel_CPUDemo(STIPPLETrainer_PseudoLabel):
    """The loop with a handful of iterations per round, for the demo and end-to-end tests on CPU."""
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.run_config.num_epochs or 1
        self.num_iterations_per_epoch = self.run_config.num_iterations_per_epoch or 3
        self.num_val_iterations_per_epoch = self.run_config.num_val_iterations_per_epoch or 1
