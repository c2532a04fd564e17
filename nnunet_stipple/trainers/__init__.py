"""nnU-Net trainer classes of STIPPLE. nnU-Net finds them through ``nnUNet_extTrainer`` (see README)."""
from nnunet_stipple.trainers.stipple_trainer import STIPPLETrainer
from nnunet_stipple.trainers.variants import (STIPPLETrainer_B1, STIPPLETrainer_B10, STIPPLETrainer_noJitter,
                                              STIPPLETrainer_noPriorDropout, STIPPLETrainer_5epochs,
                                              STIPPLETrainer_CPUDemo, STIPPLETrainer_PseudoLabel_CPUDemo)
from nnunet_stipple.trainers.label_proportion import nnUNetTrainer_LabelProportion
from nnunet_stipple.trainers.pseudo_label import STIPPLETrainer_PseudoLabel, nnUNetTrainer_PseudoLabel

__all__ = ["STIPPLETrainer", "STIPPLETrainer_B1", "STIPPLETrainer_B10", "STIPPLETrainer_noJitter",
           "STIPPLETrainer_noPriorDropout", "STIPPLETrainer_5epochs", "STIPPLETrainer_CPUDemo",
           "STIPPLETrainer_PseudoLabel_CPUDemo", "nnUNetTrainer_LabelProportion", "STIPPLETrainer_PseudoLabel",
           "nnUNetTrainer_PseudoLabel"]
