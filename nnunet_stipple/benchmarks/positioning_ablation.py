"""Positioning ablation (issue 14): one table of placement variants run on trained STIPPLE models' first
predictions, scored against their validation labels.

Each variant changes some positioning settings of the model (:class:`~nnunet_stipple.positioning.settings.
PositioningSettings`); all share one network pass per case (kept in a logits cache, so adding a variant costs
only its positioning). Every model's result is :func:`nnunet_stipple.benchmarks.positioning_eval.
evaluate_positioning`'s; this module adds the variant table, the efficiency of each variant,

    efficiency = (Dice(variant) - Dice(visual)) / (Dice(ground-truth centres) - Dice(visual)),

(the share of what true organ centres would add over the prior-free prediction that the variant gets), over
the mean Dice of the organs and per organ, and the records: ``ablation.json`` (every model's result),
``ablation.md`` (the table) and ``positioning.csv`` (columns run_id, fold, case, class_key, mode, dice; modes
visual, naive, auto, ground_truth, ``auto`` being the variant chosen as the method; an empty dice cell where
Dice is undefined, an organ absent from both label and prediction).
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from nnunet_stipple.atomic import atomic_path, write_json_atomic
from nnunet_stipple.benchmarks.positioning_eval import VARIANT_OVERRIDES

# name -> the positioning settings the variant changes in the model's (radius in mm per axis; tolerance in mm).
# The first rows are the placements of the paper and of the project so far; the rest vary one setting of the
# hybrid start.
ABLATION_VARIANTS: Dict[str, Dict[str, Any]] = {
    "naive": VARIANT_OVERRIDES["naive"],
    "components": {"coarse_placement": "components"},
    "joint": {"coarse_placement": "joint"},
    "hybrid": {"coarse_placement": "hybrid"},
    "hybrid, start only": {"coarse_placement": "hybrid", "search_radius_mm": 0.0, "repositioning_steps": 0},
    "hybrid, radius 10 mm": {"coarse_placement": "hybrid", "search_radius_mm": 10.0},
    "hybrid, no re-positioning": {"coarse_placement": "hybrid", "repositioning_steps": 0},
    "hybrid, tolerance 30 mm": {"coarse_placement": "hybrid", "anatomy_tolerance_mm": 30.0},
    "hybrid, tolerance 90 mm": {"coarse_placement": "hybrid", "anatomy_tolerance_mm": 90.0},
}
CSV_MODES = ("visual", "naive", "auto", "ground_truth")


def efficiency(variant: Optional[float], visual: Optional[float], truth: Optional[float]) -> Optional[float]:
    """(variant - visual) / (truth - visual); None where undefined (no gap, or a value missing)."""
    if None in (variant, visual, truth) or any(math.isnan(v) for v in (variant, visual, truth)):
        return None
    gap = truth - visual
    return None if abs(gap) < 1e-12 else (variant - visual) / gap


def summarise(result: dict) -> Dict[str, dict]:
    """Per mode of one model's result: mean Dice over organs and its efficiency, and per organ the same."""
    mean, per_class = result["mean"], result["mean_per_class"]
    out = {}
    for m in result["modes"]:
        out[m] = {"mean": mean[m], "efficiency": efficiency(mean[m], mean["visual"], mean["ground_truth"]),
                  "per_class": {str(c): {"dice": d, "efficiency": efficiency(d, per_class["visual"][c],
                                                                          per_class["ground_truth"][c])}
                                for c, d in per_class[m].items()}}
    return out


def layout_flags(result: dict, mode: str) -> Optional[str]:
    """``flagged/cases`` of a variant's placements by the layout check (None for modes without placements)."""
    placed = [by_mode[mode] for by_mode in result.get("placements", {}).values() if mode in by_mode]
    if not placed:
        return None
    return f"{sum(p.get('layout') == 'flagged' for p in placed)}/{len(placed)}"


def ablation_markdown(results: Mapping[str, dict]) -> str:
    """One row per mode; per model (``results``: model name -> result) the mean Dice, the efficiency and the
    cases the layout check flagged."""
    names = list(results)
    modes = list(next(iter(results.values()))["modes"])
    summaries = {n: summarise(r) for n, r in results.items()}

    def cell(v, fmt=""):
        return "" if v is None else format(v, fmt)

    head = "| variant | " + " | ".join(f"{n}: mean Dice | {n}: efficiency | {n}: layout flagged" for n in names) + " |"
    lines = [head, "|---|" + "---|---|---|" * len(names)]
    for m in modes:
        lines.append(f"| {m} | " + " | ".join(
            f"{cell(summaries[n][m]['mean'], '.3f')} | {cell(summaries[n][m]['efficiency'], '.2f')} | "
            f"{cell(layout_flags(results[n], m))}" for n in names) + " |")
    return "\n".join(lines)


def positioning_rows(run_id: str, fold: int, result: dict, method_variant: str) -> List[dict]:
    """positioning.csv rows of one model's result, ``method_variant`` reported as mode ``auto``."""
    source = {"visual": "visual", "naive": "naive", "auto": method_variant, "ground_truth": "ground_truth"}
    rows = []
    for case, by_mode in result["per_case"].items():
        for mode in CSV_MODES:
            for c, d in by_mode[source[mode]].items():
                rows.append({"run_id": run_id, "fold": fold, "case": case, "class_key": str(c), "mode": mode,
                             "dice": "" if d is None or math.isnan(d) else repr(float(d))})
    return rows


def write_records(out_dir: Path, results: Mapping[str, dict], folds: Mapping[str, int], method_variant: str) -> None:
    """``ablation.json``, ``ablation.md`` and ``positioning.csv`` in ``out_dir`` (module docstring), atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "ablation.json", _without_nan({
        "variants": {m: ABLATION_VARIANTS.get(m) for m in next(iter(results.values()))["modes"]},
        "method_variant": method_variant,
        "models": {n: {**r, "summary": summarise(r)} for n, r in results.items()}}))
    with atomic_path(out_dir / "ablation.md") as tmp:
        tmp.write_text(ablation_markdown(results) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["run_id", "fold", "case", "class_key", "mode", "dice"],
                            lineterminator="\n")
    writer.writeheader()
    for name, r in results.items():
        writer.writerows(positioning_rows(name, folds[name], r, method_variant))
    with atomic_path(out_dir / "positioning.csv") as tmp:
        tmp.write_text(buffer.getvalue())


def _without_nan(obj):
    """JSON has no NaN: an undefined Dice is null."""
    if isinstance(obj, dict):
        return {str(k): _without_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_without_nan(v) for v in obj]
    return None if isinstance(obj, float) and math.isnan(obj) else obj


def run_ablation(models: Mapping[str, str], fold: int, cache_root: Path, variants: Sequence[str] = tuple(ABLATION_VARIANTS),
                 device: str = "cpu", mirroring: bool = True, max_cases: Optional[int] = None) -> Dict[str, dict]:
    """Every variant of ``variants`` on each model (name -> model folder), fold ``fold``; each model's logits
    cached under ``cache_root/<name>/fold<fold>``. ``naive`` always runs: positioning.csv reports it."""
    from nnunet_stipple.benchmarks.positioning_eval import evaluate_positioning
    chosen = {v: ABLATION_VARIANTS[v] for v in ("naive", *variants)}
    return {name: evaluate_positioning(folder, fold, device=device, mirroring=mirroring, variants=chosen,
                                       logits_cache=cache_root / name / f"fold{fold}", max_cases=max_cases)
            for name, folder in models.items()}
