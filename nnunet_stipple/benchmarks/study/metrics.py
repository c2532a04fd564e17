"""Metrics of the study's validation cases: Dice (nnU-Net's own ``summary.json``) and NSD (MONAI's surface Dice,
cached per run and fold), per case and class; their aggregation over cases and folds; paired tests between
runs."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_stipple.atomic import write_json_atomic
from nnunet_stipple.benchmarks.study.planning import RunSpec
from nnunet_stipple.benchmarks.study.study_folder import RUNS_FOLDER, model_folder
from nnunet_stipple.errors import StippleInputError


def json_float(x) -> Optional[float]:
    """A float for JSON (NaN/None -> None)."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def nan_if_none(x) -> float:
    return float("nan") if x is None else float(x)


# ---------------------------------------------------------------------------------------------------------------
# NSD
# ---------------------------------------------------------------------------------------------------------------
def _key_labels(key: str) -> List[int]:
    """nnU-Net summary key ('1' or '(1, 2)' for regions) -> labels."""
    key = str(key).strip()
    if key.startswith("("):
        return [int(v) for v in key.strip("()").split(",") if v.strip()]
    return [int(key)]


def surface_dice(pred_mask: np.ndarray, gt_mask: np.ndarray, spacing: Sequence[float], tolerance_mm: float) -> float:
    """Normalised surface distance (NSD, surface Dice at ``tolerance_mm``) of one binary structure, by MONAI's
    ``compute_surface_dice`` on one-hot tensors, in the bounding box of both masks plus a margin (exact:
    distances between boundary voxels do not depend on the crop). NaN if both masks are empty, 0 if one is."""
    import torch
    from monai.metrics import compute_surface_dice
    pred_mask, gt_mask = np.asarray(pred_mask, bool), np.asarray(gt_mask, bool)
    if pred_mask.shape != gt_mask.shape:
        raise StippleInputError(f"prediction and reference have different shapes {pred_mask.shape} / {gt_mask.shape}")
    both = pred_mask | gt_mask
    if not both.any():
        return float("nan")
    if not pred_mask.any() or not gt_mask.any():
        return 0.0
    idx = np.nonzero(both)
    sl = tuple(slice(max(0, int(i.min()) - 2), int(i.max()) + 3) for i in idx)
    p, g = pred_mask[sl], gt_mask[sl]

    def onehot(m):
        t = torch.from_numpy(np.stack([~m, m])[None].astype(np.uint8))
        return t

    import warnings
    with warnings.catch_warnings():   # MONAI 1.5+ warns about its own internal use of a deprecated argument
        warnings.simplefilter("ignore", FutureWarning)
        val = compute_surface_dice(onehot(p), onehot(g), class_thresholds=[float(tolerance_mm)],
                                   include_background=False, distance_metric="euclidean",
                                   spacing=[float(s) for s in spacing])
    return float(val[0, 0])


def read_segmentation(path: Path) -> Tuple[np.ndarray, List[float]]:
    """Label array (SimpleITK axis order z, y, x) and its spacing in the same order."""
    import SimpleITK as sitk
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), list(img.GetSpacing())[::-1]


def case_nsd(pred_file: Path, gt_file: Path, keys: Sequence[str], tolerance_mm: float) -> Dict[str, Optional[float]]:
    pred, _ = read_segmentation(pred_file)
    gt, spacing = read_segmentation(gt_file)
    out = {}
    for k in keys:
        labels = _key_labels(k)
        out[k] = json_float(surface_dice(np.isin(pred, labels), np.isin(gt, labels), spacing, tolerance_mm))
    return out


# ---------------------------------------------------------------------------------------------------------------
# per case: Dice and NSD of one finished (run, fold)
# ---------------------------------------------------------------------------------------------------------------
def _file_ending(dataset_json: dict) -> str:
    return dataset_json.get("file_ending", ".nii.gz")


def _case_id(path: str, ending: str) -> str:
    name = Path(path).name
    return name[: -len(ending)] if name.endswith(ending) else name.split(".")[0]


