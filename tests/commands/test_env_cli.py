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


@pytest.mark.e2e     # nnU-Net's trainer lookup in a fresh interpreter (about 8 s each)
@pytest.mark.parametrize("current, ok, says", [
    (None, False, "nnUNet_extTrainer is not set"),
    ("/somewhere/else", False, "does not contain"),
    (OURS, True, "OK: nnU-Net resolves STIPPLETrainer to nnunet_stipple.trainers"),
    (f"/somewhere/else{SEP}{OURS}", True, "OK: nnU-Net resolves STIPPLETrainer"),
])
def test_check_tells_the_truth_about_this_shell(monkeypatch, capsys, current, ok, says):
    """Issue 12: --check used to test the value it would set, and printed OK in a shell where nnUNetv2_train
    could not find the trainer."""
    if current is None:
        monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    else:
        monkeypatch.setenv("nnUNet_extTrainer", current)
    assert main(["--check"]) == (0 if ok else 1)
    captured = capsys.readouterr()
    assert says in (captured.out if ok else captured.err)
    if not ok:
        assert 'eval "$(nnUNetv2_stipple_env)"' in captured.err


@pytest.mark.e2e
def test_check_reports_an_unknown_trainer(monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_extTrainer", OURS)
    assert main(["--check", "--trainer", "NoSuchTrainer_xyz"]) == 1
    captured = capsys.readouterr()
    assert "cannot find the trainer NoSuchTrainer_xyz" in captured.err
