"""Smaller plans derived from nnU-Net's own, for studies on a CPU (the ``cpu-2d`` profile of the study harness).

nnU-Net plans Dataset102_BTCVLowres ``2d`` with batch 179 and a 6-stage U-Net of 32-512 features: right for a
GPU, about 50 s per iteration on 2 CPU cores. :func:`derive_reduced_plans` writes a copy of ``nnUNetPlans.json``
under another plans name (``nnUNetPlans_cpu2d``) that keeps everything nnU-Net decided (spacing, patch size,
normalisation, kernels, strides, preprocessing) except what a :class:`NetworkReduction` lists: the batch size,
the number of stages (the deepest ones are dropped) and the features per stage (``base * 2**stage``, capped).
The configuration keeps nnU-Net's ``data_identifier``, so it trains on the data that ``nnUNetv2_preprocess``
already wrote for the original plans. What changed is returned (and recorded in the study's study.json).
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from nnunet_stipple.atomic import write_json_atomic
from nnunet_stipple.errors import StippleInputError

SOURCE_PLANS = "nnUNetPlans"


@dataclass(frozen=True)
class NetworkReduction:
    """What a reduced plans file changes in one configuration of nnU-Net's plans."""
    batch_size: int
    n_stages: int            # at most this many stages (the deepest ones are dropped)
    base_features: int       # features of stage i: base_features * 2**i, at most max_features
    max_features: int

    def features_per_stage(self, n_stages: int) -> list:
        return [min(self.base_features * 2 ** i, self.max_features) for i in range(n_stages)]


def reduce_configuration(config: dict, reduction: NetworkReduction, where: str) -> dict:
    """A copy of one plans configuration with the reduction applied (PlainConvUNet / ResEnc arch_kwargs)."""
    out = copy.deepcopy(config)
    arch = out.get("architecture", {}).get("arch_kwargs")
    if arch is None or "n_stages" not in arch:
        raise StippleInputError(f"{where}: no architecture.arch_kwargs with n_stages (plans of nnU-Net >= 2.5 "
                                f"expected); re-plan with nnUNetv2_plan_experiment.")
    if reduction.n_stages < 2:
        raise StippleInputError(f"{where}: a U-Net needs at least 2 stages, got n_stages={reduction.n_stages}.")
    n = min(reduction.n_stages, arch["n_stages"])   # at most n_stages: a smaller network stays as planned
    if reduction.batch_size < 1 or reduction.base_features < 1 or reduction.max_features < reduction.base_features:
        raise StippleInputError(f"{where}: invalid reduction {asdict(reduction)}.")
    for key in ("kernel_sizes", "strides", "n_conv_per_stage", "n_blocks_per_stage"):
        if key in arch:
            arch[key] = arch[key][:n]
    if "n_conv_per_stage_decoder" in arch:
        arch["n_conv_per_stage_decoder"] = arch["n_conv_per_stage_decoder"][:n - 1]
    arch["n_stages"] = n
    arch["features_per_stage"] = reduction.features_per_stage(n)
    stride_product = np.prod(np.asarray(arch["strides"], dtype=int), axis=0)
    patch = np.asarray(out["patch_size"], dtype=int)
    if np.any(patch % stride_product):
        raise StippleInputError(f"{where}: patch size {patch.tolist()} is not divisible by the strides' product "
                                f"{stride_product.tolist()} of the first {n} stages.")
    out["batch_size"] = reduction.batch_size
    return out


def derive_reduced_plans(plans: dict, configuration: str, reduction: NetworkReduction, plans_name: str) -> dict:
    """nnU-Net's plans with only ``configuration`` kept, reduced, under ``plans_name``."""
    where = f"{plans.get('plans_name', SOURCE_PLANS)}.json"
    if configuration not in plans.get("configurations", {}):
        raise StippleInputError(f"Configuration '{configuration}' is not in {where} (available: "
                                f"{', '.join(plans.get('configurations', {}))}).")
    config = plans["configurations"][configuration]
    if "inherits_from" in config:
        raise StippleInputError(f"{where}: configuration '{configuration}' inherits from another one; reduced "
                                f"plans are derived from a stand-alone configuration (2d or 3d_fullres).")
    out = copy.deepcopy(plans)
    out["plans_name"] = plans_name
    out["configurations"] = {configuration: reduce_configuration(config, reduction, f"{where} ({configuration})")}
    return out


def describe_changes(original: dict, reduced: dict, configuration: str) -> dict:
    """``{setting: {"nnunet": value, "used": value}}`` for every setting the reduction changed."""
    a, b = original["configurations"][configuration], reduced["configurations"][configuration]
    out = {}
    if a["batch_size"] != b["batch_size"]:
        out["batch_size"] = {"nnunet": a["batch_size"], "used": b["batch_size"]}
    ka, kb = a["architecture"]["arch_kwargs"], b["architecture"]["arch_kwargs"]
    for key in sorted(set(ka) | set(kb)):
        if ka.get(key) != kb.get(key):
            out[key] = {"nnunet": ka.get(key), "used": kb.get(key)}
    out["data_identifier"] = {"nnunet": a.get("data_identifier"), "used": b.get("data_identifier"),
                              "note": "same preprocessed data"}
    return out


def ensure_reduced_plans(dataset_name: str, configuration: str, plans_name: str, reduction: NetworkReduction,
                         preprocessed_root: Path, plan_and_preprocess: Callable[[], None],
                         log: Callable[[str], None] = print) -> dict:
    """Write ``<plans_name>.json`` next to nnU-Net's plans unless it exists with the same content; run
    ``plan_and_preprocess`` first when nnU-Net's own plans or preprocessed data are missing. Returns
    ``{"plans": ..., "source_plans": ..., "reduction": ..., "changed": ...}`` for study.json."""
    base = Path(preprocessed_root) / dataset_name
    source_file = base / f"{SOURCE_PLANS}.json"
    if not source_file.is_file() or not _preprocessed(base, source_file, configuration):
        log(f"{source_file} or its preprocessed '{configuration}' data missing: running nnU-Net's planning")
        plan_and_preprocess()
    if not source_file.is_file():
        raise StippleInputError(f"{source_file} is still missing after planning; run nnUNetv2_plan_and_preprocess "
                                f"-d {dataset_name} -c {configuration} and retry.")
    source = json.loads(source_file.read_text())
    reduced = derive_reduced_plans(source, configuration, reduction, plans_name)
    target = base / f"{plans_name}.json"
    if target.is_file():
        existing = json.loads(target.read_text())
        if existing != reduced:
            raise StippleInputError(f"{target} exists with other content than the reduction "
                                    f"{asdict(reduction)} of {source_file} gives; it was made by someone else or "
                                    f"from other plans. Move it away, or give another plans name with -p.")
    else:
        write_json_atomic(target, reduced)
        log(f"written {target} (reduced from {source_file.name}: {asdict(reduction)})")
    return {"plans": plans_name, "source_plans": SOURCE_PLANS, "reduction": asdict(reduction),
            "changed": describe_changes(source, reduced, configuration)}


def _preprocessed(base: Path, source_file: Path, configuration: str) -> Optional[bool]:
    plans = json.loads(source_file.read_text())
    config = plans.get("configurations", {}).get(configuration)
    if config is None:
        return False
    folder = base / config.get("data_identifier", "")
    return folder.is_dir() and any(folder.iterdir())
