"""The pseudo-labeling loop end to end on the phantom through ``nnUNetv2_train`` (T = 1, CPU).

The run is killed in the middle of round 1's pseudo-labeling, one shard is predicted with
``nnUNetv2_stipple_pseudo_label_predict``, and ``nnUNetv2_train --c`` finishes the loop without redoing
round 0 or any pseudo-label already written. Raw labels are never touched.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from tests.conftest import training_env, venv_script

pytestmark = pytest.mark.e2e
TRAINER = "STIPPLETrainer_PseudoLabel_CPUDemo"


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _cmd(*args):
    return [venv_script(args[0]), *map(str, args[1:])]


@pytest.fixture
def pl_env(phantom_preprocessed, tmp_path):
    results = tmp_path / "results"
    env = training_env(phantom_preprocessed, results)
    base = results / phantom_preprocessed["dataset_name"] / f"{TRAINER}__nnUNetPlans__3d_fullres"
    base.mkdir(parents=True)
    (base / "stipple_run.json").write_text(json.dumps({"label_proportion": 0.5, "rounds": 1, "gamma_max": 0.6}))
    return env, base / "fold_0"


def test_loop_killed_mid_round_resumes_with_shards(phantom_preprocessed, pl_env):
    env, fold = pl_env
    labels_before = _digest(phantom_preprocessed["raw_dataset"] / "labelsTr")
    train = _cmd("nnUNetv2_train", phantom_preprocessed["dataset_id"], "3d_fullres", 0, "-tr", TRAINER, "-device", "cpu")
    pseudo = fold / "pseudo_labeling" / "round_1" / "pseudo_labels"
    proc = subprocess.Popen(train, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 900
        while time.time() < deadline and proc.poll() is None and not list(pseudo.glob("*.npz")):
            time.sleep(0.5)
        assert proc.poll() is None, "the run ended before it could be interrupted:\n" + proc.stdout.read().decode()[-3000:]
        assert list(pseudo.glob("*.npz")), "no pseudo-label written in time"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    round0 = fold / "pseudo_labeling" / "round_0" / "checkpoint_final.pth"
    assert round0.is_file()
    state = json.loads((fold / "pseudo_labeling" / "state.json").read_text())
    assert state["finished_rounds"] == [0]
    kept = {p: p.stat().st_mtime_ns for p in pseudo.glob("*.npz")}
    round0_mtime = round0.stat().st_mtime_ns

    # one shard of the round predicted separately (as on another GPU), then the loop continues
    shard = subprocess.run(_cmd("nnUNetv2_stipple_pseudo_label_predict", "-d", phantom_preprocessed["dataset_id"],
                                "-c", "3d_fullres", "-f", 0, "-tr", TRAINER, "--round", 1, "-num_parts", 2,
                                "-part_id", 1, "-device", "cpu"), env=env, capture_output=True, text=True)
    assert shard.returncode == 0, shard.stdout[-3000:] + shard.stderr[-3000:]
    done = subprocess.run(train + ["--c"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    # nnU-Net's splits banner once per trainer, not once per subset query (issue 12: 16 times in one run)
    assert done.stdout.count("Using splits from existing split file") == 1

    state = json.loads((fold / "pseudo_labeling" / "state.json").read_text())
    assert state["finished_rounds"] == [0, 1]
    assert round0.stat().st_mtime_ns == round0_mtime            # round 0 was not retrained
    for p, mtime in kept.items():                               # nor its pseudo-labels redone
        assert p.stat().st_mtime_ns == mtime
    # 3 hidden training cases (alpha = 0.5 of fold 0's 6) + 2 images in imagesUnlabeled
    records = [json.loads(p.read_text()) for p in pseudo.glob("*.json")]
    assert len(records) == 5 and sum(r["hidden"] for r in records) == 3
    log = json.loads((fold / "pseudo_labeling" / "round_1" / "round_log.json").read_text())
    assert log["cases"] == 5 and "quality_per_class" in log and log["gamma"] == pytest.approx(0.6)
    assert (fold / "pseudo_labeling" / "quality.png").is_file()
    # pseudo-labels: organ classes where selected, nnU-Net's ignore label (6) elsewhere
    for p in pseudo.glob("*.npz"):
        label = np.load(p)["label"]
        assert set(np.unique(label)) <= set(range(7))
        assert (label == 6).any()
    # the loop's final model is nnU-Net's final checkpoint, validated with STIPPLE prediction
    assert (fold / "checkpoint_final.pth").is_file()
    assert (fold / "validation" / "summary.json").is_file()
    assert _digest(phantom_preprocessed["raw_dataset"] / "labelsTr") == labels_before
    # validation cases never get pseudo-labels
    splits = json.loads((phantom_preprocessed["preprocessed_dataset"] / "splits_final.json").read_text())
    assert not {r["case"] for r in records} & set(splits[0]["val"])


def test_changed_settings_are_refused_on_resume(phantom_preprocessed, pl_env):
    env, fold = pl_env
    state_dir = fold / "pseudo_labeling"
    state_dir.mkdir(parents=True)
    (state_dir / "state.json").write_text(json.dumps({"settings": {"label_proportion": 0.3}, "finished_rounds": [0]}))
    proc = subprocess.run(_cmd("nnUNetv2_train", phantom_preprocessed["dataset_id"], "3d_fullres", 0, "-tr", TRAINER,
                               "-device", "cpu", "--c"), env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "refusing to resume" in proc.stdout + proc.stderr
    assert "label_proportion was 0.3, now 0.5" in proc.stdout + proc.stderr
