"""Dice on a fold's validation cases with automatic vs ground-truth prior positioning (paper Table 4).

Example:  python scripts/eval_positioning.py -m $nnUNet_results/Dataset990_STIPPLEPhantom/STIPPLETrainer__nnUNetPlans__3d_fullres -f 0
          (add e.g. --search-radius-mm 30 to evaluate other positioning settings than the model's)
"""
import argparse
import json
import sys
from pathlib import Path

from nnunet_stipple.benchmarks.positioning_eval import evaluate_positioning, format_positioning_table
from nnunet_stipple.commands import input_errors_exit
from nnunet_stipple.positioning.settings import add_positioning_arguments, positioning_overrides


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", required=True, help="trained model folder (<trainer>__<plans>__<configuration>)")
    p.add_argument("-f", type=int, default=0, help="fold")
    p.add_argument("-chk", default="checkpoint_final.pth")
    p.add_argument("-device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--max_cases", type=int, default=None)
    p.add_argument("--tta", action="store_true", help="use test-time mirroring")
    p.add_argument("-o", type=Path, help="write results JSON here")
    add_positioning_arguments(p, "Change the model's positioning settings (mode 'auto'; the other modes change "
                                 "the same base). A setting not given keeps the model's value.")
    a = p.parse_args(argv)
    with input_errors_exit("eval_positioning.py"):
        res = evaluate_positioning(a.m, a.f, a.chk, a.device, a.max_cases, a.tta,
                                   positioning_overrides=positioning_overrides(a))
    print(format_positioning_table(res))
    if a.o:
        a.o.parent.mkdir(parents=True, exist_ok=True)
        a.o.write_text(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
