"""Plans for the backbones, derived from nnU-Net's own plans of a preprocessed dataset.

:func:`write_backbone_plans` reads ``nnUNet_preprocessed/<Dataset>/<source plans>.json`` (nnU-Net's
``PlainConvUNet`` plans), and writes ``<source plans>_<backbone>.json`` next to it (atomically; the source file is
only read) in which the requested configurations name our network class and carry its ``arch_kwargs``:
nnU-Net's ``PlainConvUNet`` arguments unchanged plus the backbone's extras. Everything else nnU-Net decided
(spacing, patch and batch size, normalisation, ``data_identifier``...) is kept, so ``nnUNetv2_train -p <new plans>``
trains on the data nnU-Net already preprocessed. A configuration that inherits from another (nnU-Net's
``inherits_from``) is written resolved, as ``PlansManager`` resolves it, so the new file stands alone.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from nnunet_stipple.atomic import write_json_atomic
from nnunet_stipple.errors import StippleInputError

SOURCE_PLANS = "nnUNetPlans"
PLAIN_UNET_CLASS = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
# the attention matrix of one cross-attention has (tokens)^2 entries per head and sample: 4096 tokens is 64 MiB in
# fp32 when stored (CPU, forward_with_attention); on a GPU torch's fused kernels do not store it
DEFAULT_MAX_ATTENTION_TOKENS = 4096


@dataclass(frozen=True)
class Backbone:
    network_class_name: str
    description: str


BACKBONES: Dict[str, Backbone] = {
    "attention_unet": Backbone("nnunet_stipple.networks.attention_unet.AttentionUNet",
                               "Attention U-Net (Oktay et al. 2018): additive attention gates on every skip"),
    "u_transformer": Backbone("nnunet_stipple.networks.u_transformer.UTransformer",
                              "U-Transformer (Petit's thesis, ch. 5): self-attention at the bottleneck, "
                              "cross-attention on the coarser skips"),
}


def default_plans_name(source_plans: str, backbone: str) -> str:
    return f"{source_plans}_{backbone}"


def cross_attention_levels(patch_size: Sequence[int], strides: Sequence[Sequence[int]], max_tokens: int) -> List[int]:
    """The skip levels whose cross-attention fits the budget: the skip of level ``l`` attends over the voxels of
    level ``l + 1`` (the coarser decoder features), ``patch_size / prod(strides[:l + 2])`` of them."""
    if max_tokens < 1:
        raise StippleInputError(f"--max-attention-tokens must be >= 1, got {max_tokens}")
    size = np.asarray(patch_size, dtype=np.int64)
    grids = []
    for stride in strides:
        size = size // np.asarray(stride, dtype=np.int64)
        grids.append(int(np.prod(size)))
    # grids[l] is the voxel count of encoder level l; skip level l (0 .. n-2) uses grids[l + 1]
    return [level for level in range(len(strides) - 1) if grids[level + 1] <= max_tokens]


def backbone_arch_kwargs(arch: dict, backbone: str, patch_size: Sequence[int], max_attention_tokens: int) -> dict:
    """``PlainConvUNet``'s arch_kwargs plus the backbone's extras."""
    out = copy.deepcopy(arch)
    if backbone == "attention_unet":
        out["gate_inter_channels_divisor"] = 2
    elif backbone == "u_transformer":
        out["num_heads"] = 8
        out["positional_encoding"] = True
        out["cross_attention_levels"] = cross_attention_levels(patch_size, arch["strides"], max_attention_tokens)
    else:
        raise StippleInputError(f"Unknown backbone '{backbone}' (known: {', '.join(BACKBONES)}).")
    return out


def backbone_configuration(config: dict, backbone: str, where: str,
                           max_attention_tokens: int = DEFAULT_MAX_ATTENTION_TOKENS) -> dict:
    """A copy of one resolved plans configuration whose architecture is ``backbone``."""
    architecture = config.get("architecture")
    if not isinstance(architecture, dict) or "arch_kwargs" not in architecture:
        raise StippleInputError(f"{where}: no architecture.arch_kwargs (plans of nnU-Net >= 2.5 expected); re-plan "
                                f"with nnUNetv2_plan_experiment.")
    if architecture.get("network_class_name") != PLAIN_UNET_CLASS:
        raise StippleInputError(
            f"{where}: the network is {architecture.get('network_class_name')}; backbone plans are derived from "
            f"nnU-Net's default plans, whose network is {PLAIN_UNET_CLASS} (their encoder and decoder arguments are "
            f"the backbones' own). Give such plans with -p (default {SOURCE_PLANS}).")
    if config.get("previous_stage") is not None:
        raise StippleInputError(f"{where}: a cascade stage; backbone plans support 2d, 3d_lowres and 3d_fullres, "
                                f"not the cascade.")
    out = copy.deepcopy(config)
    out.pop("inherits_from", None)
    out["architecture"] = {
        "network_class_name": BACKBONES[backbone].network_class_name,
        "arch_kwargs": backbone_arch_kwargs(architecture["arch_kwargs"], backbone, config["patch_size"],
                                            max_attention_tokens),
        "_kw_requires_import": list(architecture.get("_kw_requires_import", [])),
    }
    return out


def derive_backbone_plans(plans: dict, configurations: Sequence[str], backbone: str, plans_name: str,
                          where: str, max_attention_tokens: int = DEFAULT_MAX_ATTENTION_TOKENS) -> dict:
    """nnU-Net's plans with only ``configurations`` kept, resolved and turned into ``backbone``, named
    ``plans_name``; ``where`` (the source file) names it in errors."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    if backbone not in BACKBONES:
        raise StippleInputError(f"Unknown backbone '{backbone}' (known: {', '.join(BACKBONES)}).")
    available = plans.get("configurations", {})
    missing = [c for c in configurations if c not in available]
    if missing:
        raise StippleInputError(f"Configuration(s) {', '.join(missing)} not in {where} (available: "
                                f"{', '.join(available)}).")
    manager = PlansManager(plans)
    out = copy.deepcopy(plans)
    out["plans_name"] = plans_name
    out["configurations"] = {
        c: backbone_configuration(manager.get_configuration(c).configuration, backbone, f"{where} ({c})",
                                  max_attention_tokens)
        for c in configurations}
    return out


