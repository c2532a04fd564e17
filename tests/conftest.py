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


def prior_from_labels(labels, label_names, num_bins: int = 2, axial_axis: int = 0, spacing=(1.0, 1.0, 1.0),
                      dataset: str = "Dataset999_Test", fold: str = "0", case_prefix: str = "case_"):
    """A SpatialPrior built from in-memory label volumes with Algorithm 1's pieces, assembled the way
    ``build_fold_prior`` assembles a fold's prior from files (cases named ``<case_prefix><i>``)."""
    import numpy as np

    from nnunet_stipple.priors.algorithm import (
        ClassHistogram, build_histograms, class_bounding_boxes, largest_extents, organ_centre)
    from nnunet_stipple.priors.spatial_prior import SpatialPrior
    classes = sorted(label_names)
    boxes = [class_bounding_boxes(label, classes) for label in labels]
    hists = build_histograms(labels, classes, num_bins, axial_axis, boxes)
    extents = largest_extents(boxes, classes)
    templates = {c: ClassHistogram(extents[c], axial_axis, extents[c][axial_axis]) for c in extents}
    for label, case_boxes in zip(labels, boxes):
        for c, (lo, hi) in case_boxes.items():
            templates[c].add(label == c, organ_centre(lo, hi))
    cases = [f"{case_prefix}{i}" for i in range(len(labels))]
    case_centres = {case: {c: organ_centre(lo, hi).tolist() for c, (lo, hi) in b.items()}
                    for case, b in zip(cases, boxes)}
    mean_centres = {c: np.mean([cc[c] for cc in case_centres.values() if c in cc], axis=0).tolist() for c in hists}
    return SpatialPrior(
        dataset_name=dataset, plans_identifier="nnUNetPlans", configuration="3d_fullres", fold=fold,
        num_bins=num_bins, axial_axis=axial_axis, spacing=list(spacing), labels=dict(label_names),
        histograms={c: h.normalised() for c, h in hists.items()},
        slice_counts={c: h.slice_counts.copy() for c, h in hists.items()},
        templates={c: np.round(t.normalised() * 255).astype(np.uint8) for c, t in templates.items()},
        num_cases_per_class={c: h.num_cases for c, h in hists.items()},
        mean_centres=mean_centres, training_cases=cases, case_centres=case_centres)


def handmade_prior(histograms, templates, mean_centres, label_names, spacing=(1.0, 1.0, 1.0),
                   dataset: str = "Dataset999_Tiny", **fields):
    """A SpatialPrior from hand-written arrays (class -> histogram (B along axis 0) / uint8 template / centre),
    one training case per class unless ``fields`` say otherwise; ``fields`` override any other constructor
    argument (``case_centres``, ``training_cases``, ``axial_axis``, ``num_bins``, ...)."""
    import numpy as np

    from nnunet_stipple.priors.spatial_prior import SpatialPrior
    axial_axis = fields.pop("axial_axis", 0)
    num_bins = fields.pop("num_bins", next(iter(histograms.values())).shape[axial_axis])
    args = dict(
        dataset_name=dataset, plans_identifier="nnUNetPlans", configuration="3d_fullres", fold="0",
        num_bins=num_bins, axial_axis=axial_axis, spacing=list(spacing), labels=dict(label_names),
        histograms=dict(histograms), slice_counts={c: np.ones(num_bins, dtype=np.int64) for c in histograms},
        templates=dict(templates), num_cases_per_class={c: 1 for c in histograms},
        mean_centres={c: list(map(float, v)) for c, v in mean_centres.items()}, training_cases=["a"])
    args.update(fields)
    return SpatialPrior(**args)


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