def label_names(dataset_json: dict) -> Dict[str, str]:
    """summary key -> class name (foreground classes and regions; no background, no ignore)."""
    names = {}
    for name, v in dataset_json.get("labels", {}).items():
        if name == "ignore" or name == "background":
            continue
        if isinstance(v, (list, tuple)):
            key = str(v[0]) if len(v) == 1 else "(" + ", ".join(str(int(i)) for i in v) + ")"
        else:
            key = str(int(v))
        names[key] = name
    return names


def pancreas_key(names: Dict[str, str]) -> Optional[str]:
    for k, n in names.items():
        if "pancreas" in n.lower():
            return k
    return None


def find_dataset_json(study: dict, study_dir: Path) -> Tuple[dict, Optional[Path]]:
    """dataset.json and gt_segmentations folder of the study's dataset."""
    for root in (os.environ.get("nnUNet_preprocessed"), study.get("nnUNet_preprocessed")):
        if root and (Path(root) / study["dataset"] / "dataset.json").is_file():
            base = Path(root) / study["dataset"]
            return json.loads((base / "dataset.json").read_text()), base / "gt_segmentations"
    for f in sorted((Path(study_dir) / RUNS_FOLDER).glob(f"*/*/{study['dataset']}/*/dataset.json")):
        return json.loads(f.read_text()), None
    raise StippleInputError(f"dataset.json of {study['dataset']} not found: set nnUNet_preprocessed (the study "
                            f"reads gt_segmentations/ and dataset.json there).")


def nsd_cache_name(fold: int, tolerance_mm: float) -> str:
    """The file in a run's folder that keeps the NSD per case of a fold at one tolerance, computed once."""
    return f"nsd_fold{fold}_tol{tolerance_mm:g}mm.json"


def fold_cases(study_dir: Path, spec: RunSpec, study: dict, fold: int, dataset_json: dict,
                gt_folder: Optional[Path], names: Dict[str, str], tolerance_mm: float,
                log: Callable[[str], None]) -> Optional[List[dict]]:
    """Per-case Dice (nnU-Net's summary.json) and NSD (cached) of one finished (run, fold); None if unfinished."""
    root = spec.folder(study_dir)
    mdir = model_folder(root, study["dataset"], spec.trainer, study["plans"], study["configuration"])
    val = mdir / f"fold_{fold}" / "validation"
    summary_file = val / "summary.json"
    if not summary_file.is_file():
        return None
    summary = json.loads(summary_file.read_text())
    ending = _file_ending(dataset_json)
    keys = [k for k in names if any(k in c["metrics"] for c in summary["metric_per_case"])]
    cache_file = root / nsd_cache_name(fold, tolerance_mm)
    cache = {}
    if cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
        except json.JSONDecodeError:
            cache = {}
    if cache.get("tolerance_mm") != tolerance_mm:
        cache = {"tolerance_mm": tolerance_mm, "cases": {}}
    changed = False
    cases = []
    for c in summary["metric_per_case"]:
        case = _case_id(c["prediction_file"], ending)
        pred = val / f"{case}{ending}"
        if not pred.is_file():
            pred = Path(c["prediction_file"])
        gt = gt_folder / f"{case}{ending}" if gt_folder is not None else None
        if gt is None or not gt.is_file():
            gt = Path(c["reference_file"])
        stamp = None
        if pred.is_file():
            st = pred.stat()
            stamp = [st.st_size, st.st_mtime_ns]
        cached = cache["cases"].get(case)
        # a recorded value stands when the prediction is gone (a study rebuilt from its record)
        if cached is not None and all(k in cached["nsd"] for k in keys) and stamp in (None, cached.get("stamp")):
            nsd = cached["nsd"]
        elif pred.is_file() and gt.is_file():
            nsd = case_nsd(pred, gt, keys, tolerance_mm)
            cache["cases"][case] = {"stamp": stamp, "nsd": nsd}
            changed = True
        else:
            log(f"  warning: {pred} or {gt} missing; NSD of {case} not computed")
            nsd = {k: None for k in keys}
        classes = {}
        for k in keys:
            m = c["metrics"].get(k, {})
            classes[k] = {"name": names[k], "dice": json_float(m.get("Dice")), "nsd": json_float(nsd.get(k))}
        dices = [nan_if_none(v["dice"]) for v in classes.values()]
        nsds = [nan_if_none(v["nsd"]) for v in classes.values()]
        cases.append({"fold": fold, "case": case, "classes": classes,
                      "mean_fg_dice": json_float(np.nanmean(dices)) if not all(map(math.isnan, dices)) else None,
                      "mean_fg_nsd": json_float(np.nanmean(nsds)) if not all(map(math.isnan, nsds)) else None})
    if changed:
        write_json_atomic(cache_file, cache)
    return cases


