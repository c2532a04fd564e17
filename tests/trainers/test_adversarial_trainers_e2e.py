"""SASSNet and adversarial confidence end to end through nnU-Net's commands on the phantom (CPU), one trainer per test,
as tests/trainers/test_teacher_student_e2e.py: ``nnUNetv2_train`` at alpha = 0.5 stopped after its first epoch's
``checkpoint_latest.pth``, ``--c`` resumes it to the end (extra networks, their optimizers and the step counter
restored), then plain ``nnUNetv2_predict`` predicts one case from the checkpoint's ``network_weights``, which plain
nnU-Net's network loads key for key. 2 + 2 iterations of 10 labeled + 5 unlabeled 2d patches; the discriminators are
made narrow (8 features) to keep the test cheap."""
from __future__ import annotations

import json

import pytest
import torch

from nnunet_stipple.trainers.adversarial_confidence import CHECKPOINT_KEY as CONFIDENCE_KEY
from nnunet_stipple.trainers.sassnet import CHECKPOINT_KEY as SASSNET_KEY
from tests.trainers.test_teacher_student_e2e import _run, predict_one_unlabeled_case, train_until_first_checkpoint

pytestmark = pytest.mark.e2e
CASES = {
    "nnUNetTrainer_SASSNet": (SASSNET_KEY, ("sdm_head", "discriminator", "discriminator_optimizer"),
                              {"unlabeled_batch_ratio": 0.5, "discriminator_features": 8},
                              ("sdm_loss", "adversarial_loss", "discriminator_accuracy")),
    "nnUNetTrainer_AdversarialConfidence": (CONFIDENCE_KEY, ("confidence_network", "confidence_optimizer"),
                                            {"unlabeled_batch_ratio": 0.5, "discriminator_features": 8,
                                             "semi_start": 0.5},
                                            ("semi_loss", "confident_fraction", "confidence_loss")),
}


@pytest.mark.parametrize("trainer", sorted(CASES))
def test_train_interrupt_resume_and_predict(phantom_preprocessed, tmp_path, trainer):
    key, extra_keys, semi_supervised, logged = CASES[trainer]
    env, train, fold = train_until_first_checkpoint(phantom_preprocessed, tmp_path, trainer, semi_supervised)
    ckpt = torch.load(fold / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    state = ckpt[key]
    assert state["step"] == 2 and ckpt["current_epoch"] == 1 and all(k in state for k in extra_keys)
    assert state["settings"]["discriminator_features"] == 8
    # network_weights are plain nnU-Net's network: it loads them key for key (strict)
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    model = fold.parent
    plans = PlansManager(json.loads((model / "plans.json").read_text()))
    dataset_json = json.loads((model / "dataset.json").read_text())
    cm = plans.get_configuration("2d")
    net = nnUNetTrainer.build_network_architecture(
        plans, cm, determine_num_input_channels(plans, cm, dataset_json),
        plans.get_label_manager(dataset_json).num_segmentation_heads, False)
    net.load_state_dict(ckpt["network_weights"])

    _run(train + ["--c"], env)
    log = "".join(p.read_text() for p in sorted(fold.glob("training_log_*.txt")))
    assert "5 unlabeled cases (3 hidden training cases, 2 from imagesUnlabeled), 10 labeled + 5 unlabeled" in log
    assert "step 2 of 4" in log and all(word in log for word in logged)
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt[key]["step"] == 4 and ckpt["current_epoch"] == 2
    assert (fold / "validation" / "summary.json").is_file()

    predict_one_unlabeled_case(phantom_preprocessed, trainer, env, tmp_path)
