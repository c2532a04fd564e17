"""Cost of STIPPLE next to plain nnU-Net, measured side by side in one run on the same data.

Each measurement runs in its own subprocess (so peak memory is per method), and the two methods alternate
(plain, STIPPLE, plain, STIPPLE, ...) so that machine load drifts hit both alike; the reported ratio is
the ratio of medians.

* training: seconds per ``train_step`` (data loading and augmentation included, as in an nnU-Net epoch)
  of ``nnUNetTrainer`` and ``STIPPLETrainer`` after warm-up iterations;
* prediction: seconds per preprocessed case for ``predict_logits_from_preprocessed_data`` of
  ``nnUNetPredictor`` and ``STIPPLEPredictor`` (sliding window + mirroring; STIPPLE adds positioning and
  the prior), with freshly initialised weights (cost does not depend on the weights);
* prior: time to build a fold's prior next to the time to just read the same labels;
* peak memory: the process's peak resident memory (VmHWM) on CPU, ``torch.cuda.max_memory_allocated``
  on GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

from nnunet_stipple.benchmarks.provenance import git_commit, machine, versions
from nnunet_stipple.priors.algorithm import DEFAULT_NUM_BINS

PLAIN, STIPPLE = "plain", "stipple"


def _peak_memory_mb(device: str) -> float:
    import torch
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _trainer(method: str, dataset: str, configuration: str, fold: int, device: str, plans: str):
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunet_stipple.nnunet_folders import open_preprocessed
    from nnunet_stipple.trainers import STIPPLETrainer
    ds = open_preprocessed(dataset, configuration, plans)
    cls = STIPPLETrainer if method == STIPPLE else nnUNetTrainer
    # nnU-Net's trainer pops 'continue_training' from the plans dict (run_training.py puts it there)
    return cls(dict(ds.plans, continue_training=False), configuration, fold, ds.dataset_json, torch.device(device))


def measure_training(method: str, dataset: str, configuration: str, fold: int, device: str, plans: str,
                     iterations: int, warmup: int) -> dict:
    import torch
    trainer = _trainer(method, dataset, configuration, fold, device, plans)
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    for _ in range(warmup):
        trainer.train_step(next(trainer.dataloader_train))
    if device == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        trainer.train_step(next(trainer.dataloader_train))
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = _peak_memory_mb(device)
    trainer.on_train_end()
    return {"seconds_per_iteration": statistics.median(times), "all": times, "peak_memory_mb": peak,
            "patch_size": list(trainer.configuration_manager.patch_size), "batch_size": trainer.batch_size}


def measure_prediction(method: str, dataset: str, configuration: str, fold: int, device: str, plans: str,
                       num_cases: int, mirroring: bool) -> dict:
    import numpy as np
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunet_stipple.inference.predictor import STIPPLEPredictor
    trainer = _trainer(method, dataset, configuration, fold, device, plans)
    trainer.initialize()
    trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # sets the test-time mirroring axes
    trainer.set_deep_supervision_enabled(False)
    _, val = trainer.do_split()
    cls = STIPPLEPredictor if method == STIPPLE else nnUNetPredictor
    predictor = cls(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring, device=torch.device(device),
                    perform_everything_on_device=device == "cuda", allow_tqdm=False)
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager, None,
                                    trainer.dataset_json, trainer.__class__.__name__,
                                    trainer.inference_allowed_mirroring_axes)
    dataset_obj = trainer.dataset_class(trainer.preprocessed_dataset_folder, val[:num_cases])
    times, positioning = [], []
    for case in dataset_obj.identifiers:
        data = torch.from_numpy(np.asarray(dataset_obj.load_case(case)[0]))
        t0 = time.perf_counter()
        if method == STIPPLE:
            predictor.predict_with_prior(data, case)
        else:
            predictor.predict_sliding_window_return_logits(data).to("cpu")
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if method == STIPPLE:
            positioning.append(predictor.last_report["folds"][0].get("positioning_seconds"))
    return {"seconds_per_case": statistics.median(times), "all": times, "cases": list(dataset_obj.identifiers),
            "positioning_seconds": positioning, "peak_memory_mb": _peak_memory_mb(device)}


def measure_prior_build(dataset: str, configuration: str, fold: int, plans: str, num_bins: int) -> dict:
    import numpy as np
    from nnunet_stipple.priors.build import build_fold_prior
    from nnunet_stipple.nnunet_folders import dataset_class_for, open_preprocessed, training_cases_of_fold
    ds = open_preprocessed(dataset, configuration, plans)
    tr, _ = training_cases_of_fold(ds, fold)
    cls = dataset_class_for(ds)(str(ds.data_folder), list(tr))
    t0 = time.perf_counter()
    total = 0
    for case in tr:
        total += int(np.asarray(cls.load_case(case)[1]).max())  # read every label fully
    read = time.perf_counter() - t0
    t0 = time.perf_counter()
    build_fold_prior(ds, fold, num_bins)
    build = time.perf_counter() - t0
    return {"read_labels_seconds": read, "build_seconds": build, "training_cases": len(tr)}


def _run_worker(kind: str, method: str, args: dict) -> dict:
    cmd = [sys.executable, "-m", "nnunet_stipple.benchmarks.cost", kind, method, json.dumps(args)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"benchmark worker printed no result:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def run_cost_benchmark(dataset: str, configuration: str, fold: int = 0, device: str = "cpu",
                       plans: str = "nnUNetPlans", iterations: int = 5, warmup: int = 2, repeats: int = 2,
                       num_cases: int = 2, mirroring: bool = True, num_bins: int = DEFAULT_NUM_BINS,
                       log=print) -> dict:
    base = {"dataset": dataset, "configuration": configuration, "fold": fold, "device": device, "plans": plans}
    results: Dict[str, Dict[str, List[dict]]] = {"training": {PLAIN: [], STIPPLE: []},
                                                 "prediction": {PLAIN: [], STIPPLE: []}}
    for r in range(repeats):
        for method in (PLAIN, STIPPLE):
            log(f"[repeat {r + 1}/{repeats}] training, {method} ...")
            results["training"][method].append(_run_worker("training", method, {**base, "iterations": iterations,
                                                                                  "warmup": warmup}))
        for method in ((PLAIN, STIPPLE) if num_cases > 0 else ()):   # num_cases 0: training and prior only
            log(f"[repeat {r + 1}/{repeats}] prediction, {method} ...")
            results["prediction"][method].append(_run_worker("prediction", method, {**base, "num_cases": num_cases,
                                                                                      "mirroring": mirroring}))
    prior = _run_worker("prior", STIPPLE, {**base, "num_bins": num_bins})

    def med(kind, method, key):
        return statistics.median(x[key] for x in results[kind][method])

    summary = {
        "train_seconds_per_iteration": {m: med("training", m, "seconds_per_iteration") for m in (PLAIN, STIPPLE)},
        "train_peak_memory_mb": {m: max(x["peak_memory_mb"] for x in results["training"][m]) for m in (PLAIN, STIPPLE)},
        "prior": prior,
    }
    summary["train_ratio"] = summary["train_seconds_per_iteration"][STIPPLE] / summary["train_seconds_per_iteration"][PLAIN]
    if num_cases > 0:
        summary.update({
            "predict_seconds_per_case": {m: med("prediction", m, "seconds_per_case") for m in (PLAIN, STIPPLE)},
            "predict_peak_memory_mb": {m: max(x["peak_memory_mb"] for x in results["prediction"][m])
                                       for m in (PLAIN, STIPPLE)},
            "positioning_seconds_per_case": statistics.median(
                s for x in results["prediction"][STIPPLE] for s in x["positioning_seconds"] if s is not None),
        })
        summary["predict_ratio"] = summary["predict_seconds_per_case"][STIPPLE] / summary["predict_seconds_per_case"][PLAIN]
    return {"settings": {**base, "iterations": iterations, "warmup": warmup, "repeats": repeats,
                         "num_cases": num_cases, "mirroring": mirroring, "num_bins": num_bins},
            "machine": machine_description(device), "summary": summary, "raw": results}


def dataset_argument_parser(doc: str, fold_help: str = "fold (default 0)") -> argparse.ArgumentParser:
    """The arguments every benchmark script takes (-d -c -p -f), with the script's docstring as its help."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", required=True, help="dataset id or name (must be planned and preprocessed)")
    p.add_argument("-c", default="3d_fullres", help="configuration (default 3d_fullres)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier")
    p.add_argument("-f", type=int, default=0, help=fold_help)
    return p