# ---------------------------------------------------------------------------------------------------------------
# aggregation over cases and folds, paired tests
# ---------------------------------------------------------------------------------------------------------------
def case_metric(case: dict, metric: str, pancreas: Optional[str]) -> float:
    """One case's value of a report metric: ``dice`` / ``nsd`` (mean over foreground classes) or
    ``pancreas_dice`` / ``pancreas_nsd``; NaN where it has none."""
    if metric in ("dice", "nsd"):
        return nan_if_none(case[f"mean_fg_{metric}"])
    kind = metric.split("_", 1)[1]
    c = case["classes"].get(pancreas) if pancreas else None
    return nan_if_none(c[kind]) if c else float("nan")


def aggregate_folds(cases_by_fold: Dict[int, List[dict]], metric: str, pancreas: Optional[str]) -> dict:
    """Mean over folds of each fold's mean over its cases, with the sample std over folds (over cases when only
    one fold finished)."""
    fold_means = {f: float(np.nanmean([case_metric(c, metric, pancreas) for c in cs]))
                  for f, cs in cases_by_fold.items()
                  if cs and not all(math.isnan(case_metric(c, metric, pancreas)) for c in cs)}
    values = list(fold_means.values())
    if not values:
        return {"mean": None, "std": None, "std_over": None, "per_fold": {}, "n_cases": 0}
    all_cases = [v for cs in cases_by_fold.values() for v in (case_metric(c, metric, pancreas) for c in cs)
                 if not math.isnan(v)]
    if len(values) >= 2:
        std, over = float(np.std(values, ddof=1)), "folds"
    else:
        std, over = (float(np.std(all_cases, ddof=1)) if len(all_cases) >= 2 else None), "cases"
    return {"mean": float(np.mean(values)), "std": std, "std_over": over,
            "per_fold": {str(f): v for f, v in fold_means.items()}, "n_cases": len(all_cases)}


def paired_ttest(a: Dict[Tuple[int, str], float], b: Dict[Tuple[int, str], float]) -> dict:
    """Paired tests over the cases present (not NaN) in both: scipy.stats.ttest_rel (``t``, ``p``) and the
    Wilcoxon signed-rank test scipy.stats.wilcoxon (``w``, ``p_wilcoxon``; None when every difference is 0)."""
    from scipy.stats import ttest_rel, wilcoxon
    keys = sorted(k for k in set(a) & set(b) if not math.isnan(a[k]) and not math.isnan(b[k]))
    x, y = np.array([a[k] for k in keys]), np.array([b[k] for k in keys])
    out = {"n": len(keys), "mean_a": json_float(x.mean()) if keys else None,
           "mean_b": json_float(y.mean()) if keys else None,
           "mean_diff": json_float((x - y).mean()) if keys else None, "t": None, "p": None, "w": None,
           "p_wilcoxon": None}
    if len(keys) >= 2:
        res = ttest_rel(x, y)
        out["t"], out["p"] = json_float(res.statistic), json_float(res.pvalue)
        if np.any(x != y):
            res = wilcoxon(x, y)
            out["w"], out["p_wilcoxon"] = json_float(res.statistic), json_float(res.pvalue)
    return out
