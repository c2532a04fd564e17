"""nnUNetv2_stipple_show_prior: print a readable summary of a STIPPLE spatial prior file."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from nnunet_stipple.commands import input_errors_exit
from nnunet_stipple.commands.arguments import add_configuration, add_dataset, add_fold, add_plans
from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.priors.algorithm import DEFAULT_NUM_BINS

PROG = "nnUNetv2_stipple_show_prior"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Print a summary of a STIPPLE spatial prior: dataset, plans, configuration, fold, B, axial axis, "
            "spacing, number of training cases and, per class, its name, number of cases, box size (voxels and "
            "mm), mean organ centre and histogram statistics; missing classes and the figures folder. Give the "
            "prior file (fold_F.npz, with its fold_F.json next to it) or locate it with -d/-c/-f/-B/-p."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("path", nargs="?", default=None, metavar="PATH_TO_fold_X.npz",
                        help="prior file written by nnUNetv2_stipple_build_priors or by a STIPPLE trainer")
    add_dataset(parser, required=False, help="dataset name or id (instead of PATH)")
    add_configuration(parser, required=False, help="nnU-Net configuration (with -d)")
    add_fold(parser, help="fold number or 'all' (with -d)")
    parser.add_argument("-B", "--num-bins", type=int, default=DEFAULT_NUM_BINS,
                        help="number of bins of the prior (with -d)")
    add_plans(parser, help="plans identifier (with -d)")
    return parser


def locate_prior(dataset, configuration: str, fold, num_bins: int, plans_identifier: str) -> Path:
    """The prior file of (dataset, configuration, fold, B, plans); lists the built ones if it is missing."""
    from nnunet_stipple.priors.build import PRIORS_FOLDER_NAME, prior_path
    from nnunet_stipple.nnunet_folders import open_preprocessed, parse_fold
    ds = open_preprocessed(dataset, configuration, plans_identifier)
    path = prior_path(ds, parse_fold(fold), num_bins)
    if not path.is_file():
        built = sorted(str(p.relative_to(ds.base / PRIORS_FOLDER_NAME))
                       for p in (ds.base / PRIORS_FOLDER_NAME).rglob("fold_*.npz"))
        raise StippleInputError(
            f"{path} does not exist. Build it with `nnUNetv2_stipple_build_priors -d {dataset} -c {configuration} "
            f"-f {fold} -B {num_bins} -p {plans_identifier}`."
            + (f" Built priors of {ds.name}: {', '.join(built)}." if built else f" {ds.name} has no built priors."))
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    located = any(v is not None for v in (args.dataset, args.configuration, args.fold))
    if args.path is not None and located:
        parser.error("give either PATH or -d/-c/-f, not both")
    if args.path is None and not (args.dataset and args.configuration and args.fold is not None):
        parser.error("give the prior file PATH, or all of -d DATASET -c CONFIGURATION -f FOLD")
    from nnunet_stipple.priors.spatial_prior import SpatialPrior
    from nnunet_stipple.priors.summary import summarize_prior
    with input_errors_exit(PROG):
        path = Path(args.path) if args.path is not None else locate_prior(
            args.dataset, args.configuration, args.fold, args.num_bins, args.plans)
        if path.suffix == ".json":
            path = path.with_suffix(".npz")
        print(summarize_prior(SpatialPrior.load(path), npz_path=path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
