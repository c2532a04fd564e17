"""nnUNetv2_stipple_env: print the shell line that lets nnU-Net find the STIPPLE trainers (nnUNet_extTrainer)."""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from typing import Optional, Sequence

PROG = "nnUNetv2_stipple_env"
CHECK_TRAINER = "STIPPLETrainer"

_CHECK_SNIPPET = """
import sys
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
cls = recursive_find_trainer_class_by_name(sys.argv[1])
print("FOUND", cls.__module__ + "." + cls.__name__)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Print the shell line `export nnUNet_extTrainer=...` that makes nnU-Net (nnUNetv2_train, "
            "nnUNetv2_predict, ...) find the STIPPLE trainers. The STIPPLE folder is put first and any existing "
            "value is kept. Use it as `eval \"$(nnUNetv2_stipple_env)\"`, or append its output to ~/.bashrc."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--check", action="store_true",
                        help=f"instead of printing the export line, check whether nnU-Net resolves the trainer "
                             f"'{CHECK_TRAINER}' in THIS shell (with its current nnUNet_extTrainer, in a fresh Python "
                             f"process); prints OK, or what is wrong and the line to run, exit status 1 on failure")
    parser.add_argument("--trainer", default=CHECK_TRAINER, help="trainer class name that --check looks up")
    return parser


def check_trainer_lookup(value: str, trainer: str = CHECK_TRAINER) -> tuple:
    """(ok, message): whether nnU-Net's trainer lookup finds ``trainer`` with ``nnUNet_extTrainer=value``.

    Runs in a fresh interpreter with the variable set, because some nnU-Net 2.x versions read
    ``nnUNet_extTrainer`` once when ``nnunetv2.paths`` is imported (2.8 reads it at lookup time)."""
    env = dict(os.environ, nnUNet_extTrainer=value)
    proc = subprocess.run([sys.executable, "-c", _CHECK_SNIPPET, trainer], env=env, capture_output=True, text=True)
    found = [line for line in proc.stdout.splitlines() if line.startswith("FOUND ")]
    if proc.returncode == 0 and found:
        return True, found[-1][len("FOUND "):]
    tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
    return False, tail


def shell_double_quote(value: str) -> str:
    """``value`` in double quotes for POSIX shells (``\\``, ``"``, ``$`` and backquote escaped)."""
    return '"' + re.sub(r'([\\"$`])', r'\\\1', value) + '"'


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from nnunet_stipple.paths import EXT_TRAINER_VARIABLE, ext_trainer_dir, ext_trainer_env_value
    current = os.environ.get(EXT_TRAINER_VARIABLE)
    if not args.check:
        print(f"export {EXT_TRAINER_VARIABLE}={shell_double_quote(ext_trainer_env_value(current))}")
        return 0
    ok, message = check_trainer_lookup(current or "", args.trainer)
    if ok:
        print(f"OK: nnU-Net resolves {args.trainer} to {message} in this shell "
              f"({EXT_TRAINER_VARIABLE}={current})")
        return 0
    if not current:
        why = f"{EXT_TRAINER_VARIABLE} is not set"
    elif str(ext_trainer_dir()) not in current.split(os.pathsep):
        why = f"{EXT_TRAINER_VARIABLE}={current} does not contain {ext_trainer_dir()}"
    else:
        why = f"{EXT_TRAINER_VARIABLE}={current}: {message}"
    print(f"{PROG}: error: nnU-Net cannot find the trainer {args.trainer} in this shell: {why}. Run\n"
          f'    eval "$({PROG})"\n'
          f"(and add that line to ~/.bashrc, or source the project's .venv/bin/activate).", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
