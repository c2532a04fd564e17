"""The nnU-Net plans a profile trains with, made when missing: the dataset's own (``paper``, ``gpu-2d``), coarse
plans of their own target spacing (``cpu-small``) or nnU-Net's plans with a reduced network (``cpu-2d``, see
:mod:`nnunet_stipple.benchmarks.reduced_plans`); and how the used plans differ from the dataset's own."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, List, Sequence

import numpy as np

from nnunet_stipple.benchmarks.reduced_plans import NetworkReduction, ensure_reduced_plans
from nnunet_stipple.benchmarks.study.dataset import dataset_id, raw_dataset_folder
from nnunet_stipple.benchmarks.study.nnunet_commands import console_script, run_logged
from nnunet_stipple.benchmarks.study.profiles import CPU_2D_PLANS, CPU_SMALL_PLANS
from nnunet_stipple.errors import StippleInputError


def coarse_target_spacing(fullres_spacing: Sequence[float], inplane_factor: float = 2.0,
                          min_inplane_mm: float = 12.0, min_axial_mm: float = 8.0) -> List[float]:
    """Coarse target spacing (array axis order, as ``-overwrite_target_spacing``): ``inplane_factor`` x the
    in-plane spacing but at least ``min_inplane_mm``, and the dataset's spacing but at least ``min_axial_mm``
    along the out-of-plane axis (the axis of the largest spacing; the first on ties, z for nnU-Net's
    SimpleITK reader).

    Why so coarse: nnU-Net needs a few hundred iterations before plain training segments anything (75
    iterations at 8 x 6 mm left every BTCV organ at Dice 0), and on a 2-core CPU an iteration costs about
    1 s per 4e4 voxels of a batch-2 patch (BTCV 3d_fullres 80x160x128: 54 s; 48x80x48 at 8 x 6 mm: 5 s;
    32x56x32 at 12 x 8 mm: about 1.5 s). The floors make the abdomen fit one small patch whatever the
    dataset's resolution. Thin structures (adrenal glands, esophagus, portal vein) are a voxel or two wide
    at this spacing, so their Dice says little. z stays at 8 mm: the prior needs B slices of the
    shallowest organ box, and at 8 mm BTCV's right adrenal gland keeps only 3 slices in the two cases of
    alpha = 10 % (hence the profile's B = 3)."""
    s = [float(v) for v in fullres_spacing]
    z = int(np.argmax(s))
    return [round(max(min_axial_mm, v) if i == z else max(min_inplane_mm, inplane_factor * v), 4)
            for i, v in enumerate(s)]


def dataset_fullres_spacing(dataset_name: str) -> List[float]:
    """The dataset's 3d_fullres target spacing in array axis order (nnUNetPlans.json if planned, else what
    nnU-Net's planner would choose from the fingerprint)."""
    from nnunet_stipple.nnunet_folders import nnunet_preprocessed_root
    base = nnunet_preprocessed_root() / dataset_name
    plans_file = base / "nnUNetPlans.json"
    if plans_file.is_file():
        plans = json.loads(plans_file.read_text())
        if "3d_fullres" in plans["configurations"] and "spacing" in plans["configurations"]["3d_fullres"]:
            sp = plans["configurations"]["3d_fullres"]["spacing"]
            back = plans["transpose_backward"]
            return [float(sp[back[i]]) for i in range(3)]
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    return [float(v) for v in ExperimentPlanner(dataset_name).determine_fullres_target_spacing()]


def ensure_cpu_small_plans(dataset_name: str, configuration: str, plans: str, study_dir: Path,
                           log: Callable[[str], None] = print) -> dict:
    """Plan (``nnUNetv2_plan_experiment -overwrite_target_spacing ... -overwrite_plans_name``) and preprocess
    (``nnUNetv2_preprocess -plans_name ... -c CONFIG -np 2``) the coarse plans unless already done.
    Returns what was used (spacings, commands)."""
    from nnunet_stipple.nnunet_folders import nnunet_preprocessed_root, open_preprocessed
    base = nnunet_preprocessed_root() / dataset_name
    plans_file = base / f"{plans}.json"
    info: dict = {"plans": plans, "commands": []}
    did = dataset_id(dataset_name)
    log_file = Path(study_dir) / "planning.log"
    if not plans_file.is_file():
        if plans == "nnUNetPlans":
            raise StippleInputError(f"{plans_file} does not exist, and the cpu-small profile does not write its "
                                    f"coarse plans under nnU-Net's default name: leave -p out (it uses "
                                    f"{CPU_SMALL_PLANS}) or run nnUNetv2_plan_and_preprocess -d {did} first.")
        if not (base / "dataset_fingerprint.json").is_file():
            raw = raw_dataset_folder(dataset_name)
            if raw is None or not raw.is_dir():
                raise StippleInputError(f"{dataset_name} has no fingerprint in {base} and no raw data under "
                                        f"nnUNet_raw; the cpu-small profile plans its own coarse spacing from the "
                                        f"raw dataset. Set nnUNet_raw or run nnUNetv2_extract_fingerprint -d {did}.")
            cmd = [console_script("nnUNetv2_extract_fingerprint"), "-d", str(did), "-np", "2"]
            run_logged(cmd, log_file, log)
            info["commands"].append(cmd)
        fullres = dataset_fullres_spacing(dataset_name)
        coarse = coarse_target_spacing(fullres)
        cmd = [console_script("nnUNetv2_plan_experiment"), "-d", str(did), "-overwrite_target_spacing",
               *[f"{v:g}" for v in coarse], "-overwrite_plans_name", plans]
        run_logged(cmd, log_file, log)
        info["commands"].append(cmd)
    try:
        open_preprocessed(dataset_name, configuration, plans)
    except StippleInputError:
        p = json.loads(plans_file.read_text())
        if configuration not in p["configurations"]:
            raise StippleInputError(f"Configuration '{configuration}' is not in {plans_file} (available: "
                                    f"{', '.join(p['configurations'])}); use one of these with --profile cpu-small.")
        cmd = [console_script("nnUNetv2_preprocess"), "-d", str(did), "-plans_name", plans, "-c", configuration,
               "-np", "2"]
        run_logged(cmd, log_file, log)
        info["commands"].append(cmd)
    ds = open_preprocessed(dataset_name, configuration, plans)
    p = ds.plans
    back = p["transpose_backward"]
    sp = ds.configuration_manager.spacing
    info["target_spacing"] = [float(sp[back[i]]) for i in range(len(sp))] if len(sp) == 3 else list(map(float, sp))
    try:
        info["dataset_fullres_spacing"] = dataset_fullres_spacing(dataset_name)
    except Exception:  # noqa: BLE001 - informative only
        info["dataset_fullres_spacing"] = None
    return info


def ensure_profile_plans(dataset_name: str, configuration: str, plans: str, reduction: NetworkReduction,
                         study_dir: Path, log: Callable[[str], None] = print) -> dict:
    """The reduced plans of a profile (:mod:`nnunet_stipple.benchmarks.reduced_plans`), after nnU-Net's own
    planning and preprocessing of ``configuration`` (``nnUNetv2_plan_and_preprocess -c CONFIG``) if missing."""
    from nnunet_stipple.nnunet_folders import nnunet_preprocessed_root
    if plans == "nnUNetPlans":
        raise StippleInputError(f"The profile derives its own plans from nnUNetPlans and does not overwrite them: "
                                f"leave -p out (it uses {CPU_2D_PLANS}) or give another plans name.")
    did = dataset_id(dataset_name)
    commands = []

    def plan_and_preprocess() -> None:
        cmd = [console_script("nnUNetv2_plan_and_preprocess"), "-d", str(did), "-c", configuration, "-np", "2"]
        run_logged(cmd, Path(study_dir) / "planning.log", log)
        commands.append(cmd)

    info = ensure_reduced_plans(dataset_name, configuration, plans, reduction, nnunet_preprocessed_root(),
                                plan_and_preprocess, log)
    info["commands"] = commands
    return info


def plans_summary(dataset_name: str, configuration: str, plans: str) -> dict:
    """Patch size / batch size / spacing of the used plans next to the dataset's own (nnUNetPlans)."""
    from nnunet_stipple.nnunet_folders import nnunet_preprocessed_root
    base = nnunet_preprocessed_root() / dataset_name
    out = {}
    for key, ident in (("used", plans), ("paper", "nnUNetPlans")):
        f = base / f"{ident}.json"
        if not f.is_file():
            continue
        c = json.loads(f.read_text())["configurations"].get(configuration)
        if c:
            out[key] = {"patch_size": c.get("patch_size"), "batch_size": c.get("batch_size"),
                        "spacing": c.get("spacing"),
                        "median_image_size_in_voxels": c.get("median_image_size_in_voxels")}
    if "used" in out and "paper" in out and out["used"] != out["paper"]:
        return {"network_input": out}
    return {}
