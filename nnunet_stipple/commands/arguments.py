"""Command-line arguments shared by the commands, spelled as nnU-Net's own commands spell them (``-d -c -f -p -tr
-device -chk``, with a long alias each); the parsed values land in ``dataset``, ``configuration``, ``folds`` /
``fold``, ``plans``, ``trainer``, ``device``, ``checkpoint``. A bad fold is an argparse usage error (exit 2)."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.nnunet_folders import parse_fold

DEVICES = ("cuda", "cpu", "mps")


def fold_argument(text: str):
    """argparse ``type`` of a fold: an integer or ``all``."""
    try:
        return parse_fold(text)
    except StippleInputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_dataset(parser, required: bool = True, help: str = "dataset name or id (as for nnUNetv2_train)") -> None:
    parser.add_argument("-d", "--dataset", required=required, default=None, help=help)


def add_configuration(parser, required: bool = True,
                      help: str = "nnU-Net configuration (2d, 3d_fullres, 3d_lowres; not the cascade)") -> None:
    parser.add_argument("-c", "--configuration", required=required, default=None, help=help)


def add_folds(parser, required: bool = False, default: Optional[Sequence] = None,
              help: str = "fold number(s) and/or 'all'") -> None:
    parser.add_argument("-f", "--folds", nargs="+", type=fold_argument, required=required, default=default,
                        metavar="FOLD", help=help)


def add_fold(parser, required: bool = False, default=None, help: str = "fold number or 'all'") -> None:
    parser.add_argument("-f", "--fold", type=fold_argument, required=required, default=default, help=help)


def add_plans(parser, default: Optional[str] = "nnUNetPlans", help: str = "plans identifier") -> None:
    parser.add_argument("-p", "--plans", default=default, help=help)


def add_trainer(parser, required: bool = False, default: Optional[str] = None,
                help: str = "trainer class the model was trained with") -> None:
    parser.add_argument("-tr", "--trainer", required=required, default=default, help=help)


def add_device(parser, default: Optional[str] = "cuda", choices: Sequence[str] = DEVICES,
               help: str = "device; pick a GPU with CUDA_VISIBLE_DEVICES") -> None:
    parser.add_argument("-device", "--device", default=default, choices=tuple(choices), help=help)


def add_checkpoint(parser, help: str = "checkpoint file name in each fold folder") -> None:
    parser.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth", help=help)
