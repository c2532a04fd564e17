"""How much positioning matters (paper Table 4): Dice on a fold's validation cases with the prior placed by

* ``visual``: no prior (the network's prior-free logits alone),
* ``naive``: the centre of the first prediction's organ (largest component), no KL search (radius 0, no
  re-positioning, no consistency check),
* ``components_unchecked``: each organ's KL search starts from its largest predicted component, no
  anatomical consistency check, then re-positioning,
* ``components``: the same with the consistency check,
* ``auto``: STIPPLE's positioning with the model's settings (by default: the joint search over one
  displacement of all organs, per-organ KL search, consistency check, re-positioning), or with
  ``positioning_overrides`` applied to them (the other variants change the same base),
* ``ground_truth``: the organ centres of the validation label.

One network pass per case; all variants share its logits. Dice in the network's voxel space with
nnU-Net's own ``compute_tp_fp_fn_tn``. Other sets of variants (name -> settings changed) can be given, e.g. the
ablation of ``scripts/positioning_ablation.py``; with a ``logits_cache`` folder the network's logits of each case
are kept there (``<case>.npy``, float32) and later calls on the same model, fold, checkpoint and mirroring
only position and score.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch
from tqdm import tqdm

MODES = ("visual", "naive", "components_unchecked", "components", "auto", "ground_truth")
# the positioning settings each variant changes in the model's (PositioningSettings field -> value)
VARIANT_OVERRIDES = {
    "naive": {"search_radius_mm": 0.0, "repositioning_steps": 0, "anatomy_tolerance_mm": 0.0,
              "coarse_placement": "components"},
    "components_unchecked": {"anatomy_tolerance_mm": 0.0, "coarse_placement": "components"},
    "components": {"coarse_placement": "components"},
    "auto": {},
}


def _dice(pred: np.ndarray, gt: np.ndarray, c: int) -> float:
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn
    tp, fp, fn, _ = compute_tp_fp_fn_tn(gt == c, pred == c, None)
    return float("nan") if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def evaluate_positioning(model_folder: str, fold: int, checkpoint: str = "checkpoint_final.pth",
                         device: str = "cpu", max_cases: int = None, mirroring: bool = False,
                         positioning_overrides: Optional[Mapping[str, Any]] = None,
                         variants: Optional[Mapping[str, Mapping[str, Any]]] = None,
                         logits_cache: Optional[Path] = None) -> dict:
    """Dice per mode on the fold's validation cases: ``visual``, one mode per entry of ``variants`` (name ->
    positioning settings it changes; default :data:`VARIANT_OVERRIDES`), ``ground_truth``.
    ``positioning_overrides`` change the model's positioning settings, the base every variant changes. The
    result records the modes (``modes``), the settings every variant ran with (``settings``) and what each
    placement did (``placements``: case -> variant -> :func:`placement_summary`).
    ``logits_cache``: a folder keeping each case's network logits (module docstring)."""
    from nnunet_stipple.inference.api import stipple_trainers_findable
    from nnunet_stipple.inference.predictor import STIPPLEPredictor
    from nnunet_stipple.positioning.layout import typical_misfit_mm
    from nnunet_stipple.positioning.place import centres_from_label
    from nnunet_stipple.nnunet_folders import open_preprocessed, training_cases_of_fold, dataset_class_for
    import json
    plans = json.loads((Path(model_folder) / "plans.json").read_text())
    predictor = STIPPLEPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                 device=torch.device(device), perform_everything_on_device=device == "cuda",
                                 allow_tqdm=False, positioning_overrides=positioning_overrides)
    with stipple_trainers_findable():     # nnU-Net looks the trainer class up through nnUNet_extTrainer
        predictor.initialize_from_trained_model_folder(model_folder, [fold], checkpoint)
    params = predictor.list_of_parameters[0]
    model = predictor.fold_prior(params)
    prior = model.prior
    configuration = Path(model_folder).name.split("__")[-1]
    ds = open_preprocessed(plans["dataset_name"], configuration, plans["plans_name"])
    _, val = training_cases_of_fold(ds, fold)
    val = val[:max_cases] if max_cases else val
    loader = dataset_class_for(ds)(str(ds.data_folder), list(val))
    classes = prior.classes
    if typical_misfit_mm(prior) is None:
        # a checkpoint written before priors stored it: the layout check needs the training cases' layouts, which
        # the preprocessed labels of the prior's training cases give (the model itself is not changed)
        training = dataset_class_for(ds)(str(ds.data_folder), list(prior.training_cases))
        centres = {case: centres_from_label(np.asarray(training.load_case(case)[1][0]), prior.built_classes)
                   for case in prior.training_cases}
        prior = replace(prior, case_centres=centres)
        model = replace(model, prior=prior)
    variants = VARIANT_OVERRIDES if variants is None else variants
    modes = ("visual", *variants, "ground_truth")
    models = {mode: replace(model, positioning=model.positioning.with_overrides(
        overrides, f"the positioning variant '{mode}'")) for mode, overrides in variants.items()}
    cache = None if logits_cache is None else LogitsCache(Path(logits_cache), {
        "model_folder": str(Path(model_folder).resolve()), "fold": fold, "checkpoint": checkpoint,
        "mirroring": mirroring})
    per_case: Dict[str, Dict[str, Dict[int, float]]] = {}
    placements: Dict[str, Dict[str, dict]] = {}
    for case in tqdm(val, desc="positioning study", unit="case"):
        data, seg, _, _ = loader.load_case(case)
        gt = np.asarray(seg[0])
        visual = cache.load(case) if cache is not None else None
        if visual is None:
            visual, _, _ = predictor.predict_fold(torch.from_numpy(np.asarray(data)), params, case)
            if cache is not None:
                cache.save(case, visual)
        outs = {"visual": visual}
        placements[case] = {}
        for mode, variant in models.items():
            offsets, report = predictor.prior_offsets(variant, visual, case)
            outs[mode] = visual + offsets
            placements[case][mode] = placement_summary(report)
        predictor.ground_truth_centres = {case: centres_from_label(gt, classes)}
        outs["ground_truth"] = visual + predictor.prior_offsets(model, visual, case)[0]
        predictor.ground_truth_centres = None
        per_case[case] = {m: {c: _dice(outs[m].argmax(0).cpu().numpy(), gt, c) for c in classes} for m in modes}
    mean = {m: {c: float(np.nanmean([per_case[k][m][c] for k in per_case])) for c in classes} for m in modes}
    return {"model_folder": str(model_folder), "fold": fold, "cases": list(val), "labels": prior.labels,
            "modes": list(modes), "settings": {mode: variant.positioning.to_json() for mode, variant in models.items()},
            "per_case": per_case, "placements": placements, "mean_per_class": mean,
            "mean": {m: float(np.nanmean(list(mean[m].values()))) for m in modes}}


