"""Positioning ablation on trained STIPPLE models (issue 14): Dice on a fold's validation cases with the prior
placed by each variant of nnunet_stipple.benchmarks.positioning_ablation.ABLATION_VARIANTS, next to the visual
(prior-free) prediction and ground-truth organ centres, with the positioning efficiency of every variant.

Example (the evidence study's fold-0 models; settings chosen there, reported on fold 1):
    python scripts/positioning_ablation.py -f 0 --cache ~/positioning_cache \\
        -m alpha10=~/studies/btcv102_2d_cpu/runs/10/stipple_norelab/Dataset102_BTCVLowres/STIPPLETrainer__nnUNetPlans_cpu2d__2d \\
        -m alpha100=~/studies/btcv102_2d_cpu/runs/100/stipple_norelab/Dataset102_BTCVLowres/STIPPLETrainer__nnUNetPlans_cpu2d__2d \\
        -o docs/results/positioning_btcv102_2d/fold0 --method hybrid
One network pass per case (mirroring on, as nnU-Net predicts), kept in the cache folder; each variant then costs
only its placement. Writes ablation.json, ablation.md and positioning.csv to -o.
"""
import argparse
import sys
from pathlib import Path

from nnunet_stipple.benchmarks.positioning_ablation import ABLATION_VARIANTS, ablation_markdown, run_ablation, \
    write_records
from nnunet_stipple.commands import input_errors_exit
from nnunet_stipple.errors import StippleInputError


def _named_model(text: str):
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=MODEL_FOLDER, got {text!r}")
    return name, Path(folder).expanduser()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", type=_named_model, action="append", required=True, metavar="NAME=MODEL_FOLDER",
                   help="a trained STIPPLE model folder (<trainer>__<plans>__<configuration>) and its name in the "
                        "records (run_id); repeat for several models")
    p.add_argument("-f", type=int, default=0, help="fold (default 0)")
    p.add_argument("--cache", type=Path, required=True, help="folder keeping the network's logits per model and case")
    p.add_argument("-o", type=Path, required=True, help="output folder for ablation.json, ablation.md, positioning.csv")
    p.add_argument("--variants", nargs="+", default=list(ABLATION_VARIANTS), choices=list(ABLATION_VARIANTS),
                   metavar="VARIANT", help=f"variants to run (default all: {', '.join(ABLATION_VARIANTS)})")
    p.add_argument("--method", default="hybrid", choices=list(ABLATION_VARIANTS),
                   help="the variant written as mode 'auto' in positioning.csv (default: hybrid)")
    p.add_argument("-device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--no-mirroring", action="store_true", help="predict without test-time mirroring")
    p.add_argument("--max-cases", type=int, default=None, help="only the first N validation cases (quick checks)")
    a = p.parse_args(argv)
    models = dict(a.m)
    with input_errors_exit("positioning_ablation.py"):
        if a.method not in a.variants:
            raise StippleInputError(f"--method {a.method} is not among --variants {a.variants}.")
        for name, folder in models.items():
            if not (folder / f"fold_{a.f}" / "checkpoint_final.pth").is_file():
                raise StippleInputError(f"{folder / f'fold_{a.f}'}: no checkpoint_final.pth; give a finished model "
                                        f"folder for {name}.")
        results = run_ablation({n: str(f) for n, f in models.items()}, a.f, a.cache, a.variants, a.device,
                               mirroring=not a.no_mirroring, max_cases=a.max_cases)
        write_records(a.o, results, {n: a.f for n in results}, a.method)
    print(ablation_markdown(results))
    print(f"written: {a.o}/ablation.json, ablation.md, positioning.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
