"""Shared fixtures.

``phantom_preprocessed`` (session scope): a tiny synthetic phantom (dataset 991, 8 labeled + 2 unlabeled cases,
shape (24, 32, 32)) written to a temporary ``nnUNet_raw`` and planned + preprocessed by nnU-Net itself
(``nnUNetv2_plan_and_preprocess -c 3d_fullres 2d -np 1``, run in a subprocess). Takes ~30-60 s once per session.

Note on nnU-Net's folder variables: nnU-Net 2.8.1's ``nnunetv2.paths`` reads ``nnUNet_raw`` /
``nnUNet_preprocessed`` / ``nnUNet_results`` / ``nnUNet_extTrainer`` from ``os.environ`` each time they are used
(older 2.x versions read them once at import). Tests that call a command's ``main()`` in-process therefore
``monkeypatch.setenv`` the variables from ``phantom_preprocessed["env"]`` (see ``nnunet_env``); running a
command through ``subprocess`` with ``env=phantom_preprocessed["env"]`` is safe with any nnU-Net version.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PHANTOM_DATASET_ID = 991
PHANTOM_NAME = "STIPPLEPhantom"


def run_refused(main, argv, capsys):
    """Run a command's ``main(argv)`` in-process where it must stop with ``SystemExit`` (an input error or an
    argparse usage error): returns (exit code, captured output); a traceback on stderr fails the test."""
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return excinfo.value.code, captured


def training_env(phantom: dict, results: "Path | None" = None) -> dict:
    """The environment for nnU-Net commands on the phantom: its folders (``results`` replacing nnUNet_results if
    given), the STIPPLE trainers findable, 2 worker processes, no torch.compile."""
    from nnunet_stipple.paths import ext_trainer_env_value
    env = dict(phantom["env"], nnUNet_def_n_proc="2", nnUNet_n_proc_DA="2", nnUNet_compile="f")
    if results is not None:
        env["nnUNet_results"] = str(results)
    env["nnUNet_extTrainer"] = ext_trainer_env_value(env.get("nnUNet_extTrainer"))
    return env


def venv_script(name: str) -> str:
    """Path of a console script installed next to the running Python (the project's venv)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


@pytest.fixture(scope="session")
def phantom_preprocessed(tmp_path_factory):
    """Planned and preprocessed phantom dataset 991 (3d_fullres and 2d).

    Returns a dict: ``raw``, ``preprocessed``, ``results`` (Paths of the three nnU-Net folders), ``dataset_id``,
    ``dataset_name``, ``raw_dataset`` / ``preprocessed_dataset`` (the dataset's folders) and ``env`` (a copy of
    ``os.environ`` with the three nnU-Net variables set, for ``subprocess`` calls). Treat it as read-only; tests
    that write (priors, results) should use their own plans identifier / results folder or clean up after
    themselves."""
    from nnunet_stipple.phantom.generator import make_phantom_dataset

    root = tmp_path_factory.mktemp("nnunet_phantom")
    raw, preprocessed, results = root / "nnUNet_raw", root / "nnUNet_preprocessed", root / "nnUNet_results"
    for p in (raw, preprocessed, results):
        p.mkdir()
    raw_dataset = make_phantom_dataset(raw, dataset_id=PHANTOM_DATASET_ID, name=PHANTOM_NAME, num_labeled=8,
                                       num_unlabeled=2, shape=(24, 32, 32))
    env = dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(preprocessed),
               nnUNet_results=str(results))
    cmd = [venv_script("nnUNetv2_plan_and_preprocess"), "-d", str(PHANTOM_DATASET_ID), "-c", "3d_fullres", "2d",
           "-np", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    name = raw_dataset.name
    return {"raw": raw, "preprocessed": preprocessed, "results": results, "dataset_id": PHANTOM_DATASET_ID,
            "dataset_name": name, "raw_dataset": raw_dataset, "preprocessed_dataset": preprocessed / name,
            "env": env}


@pytest.fixture
def nnunet_env(phantom_preprocessed, monkeypatch):
    """Set the nnU-Net folder variables of ``phantom_preprocessed`` in this process (for in-process ``main()``)."""
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, phantom_preprocessed["env"][key])
    return phantom_preprocessed
