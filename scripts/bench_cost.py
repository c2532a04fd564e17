"""Side-by-side cost of STIPPLE vs plain nnU-Net on one preprocessed dataset (see nnunet_stipple.benchmarks.cost).

Example (phantom, CPU):  python scripts/bench_cost.py -d 990 -c 3d_fullres --iterations 5 --repeats 2
Prints the table of ratios and writes the full JSON (timings, machine, git commit) with -o.
"""
import json
import sys
from pathlib import Path

from nnunet_stipple.benchmarks.cost import dataset_argument_parser, format_summary, run_cost_benchmark


def main(argv=None) -> int:
    p = dataset_argument_parser(__doc__, "fold whose split/prior is used (default 0)")
    p.add_argument("-device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--iterations", type=int, default=5, help="timed training iterations per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed training iterations per run")
    p.add_argument("--repeats", type=int, default=2, help="alternating plain/STIPPLE runs of each measurement")
    p.add_argument("--cases", type=int, default=2, help="validation cases predicted per run (0: measure training and prior building only)")
    p.add_argument("--disable_tta", action="store_true", help="no mirroring in prediction")
    p.add_argument("-B", type=int, default=5, help="bins of the prior")
    p.add_argument("-o", type=Path, help="write the full results as JSON here")
    a = p.parse_args(argv)
    res = run_cost_benchmark(a.d, a.c, a.f, a.device, a.p, a.iterations, a.warmup, a.repeats, a.cases,
                             not a.disable_tta, a.B, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(res["machine"]))
    print(format_summary(res))
    if a.o:
        a.o.parent.mkdir(parents=True, exist_ok=True)
        a.o.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
