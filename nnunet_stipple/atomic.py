"""Atomic writes: a file appears complete or not at all, so an interrupted run never leaves half an artefact.

Temporary files and folders come from :mod:`tempfile`, which creates them readable by their owner only (0600 /
0700); they get the permissions of a plainly created file or folder (0666 / 0777 less the umask, as nnU-Net's own
files) before they are renamed into place, so colleagues sharing ``nnUNet_preprocessed`` can read them.
"""
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np


def current_umask() -> int:
    """The process's umask (read from /proc on Linux: setting it to read it would race with other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: "str | os.PathLike") -> None:
    """Give ``path`` the mode a plain ``open`` / ``mkdir`` would have given it."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~current_umask())


def make_temp_dir(prefix: str, dir: "str | os.PathLike") -> Path:
    """A new temporary folder in ``dir`` with the umask's permissions (to be renamed into place when complete)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
    apply_umask(path)
    return path


@contextmanager
def atomic_path(target: "str | os.PathLike") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + "".join(target.suffixes), dir=target.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        apply_umask(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(target: "str | os.PathLike", obj) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False))


def write_npz_atomic(target: "str | os.PathLike", **arrays: np.ndarray) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
