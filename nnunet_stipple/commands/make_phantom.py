"""nnUNetv2_stipple_make_phantom: write the seeded synthetic abdomen-like phantom dataset in nnU-Net raw format."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from nnunet_stipple.commands import input_errors_exit
from nnunet_stipple.phantom.generator import PHANTOM_LABELS, make_phantom_dataset


def build_parser() -> argparse.ArgumentParser:
    labels = ", ".join(f"{v}={k}" for k, v in PHANTOM_LABELS.items())
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_stipple_make_phantom",
        description=(
            "Write a small, seeded synthetic abdomen-like CT phantom as an nnU-Net v2 raw dataset "
            "(imagesTr, labelsTr, imagesUnlabeled, dataset.json) into $nnUNet_raw/DatasetXXX_NAME. "
            "Organs have overlapping intensities (liver and spleen look alike) and their position varies "
            "strongly along z, so a spatial prior helps. Small enough to plan, preprocess and train on a CPU. "
            f"Labels: {labels}."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("-d", "--dataset-id", type=int, default=990, help="nnU-Net dataset id (1-999)")
    parser.add_argument("-n", "--name", default="STIPPLEPhantom", help="dataset name (folder DatasetXXX_NAME)")
    parser.add_argument("--num-labeled", type=int, default=16, help="number of labeled training cases (imagesTr)")
    parser.add_argument("--num-unlabeled", type=int, default=4,
                        help="number of unlabeled cases written to imagesUnlabeled (for pseudo-labeling)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=[40, 64, 64],
                        help="volume size in voxels")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"), default=[4.0, 2.0, 2.0],
                        help="voxel spacing in mm")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same arguments give identical files")
    parser.add_argument("--overwrite", action="store_true", help="replace the dataset folder if it exists")
    parser.add_argument("--raw", default=None,
                        help="nnU-Net raw folder to write into (default: the nnUNet_raw environment variable)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    raw = args.raw if args.raw else os.environ.get("nnUNet_raw")
    if not raw:
        raise SystemExit("nnUNetv2_stipple_make_phantom: no nnU-Net raw folder given; set the nnUNet_raw "
                         "environment variable or pass --raw DIR.")
    with input_errors_exit("nnUNetv2_stipple_make_phantom"):
        folder = make_phantom_dataset(raw, dataset_id=args.dataset_id, name=args.name,
                                      num_labeled=args.num_labeled, num_unlabeled=args.num_unlabeled,
                                      shape=tuple(args.shape), spacing=tuple(args.spacing), seed=args.seed,
                                      overwrite=args.overwrite)
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
