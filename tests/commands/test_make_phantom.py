"""Tests for the nnUNetv2_stipple_make_phantom command."""
import json

import pytest

from nnunet_stipple.commands.make_phantom import main

SMALL = ["--num-labeled", "2", "--num-unlabeled", "1", "--shape", "16", "24", "24"]


def test_cli_round_trip(tmp_path, capsys):
    rc = main(["-d", "991", "-n", "CliPhantom", "--seed", "3", "--spacing", "3", "1.5", "1.5", "--raw",
               str(tmp_path), *SMALL])
    assert rc == 0
    folder = tmp_path / "Dataset991_CliPhantom"
    assert capsys.readouterr().out.strip() == str(folder)
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["numTraining"] == 2
    assert dj["stipple_phantom"]["seed"] == 3
    assert dj["stipple_phantom"]["shape"] == [16, 24, 24]
    assert dj["stipple_phantom"]["spacing"] == [3.0, 1.5, 1.5]
    assert len(list((folder / "imagesUnlabeled").iterdir())) == 1


def test_cli_uses_nnunet_raw_env(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    assert main(SMALL) == 0
    assert (tmp_path / "Dataset990_STIPPLEPhantom" / "dataset.json").is_file()


def test_cli_existing_dataset_exits_2_without_traceback(tmp_path, capsys):
    assert main(["--raw", str(tmp_path), *SMALL]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as excinfo:
        main(["--raw", str(tmp_path), *SMALL])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "Traceback" not in err
    assert main(["--raw", str(tmp_path), "--overwrite", *SMALL]) == 0


def test_cli_without_raw_folder(monkeypatch):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(SystemExit) as excinfo:
        main(SMALL)
    assert "nnUNet_raw" in str(excinfo.value.code) and "--raw" in str(excinfo.value.code)
