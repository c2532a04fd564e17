"""Positioning quality of the prior runs (paper Table 4 on the study's models): measured per finished fold while
its model exists (``runs/<alpha>/<name>/positioning_fold<f>.json``), collected into the report's
``positioning.csv`` rows and summarised per run (mean Dice per mode and organ, positioning efficiency)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_stipple.atomic import write_json_atomic
from nnunet_stipple.benchmarks.provenance import git_commit, now
from nnunet_stipple.benchmarks.study.metrics import json_float
from nnunet_stipple.benchmarks.study.partial_study import is_partial_method
from nnunet_stipple.benchmarks.study.planning import RunSpec
from nnunet_stipple.benchmarks.study.study_folder import model_folder

POSITIONING_MODES = ("visual", "naive", "auto", "ground_truth")   # the modes of positioning.csv


def record_positioning(spec: RunSpec, fold: int, study_dir: Path, dataset_name: str, plans: str,
                       configuration: str, device: str, log: Callable[[str], None] = print) -> Optional[Path]:
    """Positioning quality of a finished prior run's fold while its model exists: Dice per validation case and
    class with the visual prediction, naive centring, automatic positioning and ground-truth centres (and the
    other variants of :mod:`nnunet_stipple.benchmarks.positioning_eval`), nnU-Net's test-time mirroring on,
    written once to ``runs/<alpha>/<name>/positioning_fold<f>.json``."""
    if not spec.uses_prior or is_partial_method(spec.method):
        # INERRANT + prior predicts with per-class sigmoids, which positioning_eval does not measure
        return None
    out = spec.folder(study_dir) / f"positioning_fold{fold}.json"
    if out.is_file():
        return out
    mdir = model_folder(spec.folder(study_dir), dataset_name, spec.trainer, plans, configuration)
    if not (mdir / f"fold_{fold}" / "checkpoint_final.pth").is_file():
        log(f"[{spec.run_id} fold {fold}] no checkpoint_final.pth here: positioning quality not measured")
        return None
    from nnunet_stipple.benchmarks.positioning_eval import MODES, evaluate_positioning
    log(f"[{spec.run_id} fold {fold}] positioning quality on the validation cases ({', '.join(MODES)})")
    t0 = time.perf_counter()
    res = evaluate_positioning(str(mdir), fold, device=device, mirroring=True)
    rows = [{"case": case, "class_key": str(c), "mode": m, "dice": json_float(v)}
            for case, by_mode in res["per_case"].items() for m in MODES for c, v in by_mode[m].items()]
    write_json_atomic(out, {"run_id": spec.run_id, "fold": fold, "modes": list(MODES), "mirroring": True,
                            "space": "the network's (preprocessed) voxel grid", "created": now(),
                            "seconds": time.perf_counter() - t0, "git_commit": git_commit(),
                            "mean": res["mean"], "rows": rows})
    log(f"[{spec.run_id} fold {fold}] positioning: mean Dice "
        + ", ".join(f"{m} {res['mean'][m]:.3f}" for m in MODES))
    return out


def collect_positioning(study_dir: Path, specs: Sequence[RunSpec], cases_of: Dict[str, Dict[int, List[dict]]]
                        ) -> List[dict]:
    """positioning.csv rows of the finished folds of the prior runs (from their positioning_fold<f>.json)."""
    rows = []
    for s in specs:
        if s.skipped or not s.uses_prior:
            continue
        for f in sorted(cases_of.get(s.run_id, {})):
            path = s.folder(study_dir) / f"positioning_fold{f}.json"
            if not path.is_file():
                continue
            for r in json.loads(path.read_text())["rows"]:
                if r["mode"] in POSITIONING_MODES:
                    rows.append({"run_id": s.run_id, "fold": f, "case": r["case"], "class_key": r["class_key"],
                                 "mode": r["mode"], "dice": r["dice"]})
    return rows


def summarise_positioning(rows: List[dict], names: Dict[str, str]) -> List[dict]:
    """Per run and mode: mean over cases of the per-case mean Dice over organs, per organ, and the positioning
    efficiency (auto - visual) / (ground_truth - visual) of the means."""
    out = []
    for run_id in dict.fromkeys(r["run_id"] for r in rows):
        mine = [r for r in rows if r["run_id"] == run_id]
        entry = {"run_id": run_id, "folds": sorted({r["fold"] for r in mine}),
                 "cases": len({(r["fold"], r["case"]) for r in mine}), "mean": {}, "per_class": {}}
        for m in POSITIONING_MODES:
            per_case: Dict[Tuple[int, str], List[float]] = {}
            for r in mine:
                if r["mode"] == m and r["dice"] is not None:
                    per_case.setdefault((r["fold"], r["case"]), []).append(r["dice"])
            entry["mean"][m] = json_float(np.mean([np.mean(v) for v in per_case.values()])) if per_case else None
            per_class = {}
            for key, name in names.items():
                dices = [r["dice"] for r in mine if r["mode"] == m and r["class_key"] == key and r["dice"] is not None]
                if dices:
                    per_class[name] = json_float(np.mean(dices))
            entry["per_class"][m] = per_class
        mean = entry["mean"]
        gap = None if None in (mean.get("ground_truth"), mean.get("visual")) else mean["ground_truth"] - mean["visual"]
        entry["efficiency"] = (json_float((mean["auto"] - mean["visual"]) / gap)
                               if gap and mean.get("auto") is not None else None)
        out.append(entry)
    return out
