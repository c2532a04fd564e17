"""nnUNetv2_stipple_env and nnunet_stipple.paths."""
import os
import subprocess

import pytest

from nnunet_stipple.commands.env import main, shell_double_quote
from nnunet_stipple.paths import ext_trainer_dir, ext_trainer_env_value

from conftest import venv_script

OURS = str(ext_trainer_dir())
SEP = os.pathsep


def test_ext_trainer_dir_holds_the_trainer_module():
    assert (ext_trainer_dir() / "stipple_trainers.py").is_file()
    assert ext_trainer_dir().is_absolute()


@pytest.mark.parametrize("current, expected", [
    (None, OURS),
    ("", OURS),
    ("/a", f"{OURS}{SEP}/a"),
    (f"/a{SEP}/b", f"{OURS}{SEP}/a{SEP}/b"),
    (f"/a{SEP}{OURS}", f"{OURS}{SEP}/a"),               # already there: moved first, not duplicated
    (f"{OURS}{SEP}{OURS}/", OURS),
    (f"/a{SEP}{SEP}/a{SEP} ", f"{OURS}{SEP}/a"),        # empty entries and duplicates dropped
])
def test_env_value(current, expected):
    assert ext_trainer_env_value(current) == expected


@pytest.mark.parametrize("current", [None, "/x/y"])
def test_cli_prints_export(monkeypatch, capsys, current):
    if current is None:
        monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    else:
        monkeypatch.setenv("nnUNet_extTrainer", current)
    assert main([]) == 0
    assert capsys.readouterr().out == f'export nnUNet_extTrainer="{ext_trainer_env_value(current)}"\n'


def test_shell_quoting():
    value = 'a"b$c`d\\e f'
    out = subprocess.run(["bash", "-c", f"eval 'x={shell_double_quote(value)}'; printf %s \"$x\""],
                         capture_output=True, text=True).stdout
    assert out == value


def test_output_is_evaluable():
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    script = venv_script("nnUNetv2_stipple_env")
    proc = subprocess.run(["bash", "-c", f'eval "$("{script}")" && printf %s "$nnUNet_extTrainer"'],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == OURS


def test_check_passes(monkeypatch, capsys):
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    assert main(["--check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f'export nnUNet_extTrainer="{OURS}"\n')
    assert "# OK: nnU-Net resolves STIPPLETrainer to nnunet_stipple.trainers" in out


def test_check_reports_failure(capsys):
    assert main(["--check", "--trainer", "NoSuchTrainer_xyz"]) == 1
    captured = capsys.readouterr()
    assert "cannot resolve the trainer NoSuchTrainer_xyz" in captured.err
