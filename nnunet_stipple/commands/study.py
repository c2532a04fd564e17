"""nnUNetv2_stipple_study: the label-efficiency study of the STIPPLE paper (Table 2, Figure 6) with nnU-Net.

Thin wrapper over :mod:`nnunet_stipple.benchmarks.study` (``run_study``, ``report_study``, ``run_cost``).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from nnunet_stipple.commands import input_errors_exit
from nnunet_stipple.commands.arguments import add_configuration, add_dataset, add_device, add_fold, add_plans
from nnunet_stipple.priors.algorithm import DEFAULT_NUM_BINS

PROG = "nnUNetv2_stipple_study"


def build_parser() -> argparse.ArgumentParser:
    from nnunet_stipple.benchmarks.study.methods import DEFAULT_METHODS, METHODS
    from nnunet_stipple.benchmarks.study.profiles import PROFILES
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Label-efficiency study of STIPPLE with nnU-Net: every (fold, label proportion alpha, method, "
                    "bins B) is one nnUNetv2_train run in its own nnUNet_results root under STUDY_DIR/runs/; "
                    "rerunning the same command resumes (finished runs are skipped, interrupted ones continue "
                    "with --c). The report (Dice from nnU-Net's summary.json, NSD with MONAI, paired t-tests, "
                    "table.md in the paper's Table 2 layout, plots) goes to STUDY_DIR/report/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="plan and train the study's runs (resumable), then write the report")
    add_dataset(run, help="dataset name or id")
    add_configuration(run, help="nnU-Net configuration (e.g. 3d_fullres)")
    run.add_argument("--study-dir", required=True, help="folder of the study (study.json, runs/, report/)")
    run.add_argument("--profile", default="cpu-small",
                     help="training budget (default cpu-small): " + "; ".join(f"{k}: {v.description}" for k, v in PROFILES.items()).replace("%", "%%"))
    run.add_argument("--folds", nargs="+", type=int, default=None, help="folds (default: the profile's)")
    run.add_argument("--alphas", nargs="+", type=float, default=None,
                     help="label proportions in %% of the fold's training cases, in (0, 100] (default: the profile's)")
    run.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                     help=f"methods among {', '.join(METHODS)} (default: the paper's Table 2, {' '.join(DEFAULT_METHODS)}; "
                          f"with --partial-remove its four methods)")
    run.add_argument("--bins", nargs="+", type=int, default=None,
                     help="number(s) of bins B of the prior; several: the bins study (Figure 6) (default: the "
                          "profile's: " + ", ".join(f"{k} {v.bins}" for k, v in PROFILES.items()) + ")")
    run.add_argument("--bins-methods", nargs="+", default=["stipple_norelab"], metavar="METHOD",
                     help="prior methods that get one run per B (default stipple_norelab); other prior methods use "
                          "B = 5 (or the first B)")
    add_plans(run, default=None, help="plans identifier (default: the profile's: "
                                      + ", ".join(f"{k} {v.plans}" for k, v in PROFILES.items()) + ")")
    add_device(run, default=None, choices=("cpu", "cuda"),
               help="device of nnUNetv2_train (default: the profile's: "
                    + ", ".join(f"{k} {v.device}" for k, v in PROFILES.items()) + ")")
    run.add_argument("--dry-run", action="store_true",
                     help="print the runs, their stipple_run.json and commands and the estimate; write nothing")
    run.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    run.add_argument("--record-dir", default=None,
                     help="keep the study's record here (e.g. docs/results/NAME, committed): runs recorded there "
                          "count as finished; each run's record files (study.json, run.json, summary.json, "
                          "NSD and positioning rows, logs) are copied there when it finishes, the report at the end")
    run.add_argument("--schedule-scale", type=float, default=1,
                     help="multiply the profile's number of epochs (e.g. 2: check that a longer schedule changes "
                          "little); one schedule per study folder")
    run.add_argument("--partial-remove", nargs="+", default=None, metavar="CLASS",
                     help="the partial-labels simulation (thesis ch. 3): remove these classes (names of dataset.json's "
                          "labels) from 100 - alpha %% of each fold's training cases (validation cases keep every "
                          "organ); the derived data live in STUDY_DIR/partial_data/. Runs the methods partial_plain "
                          "partial_ignore inerrant inerrant_prior only (the default then)")
    run.add_argument("--nsd-tolerance", type=float, default=None,
                     help="tolerance of the normalised surface distance in mm (default: the profile's, "
                          f"{', '.join(f'{k} {v.nsd_tolerance_mm:g}' for k, v in PROFILES.items())})")

    rep = sub.add_parser("report", help="(re)aggregate whatever has finished into STUDY_DIR/report/",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    rep.add_argument("--study-dir", required=True,
                     help="study folder, or a record folder (docs/results/NAME): the report is rebuilt from it")
    rep.add_argument("--record-dir", default=None, help="also copy the report and study.json here")
    rep.add_argument("--nsd-tolerance", type=float, default=None,
                     help="tolerance of the normalised surface distance in mm (default: the study's)")

    cost = sub.add_parser("cost", help="cost of STIPPLE vs plain nnU-Net (nnunet_stipple.benchmarks.cost), "
                                       "stored as STUDY_DIR/cost.json (used by `run` for its time estimate)",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataset(cost, help="dataset name or id (planned and preprocessed)")
    add_configuration(cost)
    cost.add_argument("--study-dir", required=True)
    add_plans(cost, default=None, help="plans identifier (default: the study's, else nnUNetPlans)")
    add_fold(cost, default=0, help="fold whose cases are measured")
    add_device(cost, default="cpu", choices=("cpu", "cuda"))
    cost.add_argument("--iterations", type=int, default=5, help="timed training iterations per run")
    cost.add_argument("--warmup", type=int, default=2, help="untimed training iterations per run")
    cost.add_argument("--repeats", type=int, default=2, help="alternating plain/STIPPLE runs of each measurement")
    cost.add_argument("--cases", type=int, default=2, help="validation cases predicted per run")
    cost.add_argument("--disable_tta", action="store_true", help="no mirroring in prediction")
    cost.add_argument("-B", "--num-bins", type=int, default=DEFAULT_NUM_BINS, help="bins of the prior")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from nnunet_stipple.benchmarks import study as st

    def log(msg: str) -> None:
        print(msg, flush=True)

    with input_errors_exit(PROG):
        if args.command == "run":
            res = st.run_study(args.dataset, args.configuration, args.study_dir, profile=args.profile,
                               folds=args.folds, alphas=args.alphas, methods=args.methods, bins=args.bins,
                               bins_methods=args.bins_methods, plans=args.plans, device=args.device,
                               dry_run=args.dry_run, report=not args.no_report,
                               nsd_tolerance_mm=args.nsd_tolerance, schedule_scale=args.schedule_scale,
                               record_dir=args.record_dir, partial_remove=args.partial_remove, log=log)
            if res.get("failed"):
                print(f"{PROG}: {len(res['failed'])} run(s) failed: {', '.join(res['failed'])} (see their "
                      f"train_fold*.log); rerun the same command to retry them.", file=sys.stderr)
                return 1
        elif args.command == "report":
            st.report_study(args.study_dir, nsd_tolerance_mm=args.nsd_tolerance, record_dir=args.record_dir,
                            log=log)
        else:
            st.run_cost(args.dataset, args.configuration, args.study_dir, plans=args.plans, fold=args.fold,
                        device=args.device, iterations=args.iterations, warmup=args.warmup, repeats=args.repeats,
                        num_cases=args.cases, mirroring=not args.disable_tta, num_bins=args.num_bins,
                        log=lambda m: print(m, file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
