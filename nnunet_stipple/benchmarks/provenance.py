"""Where and with what a benchmark ran: package versions, the git commit of this checkout, the machine and the
time, as recorded in the study's study.json / run.json / results.json and in the cost benchmark's cost.json.

One place for all of them, so that every record of the benchmarks describes its provenance the same way."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Optional

# the packages whose versions change what a benchmark measures
RECORDED_PACKAGES = ("nnunet_stipple", "nnunetv2", "torch", "monai", "numpy", "scipy", "SimpleITK")


def now() -> str:
    """The local time with its UTC offset, to the second (ISO 8601)."""
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def versions() -> dict:
    """Python's version and those of :data:`RECORDED_PACKAGES` (None where one is not installed)."""
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version()}
    for pkg in RECORDED_PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def git_commit() -> Optional[str]:
    """HEAD of the checkout this package runs from, with ``-dirty`` when tracked files have changes; None outside
    a git checkout (e.g. an installed wheel) or without git."""
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=here, timeout=10)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=here, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine(device: str = "cpu") -> dict:
    """Platform, host name, CPU count and device (with the GPU's name on cuda)."""
    info = {"platform": platform.platform(), "node": platform.node(), "cpu_count": os.cpu_count(),
            "device": device}
    if device == "cuda":
        try:
            import torch
            if torch.cuda.is_available():
                info["gpu"] = torch.cuda.get_device_name(0)
        except ImportError:  # pragma: no cover
            pass
    return info
