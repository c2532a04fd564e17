"""A fake study for the tests of the study harness (nnunet_stipple.benchmarks.study), without nnU-Net training: a
fake dataset (plans, splits, ground truth; the ``fake_dataset`` fixture of conftest.py) and a fake trainer
"runner" that writes what nnUNetv2_train leaves behind (validation predictions and nnU-Net's own summary.json,
made with nnU-Net's compute_metrics / save_summary_json)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_stipple.benchmarks.study import run_study

DS = "Dataset777_FakeStudy"
CASES = ["case_a", "case_b", "case_c", "case_d"]
# the training lists hold 8 more ids that exist only in the split (the fake trainer reads no training case):
# alpha = 10 % must leave a labeled case in each fold, as the harness checks before training
EXTRA_TRAINING = [f"case_train{i}" for i in range(8)]
SPLITS = [{"train": ["case_c", "case_d"] + EXTRA_TRAINING, "val": ["case_a", "case_b"]},
          {"train": ["case_a", "case_b"] + EXTRA_TRAINING, "val": ["case_c", "case_d"]}]
SPACING_XYZ = (1.0, 1.0, 2.0)       # SimpleITK order; arrays are (z, y, x) with spacing (2, 1, 1)
SHAPE = (12, 16, 16)
LABELS = {"background": 0, "liver": 1, "pancreas": 2}


def write_seg(arr: np.ndarray, path: Path) -> None:
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(SPACING_XYZ)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def ground_truth(i: int) -> np.ndarray:
    a = np.zeros(SHAPE, np.uint8)
    a[2:9, 2:10, 2 + i % 2:9] = 1            # liver
    a[4:7, 11:14, 8 + i % 3:13] = 2           # pancreas
    return a


# quality per trainer (0 = perfect); relabel and prior help, fewer labels hurt
BADNESS = {"nnUNetTrainer_LabelProportion": 3, "nnUNetTrainer_PseudoLabel": 2, "STIPPLETrainer": 1,
           "STIPPLETrainer_PseudoLabel": 0, "nnUNetTrainer_MeanTeacher": 2, "nnUNetTrainer_UAMT": 2,
           "nnUNetTrainer_SASSNet": 2, "nnUNetTrainer_AdversarialConfidence": 2, "nnUNetTrainer_FLARE22Rounds": 2,
           "nnUNetTrainer_INERRANT": 1, "STIPPLETrainer_INERRANT": 0}


class FakeTrainer:
    """Stands in for nnUNetv2_train: writes validation predictions + nnU-Net's summary.json."""

    def __init__(self, fail=()):
        self.calls = []
        self.fail = set(fail)

    def __call__(self, cmd, env, log_file):
        from nnunetv2.evaluation.evaluate_predictions import compute_metrics, save_summary_json
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
        dataset, config, fold = cmd[1], cmd[2], int(cmd[3])
        trainer, plans = cmd[cmd.index("-tr") + 1], cmd[cmd.index("-p") + 1]
        assert "--c" in cmd
        mdir = Path(env["nnUNet_results"]) / dataset / f"{trainer}__{plans}__{config}"
        rc = json.loads((mdir / "stipple_run.json").read_text())
        self.calls.append({"cmd": cmd, "env": env, "run_config": rc})
        log_file.write_text("fake training\n")
        if trainer in self.fail:
            log_file.write_text("Traceback (most recent call last):\n  ...\n"
                                "nnunet_stipple.errors.StippleInputError: B=5 is larger than the depth\n")
            return 1
        val = mdir / f"fold_{fold}" / "validation"
        val.mkdir(parents=True, exist_ok=True)
        (mdir / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"not a real checkpoint")
        (mdir / "dataset.json").write_text((Path(env["nnUNet_preprocessed"]) / dataset / "dataset.json").read_text())
        if trainer.endswith("PseudoLabel"):     # the loop's round log (precision / recall of the added voxels)
            log = mdir / f"fold_{fold}" / "pseudo_labeling" / "round_1" / "round_log.json"
            log.parent.mkdir(parents=True)
            q = {"1": {"added": 80, "gt_voxels": 100, "true_positive": 60, "precision": 0.75, "recall": 0.6},
                 "2": {"added": 20, "gt_voxels": 50, "true_positive": 20, "precision": 1.0, "recall": 0.4}}
            log.write_text(json.dumps({"round": 1, "gamma": 0.7, "cases": 2, "voxels_added": 100,
                                       "voxels_added_per_class": {"1": 80, "2": 20}, "quality_per_class": q,
                                       "quality_pooled": {"added": 100, "gt_voxels": 150, "true_positive": 80,
                                                          "precision": 0.8, "recall": 80 / 150}}))
        m = BADNESS[trainer] + (rc.get("num_bins", 5) == 1)
        if rc["label_proportion"] < 0.5 and trainer != "STIPPLETrainer_PseudoLabel":
            m += 1                                       # fewer labels hurt (STIPPLE stays perfect here)
        per_case = []
        gt_dir = Path(env["nnUNet_preprocessed"]) / dataset / "gt_segmentations"
        for c in SPLITS[fold]["val"]:
            i = CASES.index(c)
            gt = ground_truth(i)
            pred = gt.copy()
            pred[pred == 2] = 0
            pz = np.roll((gt == 2), min(3, max(0, m - i % 2)), axis=2)    # pancreas shifted along x
            pred[pz] = 2
            trim = (m + i) % 3 if m else 0
            if trim:
                pred[2:2 + trim][pred[2:2 + trim] == 1] = 0                # liver loses top slices
            write_seg(pred, val / f"{c}.nii.gz")
            per_case.append(compute_metrics(str(gt_dir / f"{c}.nii.gz"), str(val / f"{c}.nii.gz"), SimpleITKIO(),
                                            [1, 2]))
        # the assembly of nnunetv2.evaluation.evaluate_predictions.compute_metrics_on_folder
        from nnunetv2.evaluation.evaluate_predictions import recursive_fix_for_json_export
        metric_list = list(per_case[0]["metrics"][1].keys())
        means = {r: {k: np.nanmean([x["metrics"][r][k] for x in per_case]) for k in metric_list} for r in (1, 2)}
        fg = {k: np.mean([means[r][k] for r in (1, 2)]) for k in metric_list}
        [recursive_fix_for_json_export(x) for x in per_case]
        recursive_fix_for_json_export(means)
        recursive_fix_for_json_export(fg)
        save_summary_json({"metric_per_case": per_case, "mean": means, "foreground_mean": fg},
                          str(val / "summary.json"))
        return 0


