"""nnUNetv2_stipple_predict: nnUNetv2_predict for STIPPLE models (prior positioned and applied per case)."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from nnunet_stipple.commands import input_errors_exit
from nnunet_stipple.commands.arguments import add_checkpoint, add_configuration, add_dataset, add_device, add_folds, \
    add_plans, add_trainer
from nnunet_stipple.positioning.settings import add_positioning_arguments, positioning_overrides

PROG = "nnUNetv2_stipple_predict"


def _default_int(env: str, default: int) -> int:
    import os
    try:
        return int(os.environ.get(env) or default)
    except ValueError:
        return default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Predict a folder of images with a model trained by a STIPPLE trainer, like nnUNetv2_predict: per fold "
            "and case, a first prediction positions the fold's spatial prior (coarse organ centres + KL "
            "translation search), the positioned prior is added to the logits, and nnU-Net exports the "
            "prior-driven segmentation (and probabilities with --save_probabilities). The positioning settings "
            "are the model's (its trainer's, stored in the checkpoint) unless given below. Per-case positioning "
            "reports (prior position, confidence and the settings used, per fold) go to "
            "OUTPUT/stipple_positioning/. Give the model "
            "with -d/-c (and -p, -tr) as for nnUNetv2_predict, or its folder with -m. The input file names are "
            "checked against nnU-Net's CASE_XXXX<file_ending> convention before anything is loaded."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("-i", required=True, help="input folder with CASE_XXXX<file_ending> images "
                                                  "(channels _0000 .. as in the training dataset)")
    parser.add_argument("-o", required=True, help="output folder (created if missing); must differ from -i")
    add_dataset(parser, required=False, help="dataset name or id (with -c; or use -m)")
    add_plans(parser)
    add_trainer(parser, default="STIPPLETrainer")
    add_configuration(parser, required=False, help="configuration (2d, 3d_fullres, 3d_lowres)")
    parser.add_argument("-m", default=None, metavar="MODEL_FOLDER",
                        help="trained model folder (TRAINER__PLANS__CONFIGURATION with fold_X subfolders), instead "
                             "of -d/-p/-tr/-c, e.g. an installed or exported model; nnUNet_results is then not needed")
    add_folds(parser, default=[0, 1, 2, 3, 4], help="folds to use (numbers and/or 'all'); their predictions are averaged")
    parser.add_argument("-step_size", type=float, default=0.5,
                        help="sliding-window step size as a fraction of the patch size (at most 1)")
    parser.add_argument("--disable_tta", action="store_true",
                        help="disable test-time mirroring (faster, slightly less accurate)")
    parser.add_argument("--verbose", action="store_true", help="print more information")
    parser.add_argument("--save_probabilities", action="store_true",
                        help="also export the prior-driven class probabilities (.npz + .pkl)")
    parser.add_argument("--continue_prediction", "--c", action="store_true",
                        help="continue an aborted prediction: do not overwrite existing outputs")
    add_checkpoint(parser)
    parser.add_argument("-npp", type=int, default=_default_int("nnUNet_npp", 3),
                        help="processes for preprocessing (-npp 0 -nps 0: no worker processes)")
    parser.add_argument("-nps", type=int, default=_default_int("nnUNet_nps", 3),
                        help="processes for segmentation export")
    parser.add_argument("-prev_stage_predictions", default=None,
                        help="cascade input of nnUNetv2_predict; not supported by STIPPLE (rejected)")
    parser.add_argument("-num_parts", type=int, default=1, help="split the cases into this many parts (jobs)")
    parser.add_argument("-part_id", type=int, default=0, help="which part (0 .. num_parts-1) this call predicts")
    add_device(parser, help="device to predict on; pick a GPU with CUDA_VISIBLE_DEVICES")
    parser.add_argument("--disable_progress_bar", action="store_true", help="no progress bar (for batch jobs)")
    parser.add_argument("--not_on_device", action="store_true",
                        help="do not keep the whole case on the device (for cases larger than the GPU memory)")
    parser.add_argument("--no_positioning_report", action="store_true",
                        help="do not write the per-case positioning JSONs to OUTPUT/stipple_positioning/")
    add_positioning_arguments(parser, "Override the model's positioning settings for this prediction (the same "
                                      "options as nnUNetv2_stipple_position). A setting not given keeps the "
                                      "model's value: its trainer's stipple_<setting>, stored in the checkpoint "
                                      "(the built-in default for checkpoints older than the setting).")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.m is not None and (args.dataset is not None or args.configuration is not None):
        parser.error("give either -m MODEL_FOLDER or -d DATASET -c CONFIGURATION, not both")
    if args.m is None and (args.dataset is None or args.configuration is None):
        parser.error("give -d DATASET and -c CONFIGURATION (or -m MODEL_FOLDER)")
    from nnunet_stipple.inference.api import model_folder_of, predict_folder
    with input_errors_exit(PROG):
        model_folder = args.m if args.m is not None else model_folder_of(args.dataset, args.configuration, args.trainer,
                                                                                     args.plans)
        predict_folder(args.i, args.o, model_folder, folds=args.folds, step_size=args.step_size,
                       use_mirroring=not args.disable_tta, device=args.device,
                       perform_everything_on_device=not args.not_on_device, verbose=args.verbose,
                       allow_tqdm=not args.disable_progress_bar, save_probabilities=args.save_probabilities,
                       overwrite=not args.continue_prediction, checkpoint_name=args.checkpoint,
                       num_processes_preprocessing=args.npp, num_processes_segmentation_export=args.nps,
                       num_parts=args.num_parts, part_id=args.part_id,
                       positioning_report=not args.no_positioning_report,
                       prev_stage_predictions=args.prev_stage_predictions,
                       positioning_overrides=positioning_overrides(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
