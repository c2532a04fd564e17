"""Stand-ins for the heavy parts of scripts/gpu_study.sh in its CPU test (tests/scripts/test_gpu_study.py).

* ``plan_and_preprocess`` / ``train``: the console scripts ``nnUNetv2_plan_and_preprocess`` and ``nnUNetv2_train``
  (put first on PATH by the test). They write what nnU-Net leaves behind and the harness reads: the preprocessed
  dataset's plans, splits and ground truth; a model folder with validation predictions, nnU-Net's summary.json,
  a training log and checkpoints (which must not end up in the record).
* ``install_cost_hook``: imported by a .pth file of the test's venv; replaces the measuring subprocesses of
  ``nnunet_stipple.benchmarks.cost`` by canned results.

Every call is appended as a JSON line to the file named by ``GPU_STUDY_FAKE_LOG``.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

LOG_VARIABLE = "GPU_STUDY_FAKE_LOG"


def _log(entry: dict) -> None:
    with open(os.environ[LOG_VARIABLE], "a") as f:
        f.write(json.dumps(entry) + "\n")


def _option(argv, name, default=None):
    return argv[argv.index(name) + 1] if name in argv else default


def plan_and_preprocess(argv) -> int:
    _log({"tool": "plan_and_preprocess", "argv": argv, "nnUNet_preprocessed": os.environ.get("nnUNet_preprocessed")})
    did = int(_option(argv, "-d"))
    raw = next(Path(os.environ["nnUNet_raw"]).glob(f"Dataset{did:03d}_*"))
    base = Path(os.environ["nnUNet_preprocessed"]) / raw.name
    (base / "gt_segmentations").mkdir(parents=True)
    shutil.copy(raw / "dataset.json", base / "dataset.json")
    ending = json.loads((raw / "dataset.json").read_text()).get("file_ending", ".nii.gz")
    cases = sorted(p.name[:-len(ending)] for p in (raw / "labelsTr").glob(f"*{ending}"))
    for c in cases:
        shutil.copy(raw / "labelsTr" / f"{c}{ending}", base / "gt_segmentations" / f"{c}{ending}")
    (base / "splits_final.json").write_text(json.dumps([{"train": cases[:-2], "val": cases[-2:]},
                                                        {"train": cases[2:], "val": cases[:2]}]))
    arch = {"network_class_name": "x", "arch_kwargs": {}, "_kw_requires_import": []}
    configs = {"2d": {"data_identifier": "nnUNetPlans_2d", "patch_size": [32, 32], "batch_size": 12,
                      "spacing": [2.0, 2.0], "median_image_size_in_voxels": [32, 32], "architecture": arch},
               "3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres", "patch_size": [24, 32, 32],
                              "batch_size": 2, "spacing": [4.0, 2.0, 2.0],
                              "median_image_size_in_voxels": [24, 32, 32], "architecture": arch}}
    plans = {"dataset_name": raw.name, "plans_name": "nnUNetPlans", "transpose_forward": [0, 1, 2],
             "transpose_backward": [0, 1, 2], "configurations": configs}
    (base / "nnUNetPlans.json").write_text(json.dumps(plans))
    for config in argv[argv.index("-c") + 1:]:
        if config.startswith("-"):
            break
        folder = base / configs[config]["data_identifier"]
        folder.mkdir()
        for c in cases:
            (folder / f"{c}.b2nd").write_bytes(b"")
    return 0


def train(argv) -> int:
    import numpy as np
    import SimpleITK as sitk
    dataset, config, fold = argv[0], argv[1], int(argv[2])
    trainer, plans = _option(argv, "-tr"), _option(argv, "-p")
    mdir = Path(os.environ["nnUNet_results"]) / dataset / f"{trainer}__{plans}__{config}"
    run_config = json.loads((mdir / "stipple_run.json").read_text())
    _log({"tool": "train", "argv": argv, "nnUNet_results": os.environ["nnUNet_results"], "run_config": run_config,
          "nnUNet_compile": os.environ.get("nnUNet_compile"), "nnUNet_extTrainer": os.environ.get("nnUNet_extTrainer")})
    pre = Path(os.environ["nnUNet_preprocessed"]) / dataset
    djson = json.loads((pre / "dataset.json").read_text())
    ending = djson.get("file_ending", ".nii.gz")
    labels = sorted(v for k, v in djson["labels"].items() if k not in ("background", "ignore"))
    fdir = mdir / f"fold_{fold}"
    val = fdir / "validation"
    val.mkdir(parents=True, exist_ok=True)
    shutil.copy(pre / "dataset.json", mdir / "dataset.json")
    shutil.copy(pre / f"{plans}.json", mdir / "plans.json")
    per_case = []
    for case in json.loads((pre / "splits_final.json").read_text())[fold]["val"]:
        ref_file, pred_file = pre / "gt_segmentations" / f"{case}{ending}", val / f"{case}{ending}"
        ref_img = sitk.ReadImage(str(ref_file))
        ref = sitk.GetArrayFromImage(ref_img)
        pred = ref.copy()
        if not trainer.startswith("STIPPLE"):
            pred[pred == labels[-1]] = 0                     # plain nnU-Net misses the last organ
        out = sitk.GetImageFromArray(pred)
        out.CopyInformation(ref_img)
        sitk.WriteImage(out, str(pred_file))
        metrics = {}
        for lab in labels:
            p, r = pred == lab, ref == lab
            tp, fp, fn = int((p & r).sum()), int((p & ~r).sum()), int((~p & r).sum())
            metrics[str(lab)] = {"Dice": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
                                 "IoU": tp / (tp + fp + fn) if tp + fp + fn else float("nan"),
                                 "FN": fn, "FP": fp, "TP": tp, "TN": int(p.size - tp - fp - fn),
                                 "n_pred": int(p.sum()), "n_ref": int(r.sum())}
        per_case.append({"metrics": metrics, "prediction_file": str(pred_file), "reference_file": str(ref_file)})
    mean = {k: {"Dice": float(np.nanmean([c["metrics"][k]["Dice"] for c in per_case]))} for k in per_case[0]["metrics"]}
    summary = {"foreground_mean": {"Dice": float(np.nanmean([m["Dice"] for m in mean.values()]))}, "mean": mean,
               "metric_per_case": per_case}
    (val / "summary.json").write_text(json.dumps(summary, allow_nan=True))
    (fdir / "training_log_fake.txt").write_text(f"fake training of {trainer}\n")
    (fdir / "progress.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (fdir / "checkpoint_latest.pth").write_bytes(b"weights")
    if not trainer.startswith("STIPPLE"):   # a STIPPLE model with a checkpoint gets its positioning measured
        (fdir / "checkpoint_final.pth").write_bytes(b"weights")
    print(f"fake nnUNetv2_train {' '.join(argv)}")
    return 0


def _fake_cost_worker(kind: str, method: str, args: dict) -> dict:
    _log({"tool": "cost_worker", "kind": kind, "method": method, "args": args,
          "nnUNet_extTrainer": os.environ.get("nnUNet_extTrainer")})
    step = 0.10 if method == "plain" else 0.11
    if kind == "training":
        return {"seconds_per_iteration": step, "all": [step] * args["iterations"], "peak_memory_mb": 100.0,
                "patch_size": [32, 32], "batch_size": 12}
    if kind == "prediction":
        return {"seconds_per_case": 10 * step, "all": [10 * step], "cases": ["case"],
                "positioning_seconds": [0.05] if method == "stipple" else [], "peak_memory_mb": 50.0}
    return {"read_labels_seconds": 0.01, "build_seconds": 0.02, "training_cases": 6}


def install_cost_hook() -> None:
    if not os.environ.get(LOG_VARIABLE):
        return
    import nnunet_stipple.benchmarks.cost as cost
    cost._run_worker = _fake_cost_worker


if __name__ == "__main__":
    sys.exit({"plan_and_preprocess": plan_and_preprocess, "train": train}[sys.argv[1]](sys.argv[2:]))