def write_backbone_plans(dataset, configurations: Sequence[str], backbone: str,
                         source_plans: str = SOURCE_PLANS, plans_name: Optional[str] = None,
                         max_attention_tokens: int = DEFAULT_MAX_ATTENTION_TOKENS, overwrite: bool = False,
                         log: Callable[[str], None] = print) -> Path:
    """Write the backbone plans of a preprocessed dataset next to its nnU-Net plans; returns the new file.

    An existing file with the same content is kept as it is; one with other content is an error unless
    ``overwrite``. The source plans file is never written."""
    from nnunet_stipple.nnunet_folders import open_preprocessed
    if backbone not in BACKBONES:
        raise StippleInputError(f"Unknown backbone '{backbone}' (known: {', '.join(BACKBONES)}).")
    if not configurations:
        raise StippleInputError("Give at least one configuration (-c).")
    plans_name = plans_name or default_plans_name(source_plans, backbone)
    if plans_name == source_plans:
        raise StippleInputError(f"The new plans name must differ from the source plans '{source_plans}' (the "
                                f"source is never overwritten); give another --name.")
    # open_preprocessed checks the plans file, the configuration and that nnU-Net's preprocessed data exist
    opened = [open_preprocessed(dataset, c, source_plans) for c in configurations]
    source_file = opened[0].base / f"{source_plans}.json"
    source = json.loads(source_file.read_text())
    derived = derive_backbone_plans(source, configurations, backbone, plans_name, str(source_file),
                                    max_attention_tokens)
    target = opened[0].base / f"{plans_name}.json"
    if target.is_file() and not overwrite:
        try:
            existing = json.loads(target.read_text())
        except json.JSONDecodeError:
            existing = None
        if existing == derived:
            log(f"{target} is up to date (backbone {backbone} from {source_file.name})")
            return target
        raise StippleInputError(f"{target} exists with other content than backbone {backbone} of "
                                f"{source_file.name} gives (other configurations, settings or source). Give another "
                                f"--name, or --overwrite to replace it.")
    write_json_atomic(target, derived)
    summary = "; ".join(f"{c}: {_describe(derived['configurations'][c])}" for c in configurations)
    log(f"written {target}: {BACKBONES[backbone].description} ({summary}); data_identifier kept, so nnU-Net's "
        f"preprocessed data is reused. Train with: nnUNetv2_train {opened[0].name} {configurations[0]} FOLD "
        f"-p {plans_name} [-tr STIPPLETrainer]")
    return target


def _describe(config: dict) -> str:
    arch = config["architecture"]["arch_kwargs"]
    text = f"data {config['data_identifier']}, patch {config['patch_size']}"
    if "cross_attention_levels" in arch:
        text += f", cross-attention on skip levels {arch['cross_attention_levels']} of 0-{arch['n_stages'] - 2}"
    return text
