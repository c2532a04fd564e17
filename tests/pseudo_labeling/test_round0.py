"""Round 0 of the pseudo-labeling loop taken from a finished training without relabeling (round0_model_folder)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.pseudo_labeling.loop import PseudoLabelLoopMixin
from nnunet_stipple.run_config import RunConfig

OURS = {"label_proportion": 0.1, "label_seed": 0, "num_bins": 5, "num_epochs": 40, "rounds": 1}


class LoopStub(PseudoLabelLoopMixin):
    """The attributes of an nnU-Net trainer that _adopt_round0 reads, nothing else."""
    round0_trainer = "STIPPLETrainer"

    def __init__(self, base: Path, run_config: dict, fold: int = 0):
        base.mkdir(parents=True, exist_ok=True)      # the model folder exists when a trainer runs
        self.output_folder_base = str(base)
        self.fold_folder = base / f"fold_{fold}"
        self.fold, self.configuration_name = fold, "2d"
        self.plans_manager = type("P", (), {"plans_name": "nnUNetPlans_cpu2d"})()
        self.run_config = RunConfig.from_dict(run_config)
        self.logged = []

    def print_to_log_file(self, *args):
        self.logged.append(" ".join(map(str, args)))


def _model(root: Path, trainer="STIPPLETrainer", fold=0, plans="nnUNetPlans_cpu2d", configuration="2d",
           run_config=None) -> Path:
    folder = root / "stipple_norelab" / f"{trainer}__{plans}__{configuration}"
    (folder / f"fold_{fold}").mkdir(parents=True)
    torch.save({"trainer_name": trainer, "network_weights": {"w": torch.ones(2)},
                "init_args": {"fold": fold, "configuration": configuration, "plans": {"plans_name": plans}}},
               folder / f"fold_{fold}" / "checkpoint_final.pth")
    rc = {k: v for k, v in OURS.items() if k != "rounds"} if run_config is None else run_config
    (folder / "stipple_run.json").write_text(json.dumps(rc))
    return folder


def test_adopts_the_counterpart_model(tmp_path):
    other = _model(tmp_path, run_config={**{k: v for k, v in OURS.items() if k != "rounds"}, "save_every": 1})
    loop = LoopStub(tmp_path / "stipple" / "X", {**OURS, "round0_model_folder": "../../stipple_norelab/" + other.name})
    loop._adopt_round0(loop.run_config.round0_model_folder)
    copied = loop.round_folder(0) / "checkpoint_final.pth"
    assert copied.read_bytes() == (other / "fold_0" / "checkpoint_final.pth").read_bytes()
    assert "not retrained" in loop.logged[-1]


@pytest.mark.parametrize("model_kwargs, match", [
    ({"trainer": "STIPPLETrainer_B1"}, "trainer 'STIPPLETrainer_B1' there, 'STIPPLETrainer' here"),
    ({"plans": "nnUNetPlans"}, "plans 'nnUNetPlans' there, 'nnUNetPlans_cpu2d' here"),
    ({"run_config": {"label_proportion": 0.3, "num_bins": 5, "num_epochs": 40}}, "label_proportion 0.3 there, 0.1"),
    ({"run_config": {"label_proportion": 0.1, "num_bins": 3, "num_epochs": 40}}, "num_bins 3 there, 5 here"),
    ({"run_config": {"label_proportion": 0.1, "num_bins": 5, "num_epochs": 20}}, "num_epochs 20 there, 40 here"),
])
def test_refuses_another_training(tmp_path, model_kwargs, match):
    other = _model(tmp_path, **model_kwargs)
    loop = LoopStub(tmp_path / "stipple" / "X", OURS)
    with pytest.raises(StippleInputError, match=match):
        loop._adopt_round0(str(other))
    assert not (loop.round_folder(0) / "checkpoint_final.pth").exists()


def test_missing_fold_model(tmp_path):
    other = _model(tmp_path, fold=0)
    loop = LoopStub(tmp_path / "stipple" / "X", OURS, fold=1)
    with pytest.raises(StippleInputError, match=r"fold_1/checkpoint_final.pth does not exist"):
        loop._adopt_round0(str(other))


def test_trainer_without_counterpart(tmp_path):
    other = _model(tmp_path)
    loop = LoopStub(tmp_path / "stipple" / "X", OURS)
    loop.round0_trainer = None
    with pytest.raises(StippleInputError, match="does not take a round-0 model"):
        loop._adopt_round0(str(other))
