"""Where nnU-Net finds the STIPPLE trainers (the ``nnUNet_extTrainer`` folder) and how to set the variable."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

EXT_TRAINER_VARIABLE = "nnUNet_extTrainer"


def ext_trainer_dir() -> Path:
    """The folder to put into ``nnUNet_extTrainer`` so that nnU-Net finds ``STIPPLETrainer`` and its variants."""
    import importlib.util
    spec = importlib.util.find_spec("nnunet_stipple.trainers")    # locates the package without importing it
    return Path(spec.origin).resolve().parent / "nnunet_ext"


def _same_dir(a: str, b: Path) -> bool:
    try:
        return Path(a).expanduser().resolve() == b
    except (OSError, RuntimeError):
        return False


def ext_trainer_env_value(current: Optional[str]) -> str:
    """The value of ``nnUNet_extTrainer`` with :func:`ext_trainer_dir` first, keeping the other entries of
    ``current`` (separated by ``os.pathsep``) in their order, without duplicates or empty entries."""
    ours = ext_trainer_dir()
    rest = [p for p in (current or "").split(os.pathsep) if p.strip() and not _same_dir(p, ours)]
    return os.pathsep.join([str(ours)] + list(dict.fromkeys(rest)))


def ensure_ext_trainer_env(environ=None) -> str:
    """Put :func:`ext_trainer_dir` into ``nnUNet_extTrainer`` of ``environ`` (default ``os.environ``).

    nnU-Net 2.8 reads the variable when it looks a trainer up, so this works in-process; worker processes
    inherit it."""
    environ = os.environ if environ is None else environ
    value = ext_trainer_env_value(environ.get(EXT_TRAINER_VARIABLE))
    environ[EXT_TRAINER_VARIABLE] = value
    return value