def fake_positioning(model_folder, fold, checkpoint="checkpoint_final.pth", device="cpu", max_cases=None,
                     mirroring=False):
    """Stands in for positioning_eval.evaluate_positioning (which needs a real model): Dice per case, mode and
    class, worst for 'visual', best for 'ground_truth'; 'auto' halfway."""
    from nnunet_stipple.benchmarks.positioning_eval import MODES
    assert mirroring, "the study measures positioning with nnU-Net's test-time mirroring"
    base = {"visual": 0.2, "naive": 0.3, "components_unchecked": 0.35, "components": 0.4, "auto": 0.5,
            "ground_truth": 0.8}
    per_case = {c: {m: {1: base[m], 2: (None if (m == "visual" and c == "case_a") else base[m] / 2)} for m in MODES}
                for c in SPLITS[fold]["val"]}
    return {"per_case": per_case, "mean": {m: base[m] * 0.75 for m in MODES}}


def run_fake_study(fake_dataset, runner, **kw):
    """run_study on the fake dataset into ``<tmp>/study``: profile paper, folds 0 and 1, alpha = 100 and 10 %."""
    args = dict(profile="paper", folds=[0, 1], alphas=[100, 10], device="cpu", runner=runner, log=lambda m: None)
    args.update(kw)
    return run_study(DS, "3d_fullres", fake_dataset["tmp"] / "study", **args)