def machine_description(device: str = "cpu") -> dict:
    """The machine, versions and commit of a cost measurement, in one flat dict (from
    :mod:`nnunet_stipple.benchmarks.provenance`)."""
    host, installed = machine(device), versions()
    info = {"platform": host["platform"], "python": installed["python"], "cpu_count": host["cpu_count"],
            "torch": installed["torch"], "nnunetv2": installed["nnunetv2"], "device": device}
    if "gpu" in host:
        info["gpu"] = host["gpu"]
    info["git_commit"] = git_commit()
    return info


def format_summary(result: dict) -> str:
    s = result["summary"]
    lines = [
        f"{'':34s}{'plain nnU-Net':>16s}{'STIPPLE':>12s}{'ratio':>9s}",
        f"{'training s / iteration':34s}{s['train_seconds_per_iteration'][PLAIN]:16.3f}"
        f"{s['train_seconds_per_iteration'][STIPPLE]:12.3f}{s['train_ratio']:9.3f}",
        f"{'training peak memory (MB)':34s}{s['train_peak_memory_mb'][PLAIN]:16.0f}{s['train_peak_memory_mb'][STIPPLE]:12.0f}"
        f"{s['train_peak_memory_mb'][STIPPLE] / s['train_peak_memory_mb'][PLAIN]:9.3f}",
    ]
    if "predict_ratio" in s:
        lines += [
            f"{'prediction s / case':34s}{s['predict_seconds_per_case'][PLAIN]:16.3f}"
            f"{s['predict_seconds_per_case'][STIPPLE]:12.3f}{s['predict_ratio']:9.3f}",
            f"{'prediction peak memory (MB)':34s}{s['predict_peak_memory_mb'][PLAIN]:16.0f}"
            f"{s['predict_peak_memory_mb'][STIPPLE]:12.0f}"
            f"{s['predict_peak_memory_mb'][STIPPLE] / s['predict_peak_memory_mb'][PLAIN]:9.3f}",
            f"positioning s / case (in STIPPLE prediction): {s['positioning_seconds_per_case']:.3f}",
        ]
    else:
        lines.append("prediction: not measured (--cases 0)")
    lines += [
        f"prior build: {s['prior']['build_seconds']:.2f} s for {s['prior']['training_cases']} cases "
        f"(just reading the labels: {s['prior']['read_labels_seconds']:.2f} s)",
    ]
    return "\n".join(lines)


def _worker_main(argv: List[str]) -> None:
    kind, method, args = argv[0], argv[1], json.loads(argv[2])
    common = dict(dataset=args["dataset"], configuration=args["configuration"], fold=args["fold"],
                  plans=args["plans"])
    if kind == "training":
        res = measure_training(method, device=args["device"], iterations=args["iterations"], warmup=args["warmup"],
                               **common)
    elif kind == "prediction":
        res = measure_prediction(method, device=args["device"], num_cases=args["num_cases"],
                                 mirroring=args["mirroring"], **common)
    else:
        res = measure_prior_build(num_bins=args["num_bins"], **common)
    print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
