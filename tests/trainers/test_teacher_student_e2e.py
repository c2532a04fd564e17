"""Mean teacher and UA-MT end to end through nnU-Net's commands on the phantom (CPU), one trainer per test:

``nnUNetv2_train`` at alpha = 0.5 (3 labeled, 3 hidden + 2 imagesUnlabeled unlabeled cases) stopped after its first
epoch's ``checkpoint_latest.pth`` (a real interruption, and no final validation to pay for), ``--c`` resumes it to the
end (EMA teacher, step counter and optimizer restored), then plain ``nnUNetv2_predict`` predicts one case from the
checkpoint's ``network_weights``. One training costs 2 + 2 iterations of 2 labeled + 1 unlabeled 2d patches.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import SimpleITK as sitk
import torch

from nnunet_stipple.trainers.teacher_student import CHECKPOINT_KEY
from tests.conftest import training_env, venv_script

pytestmark = pytest.mark.e2e
SCHEDULE = {"num_epochs": 2, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1, "save_every": 1}
CASES = {"nnUNetTrainer_MeanTeacher": ("teacher", {"unlabeled_batch_ratio": 0.5}),
         "nnUNetTrainer_UAMT": ("student", {"unlabeled_batch_ratio": 0.5, "mc_passes": 2})}


def _stop_after_first_checkpoint(cmd, env, checkpoint, timeout=900):
    """Run ``cmd`` in its own process group until ``checkpoint`` exists, then end that group (the training and the
    data-augmentation workers it started)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    start = time.time()
    try:
        while not checkpoint.is_file():
            if proc.poll() is not None:
                raise AssertionError(f"{' '.join(cmd)} ended ({proc.returncode}) before {checkpoint.name}:\n"
                                     f"{proc.stdout.read()[-4000:]}")
            if time.time() - start > timeout:
                raise AssertionError(f"no {checkpoint} after {timeout} s")
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()


def _run(cmd, env):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def train_until_first_checkpoint(phantom: dict, tmp_path, trainer: str, semi_supervised: dict):
    """``nnUNetv2_train`` of ``trainer`` (2d, fold 0, alpha = 0.5, :data:`SCHEDULE`) in its own nnUNet_results,
    stopped once its first ``checkpoint_latest.pth`` exists. Returns (env, train command, fold folder)."""
    # augmentation in the training process and one export worker: a few iterations do not repay the start of the
    # 3 x 2 augmentation workers (labeled, validation, unlabeled) and nnU-Net's spawned export pool
    env = dict(training_env(phantom, tmp_path / "results"), nnUNet_n_proc_DA="0", nnUNet_def_n_proc="1")
    model = tmp_path / "results" / phantom["dataset_name"] / f"{trainer}__nnUNetPlans__2d"
    model.mkdir(parents=True)
    (model / "stipple_run.json").write_text(json.dumps({**SCHEDULE, "label_proportion": 0.5,
                                                        "semi_supervised": semi_supervised}))
    train = [venv_script("nnUNetv2_train"), str(phantom["dataset_id"]), "2d", "0", "-tr", trainer, "-device", "cpu"]
    fold = model / "fold_0"
    _stop_after_first_checkpoint(train, env, fold / "checkpoint_latest.pth")
    return env, train, fold


def _ssl_state(path):
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return ckpt, ckpt[CHECKPOINT_KEY]


