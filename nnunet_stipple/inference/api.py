"""Predict a folder of images with a STIPPLE model: the library side of ``nnUNetv2_stipple_predict``.

Mirrors ``nnUNetv2_predict`` (nnunetv2.inference.predict_from_raw_data.predict_entry_point): same predictor
arguments, device handling and ``predict_from_files`` call, with :class:`STIPPLEPredictor` instead of
``nnUNetPredictor``. Everything that can be checked without loading a network (model folder, checkpoints, input
file names, output folder, device, options) is checked first and reported as :class:`StippleInputError`.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Union

from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.nnunet_folders import Fold, parse_folds, results_model_folder  # noqa: F401 (parse_folds: API)
from nnunet_stipple.inference.input_checks import check_checkpoint_readable, check_image_geometry, check_input_folder, \
    check_output_folder, input_files, model_expects_volumes

DEFAULT_TRAINER = "STIPPLETrainer"
DEFAULT_FOLDS = (0, 1, 2, 3, 4)


def model_folder_of(dataset: Union[int, str], configuration: str, trainer: str = DEFAULT_TRAINER,
                    plans_identifier: str = "nnUNetPlans") -> Path:
    """``$nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIGURATION`` (as nnUNetv2_predict finds it)."""
    return results_model_folder(dataset, configuration, trainer, plans_identifier)


def check_model_folder(model_folder: "str | Path", folds: Optional[Sequence[Fold]],
                       checkpoint_name: str = "checkpoint_final.pth") -> dict:
    """The model's dataset.json; checks plans.json and the checkpoint of every fold exist and are readable."""
    model_folder = Path(model_folder)
    if not model_folder.is_dir():
        raise StippleInputError(f"The model folder {model_folder} does not exist. Train it first "
                                f"(nnUNetv2_train DATASET CONFIGURATION FOLD -tr STIPPLETrainer) or check -d/-c/-tr/-p/-m.")
    for name in ("dataset.json", "plans.json"):
        if not (model_folder / name).is_file():
            raise StippleInputError(f"{model_folder} holds no {name}; it is not a trained nnU-Net model folder.")
    available = sorted(p.name for p in model_folder.glob("fold_*") if (p / checkpoint_name).is_file())
    if folds is not None:
        missing = [f for f in folds if not (model_folder / f"fold_{f}" / checkpoint_name).is_file()]
        if missing:
            raise StippleInputError(
                f"No {checkpoint_name} for fold(s) {', '.join(str(f) for f in missing)} in {model_folder} "
                f"(folds with {checkpoint_name}: {', '.join(available) or 'none'}). Choose folds with -f, "
                f"another checkpoint with -chk, or finish training.")
    elif not available:
        raise StippleInputError(f"{model_folder} holds no fold_X/{checkpoint_name}.")
    for fold_folder in [f"fold_{f}" for f in folds] if folds is not None else available:
        check_checkpoint_readable(model_folder / fold_folder / checkpoint_name)
    try:
        return json.loads((model_folder / "dataset.json").read_text())
    except json.JSONDecodeError as e:
        raise StippleInputError(f"{model_folder / 'dataset.json'} is not valid JSON ({e}).") from e


def torch_device(device: str):
    """nnUNetv2_predict's device handling: thread settings included."""
    import torch
    if device not in ("cpu", "cuda", "mps"):
        raise StippleInputError(f"-device must be cpu, cuda or mps, got {device!r}. To pick a GPU use "
                                f"CUDA_VISIBLE_DEVICES=X.")
    if device == "cpu":
        import multiprocessing
        torch.set_num_threads(multiprocessing.cpu_count())
        return torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise StippleInputError("-device cuda was requested but no CUDA GPU is available; use -device cpu.")
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        return torch.device("cuda")
    if not torch.backends.mps.is_available():
        raise StippleInputError("-device mps was requested but MPS is not available; use -device cpu.")
    return torch.device("mps")


@contextmanager
def stipple_trainers_findable():
    """nnUNet_extTrainer with the STIPPLE trainers folder while the model is set up (restored afterwards)."""
    from nnunet_stipple.paths import EXT_TRAINER_VARIABLE, ensure_ext_trainer_env
    old = os.environ.get(EXT_TRAINER_VARIABLE)
    ensure_ext_trainer_env()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(EXT_TRAINER_VARIABLE, None)
        else:
            os.environ[EXT_TRAINER_VARIABLE] = old


