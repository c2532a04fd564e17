"""Every trainer class of the package is what nnU-Net finds through nnUNet_extTrainer (issue 11): the re-exports
are derived from the classes, so a new variant cannot be silently missing."""
from __future__ import annotations

import importlib
import pkgutil

import pytest
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

import nnunet_stipple
import nnunet_stipple.trainers as trainers


def _defined_trainers() -> dict:
    """nnUNetTrainer subclasses defined anywhere in nnunet_stipple: every module imported, then nnU-Net's trainer
    class hierarchy walked (another route than the package's own scan of module namespaces)."""
    for info in pkgutil.walk_packages(nnunet_stipple.__path__, prefix="nnunet_stipple."):
        if ".commands." not in info.name:
            importlib.import_module(info.name)
    found, todo = {}, [nnUNetTrainer]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub.__module__.startswith("nnunet_stipple."):
                found[sub.__name__] = sub
    return found


def test_every_trainer_of_the_package_is_exported():
    defined = _defined_trainers()
    assert set(defined) == set(trainers.__all__)
    assert {"STIPPLETrainer", "nnUNetTrainer_LabelProportion", "STIPPLETrainer_PseudoLabel"} <= set(defined)


@pytest.mark.parametrize("name", trainers.__all__)
def test_nnunet_resolves_each_exported_trainer(name, monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunet_stipple.paths import ext_trainer_dir
    monkeypatch.setenv("nnUNet_extTrainer", str(ext_trainer_dir()))
    cls = recursive_find_trainer_class_by_name(name)
    assert cls.__name__ == name and cls.__module__.startswith("nnunet_stipple.trainers.")