@pytest.mark.parametrize("trainer", sorted(CASES))
def test_train_interrupt_resume_and_predict(phantom_preprocessed, tmp_path, trainer):
    predicting, semi_supervised = CASES[trainer]
    env, train, fold = train_until_first_checkpoint(phantom_preprocessed, tmp_path, trainer, semi_supervised)
    assert not (fold / "checkpoint_final.pth").exists()
    ckpt, state = _ssl_state(fold / "checkpoint_latest.pth")
    assert state["step"] == 2 and state["prediction_network"] == predicting
    assert ckpt["current_epoch"] == 1
    # network_weights: the standard network's keys (what nnUNetv2_predict builds), the teacher differs from the
    # student after 2 EMA steps (step 1 averages them with weight 0.5)
    other = state["other_network_weights"]
    assert ckpt["network_weights"].keys() == other.keys()
    assert any(not torch.equal(ckpt["network_weights"][k], other[k]) for k in other)
    recorded = json.loads((fold / "stipple_run_trained.json").read_text())["settings"]
    assert recorded["semi_supervised"]["unlabeled_batch_ratio"] == 0.5
    assert recorded["prediction_network"] == predicting
    assert ("mc_passes" in recorded["semi_supervised"]) == (trainer == "nnUNetTrainer_UAMT")

    _run(train + ["--c"], env)
    log = "".join(p.read_text() for p in sorted(fold.glob("training_log_*.txt")))
    # the unlabeled pool: the 3 hidden training cases of fold 0 at alpha 0.5 and the 2 imagesUnlabeled images;
    # 10 labeled patches (the phantom's 2d batch) + round(0.5 * 10) unlabeled ones
    assert "5 unlabeled cases (3 hidden training cases, 2 from imagesUnlabeled), 10 labeled + 5 unlabeled" in log
    assert "step 2 of 4" in log                                         # resumed where it stopped
    assert "consistency_loss" in log and (trainer != "nnUNetTrainer_UAMT" or "certain_fraction" in log)
    ckpt, state = _ssl_state(fold / "checkpoint_final.pth")
    assert state["step"] == 4 and ckpt["current_epoch"] == 2
    assert (fold / "validation" / "summary.json").is_file()

    predict_one_unlabeled_case(phantom_preprocessed, trainer, env, tmp_path)


def predict_one_unlabeled_case(phantom: dict, trainer: str, env: dict, tmp_path) -> None:
    """Plain ``nnUNetv2_predict`` of one imagesUnlabeled case with fold 0 of ``trainer``'s 2d model: the checkpoint's
    ``network_weights`` are a plain nnU-Net network, and the segmentation has the image's size."""
    images = tmp_path / "images"
    images.mkdir()
    source = sorted((phantom["raw_dataset"] / "imagesUnlabeled").glob("*_0000.nii.gz"))[0]
    shutil.copy(source, images / source.name)
    _run([venv_script("nnUNetv2_predict"), "-i", str(images), "-o", str(tmp_path / "pred"), "-d",
          str(phantom["dataset_id"]), "-c", "2d", "-f", "0", "-tr", trainer, "-device", "cpu",
          "--disable_tta", "-npp", "1", "-nps", "1"], env)
    seg = tmp_path / "pred" / source.name.replace("_0000.nii.gz", ".nii.gz")
    assert sitk.ReadImage(str(seg)).GetSize() == sitk.ReadImage(str(source)).GetSize()


def test_nothing_unlabeled_stops_before_training(phantom_preprocessed, tmp_path):
    """alpha = 1 with imagesUnlabeled left out of the pool: nothing unlabeled; nnUNetv2_train stops with our message
    before a checkpoint or the settings record is written."""
    trainer = "nnUNetTrainer_MeanTeacher"
    env = dict(training_env(phantom_preprocessed, tmp_path / "results"), nnUNet_n_proc_DA="0", nnUNet_def_n_proc="1")
    model = tmp_path / "results" / phantom_preprocessed["dataset_name"] / f"{trainer}__nnUNetPlans__2d"
    model.mkdir(parents=True)
    (model / "stipple_run.json").write_text(json.dumps({**SCHEDULE, "label_proportion": 1.0,
                                                        "unlabeled_sources": ["hidden"]}))
    proc = subprocess.run([venv_script("nnUNetv2_train"), str(phantom_preprocessed["dataset_id"]), "2d", "0", "-tr",
                           trainer, "-device", "cpu"], env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "trains on unlabeled patches, and fold 0 has none" in proc.stdout + proc.stderr
    assert not list(model.rglob("*.pth")) and not list(model.rglob("stipple_run_trained.json"))