def check_prediction_inputs(input_folder, output_folder, model_folder, folds: Optional[Sequence[Fold]] = DEFAULT_FOLDS,
                            checkpoint_name: str = "checkpoint_final.pth", num_parts: int = 1, part_id: int = 0,
                            prev_stage_predictions: Optional[str] = None) -> List[str]:
    """Everything :func:`predict_folder` checks before loading the model; returns the input case ids."""
    if prev_stage_predictions is not None:
        raise StippleInputError("-prev_stage_predictions is for nnU-Net's cascade (3d_cascade_fullres), which "
                                "STIPPLE does not support; predict with a 2d, 3d_lowres or 3d_fullres STIPPLE model.")
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise StippleInputError(f"-part_id must be in 0..num_parts-1 (got -part_id {part_id}, "
                                f"-num_parts {num_parts}).")
    if Path(output_folder).resolve() == Path(input_folder).resolve():
        raise StippleInputError(f"The output folder (-o) is the input folder (-i) {input_folder}; predictions would "
                                f"be written between the images. Use another output folder.")
    check_output_folder(output_folder)
    dataset_json = check_model_folder(model_folder, folds, checkpoint_name)
    files = input_files(input_folder)
    cases = check_input_folder(input_folder, dataset_json, files)
    plans = json.loads((Path(model_folder) / "plans.json").read_text())
    check_image_geometry(files, volumes=model_expects_volumes(plans))
    return cases


def predict_folder(input_folder: "str | Path", output_folder: "str | Path", model_folder: "str | Path",
                   folds: Optional[Sequence[Fold]] = DEFAULT_FOLDS, step_size: float = 0.5,
                   use_mirroring: bool = True, device: str = "cuda", perform_everything_on_device: bool = True,
                   verbose: bool = False, allow_tqdm: bool = True, save_probabilities: bool = False,
                   overwrite: bool = True, checkpoint_name: str = "checkpoint_final.pth",
                   num_processes_preprocessing: int = 3, num_processes_segmentation_export: int = 3,
                   num_parts: int = 1, part_id: int = 0, positioning_report: bool = True,
                   prev_stage_predictions: Optional[str] = None,
                   positioning_overrides: Optional[Mapping[str, Any]] = None):
    """Predict every case of ``input_folder`` with the STIPPLE model in ``model_folder``; returns the predictor.

    Arguments as ``nnUNetv2_predict``'s. ``positioning_overrides`` (setting name -> value, see
    :class:`nnunet_stipple.positioning.settings.PositioningSettings`) replace the positioning settings stored
    in the checkpoints. With ``positioning_report``, one JSON per case with the prior's position,
    positioning confidence and the positioning settings used, per fold, goes to
    ``<output_folder>/stipple_positioning/``.
    ``num_processes_preprocessing == num_processes_segmentation_export == 0`` runs sequentially (no worker
    processes), as in nnU-Net."""
    from nnunet_stipple.inference.predictor import POSITIONING_FOLDER, STIPPLEPredictor, positioning_summary
    from nnunet_stipple.positioning.settings import PositioningSettings
    folds = parse_folds(folds)
    if not 0 < step_size <= 1:
        raise StippleInputError(f"-step_size must be in (0, 1], got {step_size}.")
    PositioningSettings().with_overrides(positioning_overrides or {}, "positioning_overrides")
    check_prediction_inputs(input_folder, output_folder, model_folder, folds, checkpoint_name, num_parts, part_id,
                            prev_stage_predictions)
    torch_dev = torch_device(device)
    output_folder = Path(output_folder)
    output_folder.mkdir(parents=True, exist_ok=True)
    report_folder = output_folder / POSITIONING_FOLDER if positioning_report else None
    if report_folder is not None:
        report_folder.mkdir(parents=True, exist_ok=True)
    predictor = STIPPLEPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                 perform_everything_on_device=perform_everything_on_device, device=torch_dev,
                                 verbose=verbose, verbose_preprocessing=verbose, allow_tqdm=allow_tqdm,
                                 report_folder=None if report_folder is None else str(report_folder),
                                 positioning_overrides=positioning_overrides)
    with stipple_trainers_findable():
        predictor.initialize_from_trained_model_folder(str(model_folder), folds, checkpoint_name=checkpoint_name)
    if num_processes_preprocessing == 0 and num_processes_segmentation_export == 0:
        print("Running in non-multiprocessing mode")
        predictor.predict_from_files_sequential(str(input_folder), str(output_folder),
                                                save_probabilities=save_probabilities, overwrite=overwrite,
                                                folder_with_segs_from_prev_stage=None)
    else:
        predictor.predict_from_files(str(input_folder), str(output_folder), save_probabilities=save_probabilities,
                                     overwrite=overwrite, num_processes_preprocessing=num_processes_preprocessing,
                                     num_processes_segmentation_export=num_processes_segmentation_export,
                                     folder_with_segs_from_prev_stage=None, num_parts=num_parts, part_id=part_id)
    print(positioning_summary(predictor.case_reports))
    return predictor
