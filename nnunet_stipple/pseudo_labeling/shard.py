"""One shard of a pseudo-labeling round, predicted outside the training process (another GPU or machine).

Everything that can be checked without building a trainer is checked first, so a refused call creates nothing
(no fold folder, no training log)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Union

from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.run_config import RunConfig


def _trainer_class(name: str):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunet_stipple.paths import ensure_ext_trainer_env
    ensure_ext_trainer_env()
    try:
        return recursive_find_trainer_class_by_name(name)
    except RuntimeError as e:
        raise StippleInputError(f"Trainer {name} not found ({e}).") from None


def predict_pseudo_label_shard(dataset: Union[int, str], configuration: str, fold: Union[int, str], trainer: str,
                               round_index: int, num_parts: int = 1, part_id: int = 0, plans: str = "nnUNetPlans",
                               device: str = "cuda") -> List[str]:
    """Pseudo-labels of round ``round_index`` for the cases ``part_id::num_parts`` of the run's unlabeled cases
    (those already written are kept); returns the cases of the shard."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    from nnunet_stipple.nnunet_folders import parse_fold, resolve_dataset_name
    from nnunet_stipple.pseudo_labeling.loop import PL_FOLDER, PseudoLabelLoopMixin

    if num_parts < 1:
        raise StippleInputError(f"-num_parts must be >= 1 (the number of shards), got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise StippleInputError(f"-part_id must be in 0..{num_parts - 1} (with -num_parts {num_parts}), got {part_id}")
    if round_index < 1:
        raise StippleInputError(f"--round must be >= 1 (round 0 trains on labeled cases only), got {round_index}")
    fold = parse_fold(fold)
    trainer_class = _trainer_class(trainer)
    if not issubclass(trainer_class, PseudoLabelLoopMixin):
        raise StippleInputError(f"Trainer {trainer} does not run a pseudo-labeling loop (use e.g. "
                                f"STIPPLETrainer_PseudoLabel or nnUNetTrainer_PseudoLabel).")
    dataset_name = resolve_dataset_name(dataset)
    model_folder = Path(get_output_folder(dataset_name, trainer, plans, configuration))
    rc = RunConfig.for_output_folder(str(model_folder))
    rounds = rc.rounds_for(rc.round_policy or trainer_class.default_round_policy)
    if round_index > rounds:
        raise StippleInputError(f"--round {round_index} is beyond the run's T = {rounds} rounds "
                                f"({model_folder / 'stipple_run.json'}).")
    previous = model_folder / f"fold_{fold}" / PL_FOLDER / f"round_{round_index - 1}" / "checkpoint_final.pth"
    if not previous.is_file():
        raise StippleInputError(f"{previous} does not exist: round {round_index - 1} has not finished. Run "
                                f"nnUNetv2_train {dataset_name} {configuration} {fold} -tr {trainer} -p {plans} --c "
                                f"until it has (the loop predicts the round's pseudo-labels itself too).")
    t = get_trainer_from_args(dataset_name, configuration, fold, trainer, plans, device=torch.device(device))
    return t.make_pseudo_labels(round_index, t.unlabeled_cases(), part_id=part_id, num_parts=num_parts)
