"""The backbones end to end on the preprocessed phantom (CPU): ``nnUNetv2_stipple_backbone_plans`` writes plans
next to nnU-Net's, ``nnUNetv2_train -tr STIPPLETrainer_CPUDemo -p <backbone plans>`` trains two iterations (the
prior wraps the backbone), ``nnUNetv2_stipple_predict -p`` predicts an unlabeled image, and plain
``nnUNetv2_predict -p`` builds the backbone from the model's plans, loads its weights and stops with STIPPLE's
refusal (a STIPPLE model's raw logits are not its prediction); nnU-Net's own predictor with the prior-free forward
allowed predicts a case."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import training_env, venv_script

pytestmark = pytest.mark.e2e
TRAINER = "STIPPLETrainer_CPUDemo"
SCHEDULE = {"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}


def _run(args, env, ok=True):
    cmd = [sys.executable, "-m", args[0][1:]] if args[0].startswith(":") else [venv_script(args[0])]
    proc = subprocess.run([*cmd, *map(str, args[1:])], env=env, capture_output=True, text=True)
    if ok and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


@pytest.mark.parametrize("backbone, class_name", [("attention_unet", "AttentionUNet"),
                                                  ("u_transformer", "UTransformer")])
def test_stipple_trains_and_predicts_with_the_backbone(phantom_preprocessed, tmp_path, monkeypatch, backbone,
                                                       class_name):
    env = training_env(phantom_preprocessed, tmp_path / "results")
    dataset = phantom_preprocessed["dataset_id"]
    plans = f"nnUNetPlans_{backbone}"
    # the command as its console script runs it (run by module: the venv may predate the entry point)
    _run([":nnunet_stipple.commands.backbone_plans", "-d", dataset, "-c", "3d_fullres", "--backbone", backbone], env)
    plans_file = phantom_preprocessed["preprocessed_dataset"] / f"{plans}.json"
    assert json.loads(plans_file.read_text())["configurations"]["3d_fullres"]["architecture"][
        "network_class_name"].endswith(class_name)

    model = tmp_path / "results" / phantom_preprocessed["dataset_name"] / f"{TRAINER}__{plans}__3d_fullres"
    model.mkdir(parents=True)
    (model / "stipple_run.json").write_text(json.dumps(SCHEDULE))
    proc = _run(["nnUNetv2_train", dataset, "3d_fullres", 0, "-tr", TRAINER, "-p", plans, "-device", "cpu"], env)
    assert class_name in proc.stdout          # nnU-Net prints the network it built
    fold = model / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "validation" / "summary.json").is_file()
    assert (phantom_preprocessed["preprocessed_dataset"] / "stipple_priors" / f"{plans}__3d_fullres" / "B5"
            / "fold_0.npz").is_file()

    out = tmp_path / "pred"
    # one unlabeled image: the prediction path is what is checked, each case costs a positioning
    images = tmp_path / "images"
    images.mkdir()
    first = sorted((phantom_preprocessed["raw_dataset"] / "imagesUnlabeled").glob("*_0000.nii.gz"))[0]
    (images / first.name).symlink_to(first)
    _run(["nnUNetv2_stipple_predict", "-i", images, "-o", out, "-d", dataset, "-c", "3d_fullres", "-f", 0,
          "-tr", TRAINER, "-p", plans, "-device", "cpu", "--disable_tta", "-npp", 1, "-nps", 1], env)
    segs = sorted(out.glob("*.nii.gz"))
    assert len(segs) == 1 and len(list((out / "stipple_positioning").glob("*.json"))) == 1
    image = images / segs[0].name.replace(".nii.gz", "_0000.nii.gz")
    assert sitk.ReadImage(str(segs[0])).GetSize() == sitk.ReadImage(str(image)).GetSize()

    refused = _run(["nnUNetv2_predict", "-i", images, "-o", tmp_path / "plain", "-d", dataset, "-c", "3d_fullres",
                    "-f", 0, "-tr", TRAINER, "-p", plans, "-device", "cpu", "--disable_tta", "-npp", 1, "-nps", 1],
                   env, ok=False)
    assert refused.returncode != 0 and "nnUNetv2_stipple_predict" in refused.stdout + refused.stderr

    # nnU-Net's own predictor runs the backbone of the model folder when the prior-free forward is allowed
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_stipple.priors.prior_module import allow_prior_free_forward
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        monkeypatch.setenv(key, env[key])
    predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False, device=torch.device("cpu"),
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), (0,), "checkpoint_final.pth")
    assert type(predictor.network).__name__ == class_name
    allow_prior_free_forward(predictor.network)
    seg = predictor.predict_single_npy_array(sitk.GetArrayFromImage(sitk.ReadImage(str(image)))[None].astype(np.float32),
                                             {"spacing": list(sitk.ReadImage(str(image)).GetSpacing())[::-1]})
    assert seg.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(image))).shape
