"""nnU-Net trainer classes of STIPPLE. nnU-Net finds them through ``nnUNet_extTrainer`` (see README)."""
from nnunet_stipple.trainers.stipple_trainer import STIPPLETrainer
from nnunet_stipple.trainers.variants import (STIPPLETrainer_B1, STIPPLETrainer_B10, STIPPLETrainer_noJitter,
                                              STIPPLETrainer_noPriorDropout, STIPPLETrainer_5epochs,
                                              STIPPLETrainer_CPUDemo)

__all__ = ["STIPPLETrainer", "STIPPLETrainer_B1", "STIPPLETrainer_B10", "STIPPLETrainer_noJitter",
           "STIPPLETrainer_noPriorDropout", "STIPPLETrainer_5epochs", "STIPPLETrainer_CPUDemo"]
