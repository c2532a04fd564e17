"""nnUNetv2_stipple_position: place a STIPPLE prior in one volume (from a label or from class probabilities)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from nnunet_stipple.commands import input_errors_exit
from nnunet_stipple.positioning.volume_files import read_volume
from nnunet_stipple.positioning.layout import layout_line
from nnunet_stipple.positioning.settings import PositioningSettings, add_positioning_arguments, \
    positioning_overrides
from nnunet_stipple.priors.spatial_prior import DEFAULT_FLOOR

PROG = "nnUNetv2_stipple_position"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Position a STIPPLE spatial prior in one volume and report where each class box goes (organ centres "
            "in voxel coordinates), as JSON. The volume must be in the prior's voxel space: nnU-Net's "
            "preprocessed array of the prior's configuration (same axis order and spacing). From a label "
            "(--label) the centres are the organ bounding-box centres; from class probabilities "
            "(--probabilities) the prior is placed exactly as STIPPLE prediction places it: starting centres "
            "(--coarse-placement), each organ's exhaustive KL translation search, the anatomical consistency "
            "check, the layout check (--layout-guard: a volume holding another organ layout, e.g. mirrored, is "
            "flagged and by default left without a placement), then the re-positioning steps from the "
            "prior-driven probabilities. The positioning settings it ran with are part of the JSON."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--prior", required=True, help="prior file fold_F.npz (with fold_F.json next to it)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--label", default=None,
                     help="label volume: an image SimpleITK reads (.nii.gz, .mha, ...; array order z, y, x), a "
                          ".npy, or an .npz with 'seg'/'label' (or a single array); (1, X, Y, Z) is accepted")
    src.add_argument("--probabilities", default=None,
                     help="an .npz holding 'probabilities' (K, X, Y, Z), background first (or a .npy of it)")
    add_positioning_arguments(parser, "With --probabilities. A setting not given takes its built-in default; "
                                      "to reproduce a model's prediction give its trainer's values "
                                      "(stipple_<setting>, see the model's stipple.json).",
                              aliases={"search_radius_mm": ("--radius-mm",), "coarse_placement": ("--coarse",)})
    parser.add_argument("--floor", type=float, default=DEFAULT_FLOOR,
                        help="with --probabilities: the model's prior floor (its trainer's stipple_floor), used by "
                             "the re-positioning steps")
    parser.add_argument("-o", "--output", default=None,
                        help="write the JSON here (default: print it on stdout)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from nnunet_stipple.positioning.api import position_prior
    from nnunet_stipple.priors.spatial_prior import SpatialPrior
    with input_errors_exit(PROG):
        settings = PositioningSettings(**positioning_overrides(args))
        prior = SpatialPrior.load(args.prior)
        if args.label is not None:
            label, spacing = read_volume(args.label, "label")
            if spacing is not None and len(spacing) == len(prior.spacing) and not np.allclose(
                    spacing, prior.spacing, rtol=0.01):
                print(f"{PROG}: warning: {args.label} has spacing {spacing} (z, y, x) but the prior was built at "
                      f"{prior.spacing}; centres are only meaningful in the prior's preprocessed voxel space.",
                      file=sys.stderr)
            result = position_prior(prior, label=label)
            result["input"] = str(args.label)
        else:
            probs, _ = read_volume(args.probabilities, "probabilities")
            result = position_prior(prior, probabilities=probs, settings=settings, floor=args.floor)
            result["input"] = str(args.probabilities)
        result["prior"] = str(args.prior)
    text = json.dumps(result, indent=2)
    if args.output:
        from nnunet_stipple.atomic import write_json_atomic
        write_json_atomic(Path(args.output), result)
        print(f"wrote {args.output} (method {result['method']}, confidence {result['confidence']:.3f}, "
              f"{layout_line(result.get('layout'))})")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
