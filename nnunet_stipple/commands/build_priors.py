"""nnUNetv2_stipple_build_priors: build the STIPPLE spatial prior of folds of a preprocessed nnU-Net dataset."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from nnunet_stipple.commands import input_errors_exit
from nnunet_stipple.commands.arguments import add_configuration, add_dataset, add_folds, add_plans
from nnunet_stipple.priors.algorithm import DEFAULT_NUM_BINS

PROG = "nnUNetv2_stipple_build_priors"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Build the STIPPLE spatial prior (Algorithm 1: per-class, per-bin organ histograms in organ-centred "
            "boxes) of one or more folds from nnU-Net's preprocessed data, using each fold's training cases "
            "from splits_final.json (created as nnU-Net's trainer would if missing). Writes fold_F.npz + "
            "fold_F.json and PNG figures to $nnUNet_preprocessed/DatasetXXX/stipple_priors/PLANS__CONFIG/B<B>/. "
            "A matching existing prior is reused unless --overwrite. Run nnUNetv2_plan_and_preprocess first. "
            "Training with a STIPPLE trainer builds missing priors itself; this command builds them ahead of "
            "time and lets you inspect them."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_dataset(parser)
    add_configuration(parser)
    add_folds(parser, required=True, help="fold number(s) of splits_final.json and/or 'all' (all training cases)")
    parser.add_argument("-B", "--num-bins", type=int, default=DEFAULT_NUM_BINS,
                        help="number of bins along the axial axis; at most the smallest class depth in slices")
    add_plans(parser)
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if a matching prior exists")
    parser.add_argument("--no-figures", action="store_true", help="do not write the PNG figures of the priors")
    parser.add_argument("--axial-axis", type=int, choices=(0, 1, 2), default=None,
                        help="axis of the preprocessed arrays to bin along (default: read from the image geometry)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from nnunet_stipple.priors.build import build_priors
    with input_errors_exit(PROG):
        build_priors(args.dataset, args.configuration, args.folds, num_bins=args.num_bins,
                     plans_identifier=args.plans, overwrite=args.overwrite, figures=not args.no_figures,
                     axial_axis=args.axial_axis)
    return 0


if __name__ == "__main__":
    sys.exit(main())