def placement_summary(report: dict) -> dict:
    """What a variant's placement did in one case: its method (``kl_search``, ``uniform_fallback``,
    ``layout_fallback``), the layout check's status and reasons, and the organs the consistency check rejected."""
    layout = report.get("layout") or {}
    return {"method": report.get("method"), "layout": layout.get("status"), "layout_reasons": layout.get("reasons", []),
            "layout_misfit_mm": layout.get("misfit_mm"), "layout_typical_mm": layout.get("typical_mm"),
            "rejected": [int(c) for c, v in report.get("classes", {}).items() if v.get("rejected_centre") is not None]}


class LogitsCache:
    """A folder of first predictions (``<case>.npy``, the network's float32 logits) of one model, fold,
    checkpoint and mirroring, described by its ``cache.json``; a folder made for another is refused."""
    DESCRIPTION = "cache.json"

    def __init__(self, folder: Path, key: Dict[str, Any]):
        import json
        from nnunet_stipple.atomic import write_json_atomic
        from nnunet_stipple.errors import StippleInputError
        self.folder = folder
        described = folder / self.DESCRIPTION
        if described.is_file():
            have = json.loads(described.read_text())
            if have != key:
                raise StippleInputError(f"{described}: this logits cache holds the first predictions of {have}, not "
                                        f"of {key}; give another cache folder or delete this one.")
        else:
            write_json_atomic(described, key)

    def load(self, case: str) -> Optional[torch.Tensor]:
        path = self.folder / f"{case}.npy"
        return torch.from_numpy(np.load(path)) if path.is_file() else None

    def save(self, case: str, logits: torch.Tensor) -> None:
        from nnunet_stipple.atomic import atomic_path
        with atomic_path(self.folder / f"{case}.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, logits.detach().to("cpu", torch.float32).numpy())


def format_positioning_table(result: dict) -> str:
    labels = result["labels"]
    modes = result.get("modes", MODES)
    w = max(len(m) for m in modes) + 2
    head = f"{'class':28s}" + "".join(f"{m:>{w}s}" for m in modes)
    rows = [head]
    for c, name in sorted(labels.items()):
        c = int(c)
        rows.append(f"{name:28s}" + "".join(f"{result['mean_per_class'][m][c]:{w}.3f}" for m in modes))
    rows.append(f"{'mean':28s}" + "".join(f"{result['mean'][m]:{w}.3f}" for m in modes))
    return "\n".join(rows)
