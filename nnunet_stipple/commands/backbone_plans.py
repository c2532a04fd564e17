"""nnUNetv2_stipple_backbone_plans: plans for the Attention U-Net / U-Transformer backbones from nnU-Net's plans."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from nnunet_stipple.commands import input_errors_exit
from nnunet_stipple.commands.arguments import add_dataset

PROG = "nnUNetv2_stipple_backbone_plans"


def build_parser() -> argparse.ArgumentParser:
    from nnunet_stipple.networks.backbone_plans import BACKBONES, DEFAULT_MAX_ATTENTION_TOKENS, SOURCE_PLANS
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Write plans whose network is another backbone, next to nnU-Net's plans of a preprocessed dataset "
            "($nnUNet_preprocessed/DatasetXXX/SOURCE_PLANS_BACKBONE.json unless --name). Only the network changes: "
            "nnU-Net's encoder/decoder arguments, patch and batch size and data_identifier are kept, so nnU-Net's "
            "preprocessed data is reused. Then train with nnUNetv2_train DATASET CONFIG FOLD -p NEW_PLANS "
            "(-tr STIPPLETrainer for STIPPLE) and predict with -p NEW_PLANS. The source plans are never modified. "
            "Backbones: " + "; ".join(f"{k}: {v.description}" for k, v in BACKBONES.items()) + "."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_dataset(parser)
    parser.add_argument("-c", "--configurations", nargs="+", required=True, metavar="CONFIG",
                        help="nnU-Net configuration(s) to convert (2d, 3d_fullres, 3d_lowres; not the cascade)")
    parser.add_argument("-p", "--plans", default=SOURCE_PLANS, help="source plans identifier (nnU-Net's plans)")
    parser.add_argument("--backbone", required=True, choices=sorted(BACKBONES), help="network of the new plans")
    parser.add_argument("--name", default=None, help="identifier of the new plans (default: SOURCE_PLANS_BACKBONE)")
    parser.add_argument("--max-attention-tokens", type=int, default=DEFAULT_MAX_ATTENTION_TOKENS,
                        help="u_transformer: cross-attention only on skips whose coarser level has at most this "
                             "many voxels in a patch (the attention matrix grows with its square)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing plans file of that name")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from nnunet_stipple.networks.backbone_plans import write_backbone_plans
    with input_errors_exit(PROG):
        write_backbone_plans(args.dataset, args.configurations, args.backbone, source_plans=args.plans,
                             plans_name=args.name, max_attention_tokens=args.max_attention_tokens,
                             overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
