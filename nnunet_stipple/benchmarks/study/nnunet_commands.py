"""How the study calls nnU-Net's console commands: where they are, the training command and its environment
(one ``nnUNet_results`` root per run, the STIPPLE trainers on ``nnUNet_extTrainer``), logged planning commands
and the error line of a failed training's log."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, List, Optional

from nnunet_stipple.benchmarks.provenance import now
from nnunet_stipple.errors import StippleInputError

# runs one training: (command, environment, log file) -> exit code; tests pass a fake trainer
Runner = Callable[[List[str], dict, Path], int]


def console_script(name: str) -> str:
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    return found or name


def ext_trainer_folder() -> Path:
    try:
        from nnunet_stipple.paths import ext_trainer_dir
        return ext_trainer_dir()
    except ImportError:   # pragma: no cover - older layout
        import nnunet_stipple.trainers
        return Path(nnunet_stipple.trainers.__file__).resolve().parent / "nnunet_ext"


def train_command(dataset_name: str, configuration: str, fold: int, trainer: str, plans: str,
                  device: str) -> List[str]:
    return [console_script("nnUNetv2_train"), dataset_name, configuration, str(fold), "-tr", trainer, "-p", plans,
            "--c", "-device", device]


def train_env(run_root: Path, base: Optional[dict] = None) -> dict:
    from nnunet_stipple.paths import ext_trainer_env_value
    env = dict(os.environ if base is None else base)
    env["nnUNet_results"] = str(Path(run_root).resolve())
    try:
        env["nnUNet_extTrainer"] = ext_trainer_env_value(env.get("nnUNet_extTrainer"))
    except ImportError:  # pragma: no cover
        env["nnUNet_extTrainer"] = str(ext_trainer_folder())
    return env


def subprocess_runner(cmd: List[str], env: Optional[dict], log_file: Path) -> int:
    """Run ``cmd`` with its output appended to ``log_file`` after a line with the time and the command."""
    with open(log_file, "a") as f:
        f.write(f"\n# {now()} $ {' '.join(cmd)}\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode


def last_error_line(log_file: Path) -> Optional[str]:
    """The last line of a training log that looks like a Python exception (for run.json and the console)."""
    try:
        lines = Path(log_file).read_text(errors="replace").splitlines()[-400:]
    except OSError:
        return None
    for line in reversed(lines):
        head = line.split(":", 1)[0].strip()
        if head and " " not in head and (head.endswith(("Error", "Exception", "Interrupt")) or head == "Killed"):
            return line.strip()[:500]
    return None


def run_logged(cmd: List[str], log_file: Path, log: Callable[[str], None], env: Optional[dict] = None) -> None:
    """Run a planning command (output to ``log_file``); StippleInputError if it fails."""
    log(f"$ {' '.join(cmd)}   (log: {log_file})")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    rc = subprocess_runner(cmd, env, log_file)
    if rc != 0:
        raise StippleInputError(f"`{' '.join(cmd)}` failed (exit {rc}); see {log_file}.")
