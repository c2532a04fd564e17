#!/usr/bin/env python
"""Whole positioning of one BTCV 3d_fullres case, before and after issue 13, side by side in one run.

* ``numpy`` (before): what ``STIPPLEPredictor.prior_offsets`` did until issue 13: the softmax moved to numpy,
  the placement with the numpy implementations (``place_prior_reference``: joint search, KL searches,
  consistency check, one re-positioning step from the prior-driven softmax of the whole volume), then
  ``ln p`` from ``probabilities_on_grid``.
* ``torch`` (after): ``STIPPLEPredictor.prior_offsets`` itself, the whole placement in torch on the device of
  the logits (``--device``), re-positioning computing prior-driven probabilities only in the search regions.

The case is simulated (``nnunet_stipple.benchmarks.simulated_case``: the shape, spacing, classes and prior
boxes of the BTCV case and fold-0 prior of docs/benchmarks.md) with an ``untrained`` first prediction (random
weights: every class everywhere, the worst case) and a ``trained`` one. Each repeat runs both methods on
the same logits, alternating which goes first; medians, their ratio, the first (cold) call of each, and
whether the placements agree (centres, KL offsets, costs, predicted voxels, the offsets added to the logits).
Besides the wall-clock seconds it prints the CPU seconds of the process: with other jobs on the cores the
wall clock measures the load as much as the work; with one thread the CPU time is close to what the work
takes on a quiet core.

Example:
    python scripts/bench_device_positioning.py                      # CPU, 3 repeats per kind
    python scripts/bench_device_positioning.py --device cuda --repeats 5
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnunet_stipple.benchmarks.simulated_case import case_summary, simulated_logits, simulated_prior  # noqa: E402
from nnunet_stipple.inference.predictor import FoldPrior, STIPPLEPredictor  # noqa: E402
from nnunet_stipple.positioning.procedure import place_prior_reference  # noqa: E402
from nnunet_stipple.positioning.settings import PositioningSettings  # noqa: E402


def label_predictor(device: torch.device, num_outputs: int) -> STIPPLEPredictor:
    """A STIPPLEPredictor without a network: its positioning only (softmax classes background + organs)."""
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    predictor = STIPPLEPredictor(device=device, perform_everything_on_device=device.type == "cuda")
    predictor.label_manager = LabelManager({"background": 0, **{f"organ{c}": c for c in range(1, num_outputs)}},
                                           regions_class_order=None)
    return predictor


def numpy_positioning(fold: FoldPrior, logits: torch.Tensor):
    """``prior_offsets`` before issue 13 (module docstring); returns the offsets and the report."""
    visual = logits.to("cpu").float()
    placement = place_prior_reference(fold.prior, torch.softmax(visual, 0).numpy(), fold.positioning, fold.floor)
    offsets = torch.log(torch.from_numpy(fold.prior.probabilities_on_grid(visual.shape[1:], placement.centres,
                                                                          fold.floor)))
    return offsets, placement.report


def timed(fn, device: torch.device):
    """The result, the wall-clock seconds and the CPU seconds of this process (all its threads)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started, cpu_started = time.perf_counter(), time.process_time()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - started, time.process_time() - cpu_started


def cpu_kernel_checks(repeats: int = 7) -> str:
    """Two CPU facts behind the numbers, on the liver's search region (86 x 197 x 255, float64): a new tensor
    filled once from torch's allocator and as numpy memory (huge pages; ``nnunet_stipple.tensors.workspace``),
    and a forward real FFT by torch and by scipy (one thread each)."""
    import numpy as np
    import scipy.fft

    from nnunet_stipple.tensors import workspace
    shape = (86, 197, 255)
    fft_shape = tuple(scipy.fft.next_fast_len(n, real=True) for n in shape)
    region = np.random.default_rng(0).random(shape)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    checks = {"new tensor, torch.empty": lambda: torch.empty(shape, dtype=torch.float64).fill_(1.0),
              "new tensor, workspace (numpy)": lambda: workspace(shape, torch.float64, "cpu").fill_(1.0),
              "rfftn, torch": lambda: torch.fft.rfftn(torch.from_numpy(region), s=fft_shape),
              "rfftn, scipy": lambda: scipy.fft.rfftn(region, s=fft_shape, workers=1)}
    seconds = {}
    for name, run in checks.items():
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            run()
            runs.append(time.perf_counter() - started)
        seconds[name] = statistics.median(runs)
    torch.set_num_threads(threads)
    return ", ".join(f"{name} {1e3 * s:.1f} ms" for name, s in seconds.items())


