"""nnU-Net trainer classes of STIPPLE. nnU-Net finds them through ``nnUNet_extTrainer`` (see README).

Every nnUNetTrainer subclass defined in a module of this package is exported here (and so re-exported by the
folder ``nnUNet_extTrainer`` points at, :mod:`.nnunet_ext.stipple_trainers`): a new trainer is found by
``nnUNetv2_train -tr`` as soon as its module is in this folder, with nothing to list by hand.
"""
import importlib
import inspect
import pkgutil

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


def _trainer_classes() -> dict:
    found = {}
    for info in pkgutil.iter_modules(__path__, prefix=f"{__name__}."):
        if info.name.endswith(".nnunet_ext"):   # the re-exporting folder itself
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, nnUNetTrainer) and obj.__module__ == module.__name__:
                found[name] = obj
    return found


TRAINERS = _trainer_classes()
globals().update(TRAINERS)
__all__ = sorted(TRAINERS)
