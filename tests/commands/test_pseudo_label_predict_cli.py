"""nnUNetv2_stipple_pseudo_label_predict refuses bad calls with exit status 2 and a message, before a trainer is
built: nothing is created in nnUNet_results (issue 12)."""
from __future__ import annotations

import json

import pytest

from nnunet_stipple.commands.pseudo_label_predict import main

LOOP = "STIPPLETrainer_PseudoLabel_CPUDemo"


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize("args, says", [
    (["-f", "0", "-tr", LOOP, "--round", "1", "-num_parts", "0"], "-num_parts must be >= 1"),
    (["-f", "0", "-tr", LOOP, "--round", "1", "-num_parts", "2", "-part_id", "2"], "-part_id must be in 0..1"),
    (["-f", "0", "-tr", LOOP, "--round", "0"], "--round must be >= 1"),
    (["-f", "x", "-tr", LOOP, "--round", "1"], "Fold 'x' is neither a fold number"),
    (["-f", "0", "-tr", "STIPPLETrainer_CPUDemo", "--round", "1"], "does not run a pseudo-labeling loop"),
    (["-f", "0", "-tr", "NoSuchTrainer_xyz", "--round", "1"], "Trainer NoSuchTrainer_xyz not found"),
    (["-f", "0", "-tr", LOOP, "--round", "3"], "beyond the run's T = 1 rounds"),
    (["-f", "0", "-tr", LOOP, "--round", "1"], "round 0 has not finished"),
])
def test_refused_calls_create_nothing(nnunet_env, tmp_path, monkeypatch, capsys, args, says):
    results = tmp_path / "results"
    monkeypatch.setenv("nnUNet_results", str(results))
    model = results / nnunet_env["dataset_name"] / f"{LOOP}__nnUNetPlans__3d_fullres"
    model.mkdir(parents=True)
    (model / "stipple_run.json").write_text(json.dumps({"label_proportion": 0.5, "rounds": 1}))
    before = _files(results)
    with pytest.raises(SystemExit) as e:
        main(["-d", str(nnunet_env["dataset_id"]), "-c", "3d_fullres", "-device", "cpu", *args])
    captured = capsys.readouterr()
    assert e.value.code == 2, captured.err
    assert says in captured.err and "Traceback" not in captured.err
    assert _files(results) == before