def spectra_megabytes(prior) -> float:
    """The reference spectra kept with the prior (all devices)."""
    return sum(s.conj.numel() * s.conj.element_size() for s in prior.__dict__.get("_device_spectra", {}).values()) / 1e6


def agreement(old: dict, new: dict, old_offsets: torch.Tensor, new_offsets: torch.Tensor) -> dict:
    classes = old["classes"]
    kl = [c for c in classes if classes[c].get("cost") is not None and new["classes"][c].get("cost") is not None]
    return {
        "same_centres": old["centres"] == new["centres"],
        "same_kl_offsets": all(classes[c].get("offset") == new["classes"][c].get("offset") for c in classes),
        "same_predicted_voxels": all(classes[c].get("predicted_voxels") == new["classes"][c].get("predicted_voxels")
                                     for c in classes),
        "same_joint_displacement": (old["joint"] or {}).get("displacement") == (new["joint"] or {}).get("displacement"),
        "max_relative_cost_difference": max((abs(classes[c]["cost"] - new["classes"][c]["cost"])
                                             / max(abs(classes[c]["cost"]), 1e-300) for c in kl), default=0.0),
        "max_offset_difference": float((old_offsets - new_offsets.cpu()).abs().max()),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="device of the logits for the torch positioning (default cpu)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per kind after the cold call (default 3)")
    p.add_argument("--kinds", nargs="+", default=["untrained", "trained"], choices=["untrained", "trained"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--checks-only", action="store_true", help="only the CPU allocation and FFT checks (seconds)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"liver search region, median of 7: {cpu_kernel_checks()}")
    if args.checks_only:
        return 0
    device = torch.device(args.device)
    print(f"{datetime.datetime.now().isoformat(timespec='seconds')}  {platform.node()}  {os.cpu_count()} CPUs  "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)  device {device}  "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"simulated BTCV case {case_summary()}, default positioning settings {PositioningSettings().to_json()}")
    prior = simulated_prior()
    fold = FoldPrior(prior, 1e-3, PositioningSettings())
    predictor = label_predictor(device, prior.num_outputs)
    ok = True
    for kind in args.kinds:
        logits = simulated_logits(kind, prior).to(device)
        times, cpu_times = {"numpy": [], "torch": []}, {"numpy": [], "torch": []}
        runs = {"numpy": lambda logits=logits: numpy_positioning(fold, logits),
                "torch": lambda logits=logits, kind=kind: predictor.prior_offsets(fold, logits, kind)}
        cold = {}
        for repeat in range(args.repeats + 1):
            order = ["numpy", "torch"] if repeat % 2 == 0 else ["torch", "numpy"]
            results = {}
            for method in order:
                results[method], seconds, cpu_seconds = timed(runs[method], device)
                if repeat == 0:
                    cold[method] = seconds
                else:
                    times[method].append(seconds)
                    cpu_times[method].append(cpu_seconds)
            if repeat == 0:
                check = agreement(results["numpy"][1], results["torch"][1], results["numpy"][0], results["torch"][0])
            del results
        median = {m: statistics.median(t) for m, t in times.items()}
        cpu = {m: statistics.median(t) for m, t in cpu_times.items()}
        print(f"\n{kind}: positioning s / case, median of {args.repeats} (cold first call); CPU s of the process")
        for method in ("numpy", "torch"):
            print(f"  {method:6s} {median[method]:7.2f}  ({cold[method]:.2f})  all {[round(t, 2) for t in times[method]]}"
                  f"  CPU {cpu[method]:.2f}")
        print(f"  ratio numpy / torch: {median['numpy'] / median['torch']:.2f}x wall-clock, "
              f"{cpu['numpy'] / cpu['torch']:.2f}x CPU time")
        print(f"  agreement: {check}")
        ok = ok and check["same_centres"] and check["same_kl_offsets"]
        del logits, runs
    print(f"\nreference spectra kept with the prior: {spectra_megabytes(prior):.0f} MB")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
