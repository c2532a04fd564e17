"""End to end through nnU-Net's and our console commands on the preprocessed phantom (CPU).

Train a few iterations of STIPPLETrainer_CPUDemo with ``nnUNetv2_train``, resume it with ``--c``, rerun
the validation with ``--val``, predict with ``nnUNetv2_stipple_predict`` (with positioning reports),
check that plain ``nnUNetv2_predict`` refuses, and predict a raw folder from an exported and re-installed
zip in fresh nnU-Net folders.
"""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import training_env, venv_script

pytestmark = pytest.mark.e2e
TRAINER = "STIPPLETrainer_CPUDemo"


def _env(phantom):
    return training_env(phantom)


def _run(args, env, ok=True):
    proc = subprocess.run([venv_script(args[0]), *map(str, args[1:])], env=env, capture_output=True, text=True)
    if ok and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


# Long enough for the model to find the phantom's organs without the prior, so that positioning runs on the
# validation and unlabeled cases instead of falling back to a uniform prior. On 2026-12-02: 3 iterations found
# none; single runs of 30 and 60 found all 5 organs in both validation cases (mean Dice 0.21 / 0.35), one run of
# 40 found organs only with the prior at the true centres (pseudo Dice 0.30-0.85) and none without it.
FIXTURE_SCHEDULE = {"num_epochs": 2, "num_iterations_per_epoch": 50}


@pytest.fixture(scope="module")
def trained(phantom_preprocessed):
    env = _env(phantom_preprocessed)
    model = phantom_preprocessed["results"] / phantom_preprocessed["dataset_name"] / f"{TRAINER}__nnUNetPlans__3d_fullres"
    model.mkdir(parents=True)
    (model / "stipple_run.json").write_text(json.dumps(FIXTURE_SCHEDULE))
    _run(["nnUNetv2_train", phantom_preprocessed["dataset_id"], "3d_fullres", 0, "-tr", TRAINER, "-device", "cpu"], env)
    return {**phantom_preprocessed, "env": env, "model": model}


def assert_positioned(fold_report: dict) -> None:
    """Positioning ran (no uniform fallback): organs were found and placed by KL search, classes that were not
    follow the found ones, every class has a centre. (``predicted_voxels`` are those of the last search, the
    re-positioning step's, which searches every class from its current centre, predicted there or not.)"""
    assert fold_report["method"] == "kl_search", fold_report
    methods = {c: entry["method"] for c, entry in fold_report["classes"].items()}
    assert "kl" in methods.values() and set(methods.values()) <= {"kl", "relative"}, methods
    assert sum(entry["predicted_voxels"] for entry in fold_report["classes"].values()) > 0
    assert all(centre is not None for centre in fold_report["centres"].values())


def test_training_writes_prior_settings_checkpoint_and_stipple_validation(trained):
    fold = trained["model"] / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    settings = json.loads((fold / "stipple.json").read_text())
    assert settings["num_bins"] == 5 and settings["trainer"] == TRAINER
    from nnunet_stipple.positioning.settings import PositioningSettings
    assert settings["positioning"] == PositioningSettings().to_json()
    # the prior of the fold was built at the start of training, in nnUNet_preprocessed
    prior_file = trained["preprocessed_dataset"] / "stipple_priors" / "nnUNetPlans__3d_fullres" / "B5" / "fold_0.npz"
    assert prior_file.is_file() and prior_file.with_suffix(".json").is_file()
    # the checkpoint carries the prior (self-contained models)
    import torch
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert "stipple_prior.meta_json" in ckpt["network_weights"]
    assert any(k.startswith("stipple_prior.hist_") for k in ckpt["network_weights"])
    # final validation used STIPPLE prediction: positioning reports next to nnU-Net's summary
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    reports = list((fold / "validation" / "stipple_positioning").glob("*.json"))
    assert len(reports) == len(summary["metric_per_case"]) > 0
    assert summary["foreground_mean"]["Dice"] > 0.05      # the fixture learned the organs
    for report in reports:
        assert_positioned(json.loads(report.read_text())["folds"][0])


def test_continue_and_validation_only(trained):
    env = trained["env"]
    proc = _run(["nnUNetv2_train", trained["dataset_id"], "3d_fullres", 0, "-tr", TRAINER, "-device", "cpu", "--c"], env)
    assert "Traceback" not in proc.stderr
    summary = trained["model"] / "fold_0" / "validation" / "summary.json"
    summary.unlink()
    _run(["nnUNetv2_train", trained["dataset_id"], "3d_fullres", 0, "-tr", TRAINER, "-device", "cpu", "--val"], env)
    assert summary.is_file()


def _plain_nnunet_probabilities(trained, image, out_folder, monkeypatch) -> np.ndarray:
    """Class probabilities of nnU-Net's own predictor for ``image`` with the model's weights and no prior."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_stipple.priors.prior_module import allow_prior_free_forward
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        monkeypatch.setenv(key, trained["env"][key])
    predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False, device=torch.device("cpu"),
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(trained["model"]), (0,), "checkpoint_final.pth")
    allow_prior_free_forward(predictor.network)       # what nnUNetv2_predict refuses: the network without its prior
    case = image.name.replace("_0000.nii.gz", "")
    out_folder.mkdir()
    predictor.predict_from_files_sequential([[str(image)]], [str(out_folder / case)], save_probabilities=True,
                                            overwrite=True, folder_with_segs_from_prev_stage=None)
    return np.load(out_folder / f"{case}.npz")["probabilities"]


def test_stipple_predict_and_probabilities(trained, tmp_path, monkeypatch):
    """... with positioning settings overridden on the command line: the reports record the settings used."""
    env = trained["env"]
    out = tmp_path / "pred"
    proc = _run(["nnUNetv2_stipple_predict", "-i", trained["raw_dataset"] / "imagesUnlabeled", "-o", out,
                 "-d", trained["dataset_id"], "-c", "3d_fullres", "-f", 0, "-tr", TRAINER, "-device", "cpu",
                 "--disable_tta", "--save_probabilities", "-npp", 1, "-nps", 1,
                 "--search-radius-mm", 7, "--coarse-placement", "components"], env)
    segs = sorted(out.glob("*.nii.gz"))
    assert len(segs) == 2
    # a readable line per case and a summary (issue 12)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("STIPPLE positioning ")]
    assert sorted(ln.split(":")[0] for ln in lines) == sorted(f"STIPPLE positioning {s.name[:-7]}" for s in segs)
    assert "STIPPLE positioning: 2 cases, 2 placements" in proc.stdout
    img = sitk.ReadImage(str(trained["raw_dataset"] / "imagesUnlabeled" / segs[0].name.replace(".nii.gz", "_0000.nii.gz")))
    seg = sitk.ReadImage(str(segs[0]))
    assert seg.GetSize() == img.GetSize()
    probs = np.load(segs[0].with_name(segs[0].name.replace(".nii.gz", ".npz")))["probabilities"]
    assert np.all(np.isfinite(probs)) and np.allclose(probs.sum(0), 1, atol=1e-3)
    # the written probabilities are the prior-driven ones the segmentation was taken from, and the prior changed
    # them: nnU-Net's own predictor with the same weights and no prior gives others
    assert np.array_equal(probs.argmax(0), sitk.GetArrayFromImage(seg))
    image = trained["raw_dataset"] / "imagesUnlabeled" / segs[0].name.replace(".nii.gz", "_0000.nii.gz")
    plain = _plain_nnunet_probabilities(trained, image, tmp_path / "plain", monkeypatch)
    assert plain.shape == probs.shape and np.allclose(plain.sum(0), 1, atol=1e-3)
    assert np.abs(probs - plain).max() > 0.05
    reports = sorted((out / "stipple_positioning").glob("*.json"))
    assert len(reports) == 2
    fold_report = json.loads(reports[0].read_text())["folds"][0]
    assert "positioning_seconds" in fold_report
    for report in reports:
        fold_report = json.loads(report.read_text())["folds"][0]
        assert fold_report["settings"] == {"search_radius_mm": 7.0, "repositioning_steps": 1,
                                           "anatomy_tolerance_mm": 60.0, "coarse_placement": "components",
                                           "layout_guard": "fallback"}
        assert fold_report["floor"] == 1e-3


def test_plain_nnunet_predict_refuses(trained, tmp_path):
    proc = _run(["nnUNetv2_predict", "-i", trained["raw_dataset"] / "imagesUnlabeled", "-o", tmp_path / "plain",
                 "-d", trained["dataset_id"], "-c", "3d_fullres", "-f", 0, "-tr", TRAINER, "-device", "cpu",
                 "--disable_tta", "-npp", 1, "-nps", 1], trained["env"], ok=False)
    assert proc.returncode != 0
    assert "nnUNetv2_stipple_predict" in proc.stdout + proc.stderr
    assert not list((tmp_path / "plain").glob("*.nii.gz"))


def test_export_zip_and_predict_from_installed_model(trained, tmp_path):
    env = trained["env"]
    zip_file = tmp_path / "model.zip"
    _run(["nnUNetv2_export_model_to_zip", "-d", trained["dataset_id"], "-c", "3d_fullres", "-tr", TRAINER,
          "-f", 0, "-o", zip_file], env)
    # a fresh machine: new nnU-Net folders, only the zip and a folder of raw images
    fresh = dict(env, nnUNet_results=str(tmp_path / "results"), nnUNet_raw=str(tmp_path / "raw"),
                 nnUNet_preprocessed=str(tmp_path / "pre"))
    for k in ("results", "raw", "pre"):
        (tmp_path / k).mkdir()
    _run(["nnUNetv2_install_pretrained_model_from_zip", zip_file], fresh)
    images = tmp_path / "challenge_images"
    shutil.copytree(trained["raw_dataset"] / "imagesUnlabeled", images)
    model = tmp_path / "results" / trained["dataset_name"] / f"{TRAINER}__nnUNetPlans__3d_fullres"
    _run(["nnUNetv2_stipple_predict", "-i", images, "-o", tmp_path / "out", "-m", model, "-f", 0,
          "-device", "cpu", "--disable_tta", "-npp", 1, "-nps", 1], fresh)
    assert len(list((tmp_path / "out").glob("*.nii.gz"))) == 2


def test_model_without_prior_gets_clear_error(trained, tmp_path):
    """A plain nnU-Net checkpoint copied under a STIPPLE trainer name: the predictor names the file."""
    import torch
    model = tmp_path / "model"
    shutil.copytree(trained["model"], model, ignore=shutil.ignore_patterns("validation"))
    ckpt_file = model / "fold_0" / "checkpoint_final.pth"
    ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=False)
    ckpt["network_weights"] = {k: v for k, v in ckpt["network_weights"].items() if not k.startswith("stipple_prior.")}
    torch.save(ckpt, ckpt_file)
    proc = _run(["nnUNetv2_stipple_predict", "-i", trained["raw_dataset"] / "imagesUnlabeled", "-o", tmp_path / "o",
                 "-m", model, "-f", 0, "-device", "cpu", "--disable_tta"], trained["env"], ok=False)
    assert proc.returncode == 2
    assert "holds no STIPPLE prior" in proc.stderr and "checkpoint_final.pth" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_2d_configuration_trains(phantom_preprocessed):
    env = _env(phantom_preprocessed)
    _run(["nnUNetv2_train", phantom_preprocessed["dataset_id"], "2d", 0, "-tr", TRAINER, "-device", "cpu"], env)
    fold = (phantom_preprocessed["results"] / phantom_preprocessed["dataset_name"]
            / f"{TRAINER}__nnUNetPlans__2d" / "fold_0")
    assert (fold / "checkpoint_final.pth").is_file()
    assert (fold / "validation" / "summary.json").is_file()


def test_resenc_plans_train(phantom_preprocessed):
    """nnU-Net's residual-encoder presets (-p nnUNetResEncUNetMPlans) work like the default plans."""
    env = _env(phantom_preprocessed)
    d = phantom_preprocessed["dataset_id"]
    _run(["nnUNetv2_plan_experiment", "-d", d, "-pl", "nnUNetPlannerResEncM"], env)
    _run(["nnUNetv2_preprocess", "-d", d, "-plans_name", "nnUNetResEncUNetMPlans", "-c", "3d_fullres", "-np", 1], env)
    _run(["nnUNetv2_train", d, "3d_fullres", 0, "-tr", TRAINER, "-p", "nnUNetResEncUNetMPlans", "-device", "cpu"], env)
    fold = (phantom_preprocessed["results"] / phantom_preprocessed["dataset_name"]
            / f"{TRAINER}__nnUNetResEncUNetMPlans__3d_fullres" / "fold_0")
    assert (fold / "checkpoint_final.pth").is_file()
    assert (phantom_preprocessed["preprocessed_dataset"] / "stipple_priors" / "nnUNetResEncUNetMPlans__3d_fullres"
            / "B5" / "fold_0.npz").is_file()


def test_two_folds_each_with_its_own_prior_in_sequential_mode(trained, tmp_path):
    """-f 0 1: every fold's logits get that fold's own prior (built from its own training cases and carried
    by its own checkpoint); nnU-Net's sequential path (-npp 0 -nps 0) still writes a report per case."""
    import torch
    # a copy of the model in its own nnUNet_results; fold 1 with B = 4 (the tiny phantom's fold 1 has a
    # pancreas only 4 slices deep), so the two folds' priors differ even in shape
    results = tmp_path / "results"
    model = results / trained["dataset_name"] / trained["model"].name
    shutil.copytree(trained["model"], model)
    (model / "stipple_run.json").write_text(json.dumps({"num_bins": 4, **FIXTURE_SCHEDULE}))
    env = dict(trained["env"], nnUNet_results=str(results))
    _run(["nnUNetv2_train", trained["dataset_id"], "3d_fullres", 1, "-tr", TRAINER, "-device", "cpu"], env)
    priors = {}
    for fold in (0, 1):
        weights = torch.load(model / f"fold_{fold}" / "checkpoint_final.pth", map_location="cpu",
                             weights_only=False)["network_weights"]
        meta = json.loads(bytes(weights["stipple_prior.meta_json"].numpy().tobytes()).decode())
        priors[fold] = (meta, {k: v for k, v in weights.items() if k.startswith("stipple_prior.hist_")})
    assert priors[0][0]["fold"] == "0" and priors[1][0]["fold"] == "1"
    assert (priors[0][0]["num_bins"], priors[1][0]["num_bins"]) == (5, 4)
    assert priors[0][0]["training_cases"] != priors[1][0]["training_cases"]
    out = tmp_path / "pred"
    _run(["nnUNetv2_stipple_predict", "-i", trained["raw_dataset"] / "imagesUnlabeled", "-o", out,
          "-d", trained["dataset_id"], "-c", "3d_fullres", "-f", 0, 1, "-tr", TRAINER, "-device", "cpu",
          "--disable_tta", "-npp", 0, "-nps", 0,
          # this test is about each fold's own prior: the layout check only reports here, so that a tiny fold's
          # scattered first prediction cannot swap positioning for the fallback (tests/positioning/test_layout.py
          # and the validation test above test the guard's decisions)
          "--layout-guard", "flag"], env)
    segs = sorted(out.glob("*.nii.gz"))
    reports = sorted((out / "stipple_positioning").glob("*.json"))
    assert len(segs) == 2
    assert [r.name.replace(".json", "") for r in reports] == [s.name.replace(".nii.gz", "") for s in segs]
    for r in reports:
        rep = json.loads(r.read_text())
        assert rep["case"] == r.name.replace(".json", "")
        assert [f["fold"] for f in rep["folds"]] == ["0", "1"]
        for fold_report in rep["folds"]:
            assert fold_report["settings"]["layout_guard"] == "flag"
            assert_positioned(fold_report)


def test_positioning_study_script(trained, tmp_path):
    import sys
    from pathlib import Path
    from nnunet_stipple.benchmarks.positioning_eval import MODES
    out = tmp_path / "positioning.json"
    script = Path(__file__).resolve().parents[2] / "scripts" / "eval_positioning.py"
    proc = subprocess.run([sys.executable, str(script), "-m", str(trained["model"]), "-f", "0", "--max_cases", "2",
                           "-o", str(out), "--search-radius-mm", "10"], env=trained["env"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["settings"]["auto"]["search_radius_mm"] == 10.0 and res["settings"]["naive"]["search_radius_mm"] == 0
    assert res["settings"]["components"] == dict(res["settings"]["auto"], coarse_placement="components")
    assert len(res["cases"]) == 2 and set(res["mean"]) == set(MODES)
    for case in res["cases"]:
        for mode in MODES:
            dice = res["per_case"][case][mode]
            assert set(dice) == {str(c) for c in res["labels"]}
            assert all(v is None or np.isnan(v) or 0 <= v <= 1 for v in dice.values())
    header = next(line for line in proc.stdout.splitlines() if line.startswith("class"))
    assert header.split()[1:] == list(MODES)


def test_positioning_ablation_script_keeps_first_predictions(trained, tmp_path):
    """scripts/positioning_ablation.py: records written, the logits cached by the first run and reused (not
    rewritten) by the second, which gives the same Dice."""
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[2] / "scripts" / "positioning_ablation.py"
    cache = tmp_path / "cache"

    def ablation(out):
        proc = subprocess.run([sys.executable, str(script), "-m", f"phantom={trained['model']}", "-f", "0",
                               "--max-cases", "2", "--cache", str(cache), "-o", str(out), "--variants", "joint",
                               "hybrid", "--method", "hybrid", "--no-mirroring"], env=trained["env"],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((out / "ablation.json").read_text())

    first = ablation(tmp_path / "a")
    cached = sorted((cache / "phantom" / "fold0").glob("*.npy"))
    assert len(cached) == 2
    stamps = [p.stat().st_mtime_ns for p in cached]
    second = ablation(tmp_path / "b")
    assert [p.stat().st_mtime_ns for p in cached] == stamps
    model = first["models"]["phantom"]
    assert model["modes"] == ["visual", "naive", "joint", "hybrid", "ground_truth"]
    assert model["per_case"] == second["models"]["phantom"]["per_case"]
    assert model["settings"]["hybrid"]["coarse_placement"] == "hybrid"
    rows = (tmp_path / "a" / "positioning.csv").read_text().splitlines()
    assert rows[0] == "run_id,fold,case,class_key,mode,dice" and len(rows) == 1 + 2 * 4 * len(model["labels"])


def _sha(path) -> str:
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_resume_with_changed_labeled_subset_is_refused_and_nothing_changes(trained, tmp_path):
    """Issue 12, item 1: an edit of stipple_run.json between a training and its --c resume that changes what the
    model learns from is refused before a prior is built or a file written; a longer schedule is a normal resume."""
    results = tmp_path / "results"
    model = results / trained["dataset_name"] / trained["model"].name
    shutil.copytree(trained["model"], model)
    env = dict(trained["env"], nnUNet_results=str(results))
    fold = model / "fold_0"
    kept = {p.name: _sha(p) for p in (fold / "checkpoint_final.pth", fold / "stipple.json",
                                      fold / "stipple_run_trained.json")}
    labels = {p.name: _sha(p) for p in sorted((trained["raw_dataset"] / "labelsTr").iterdir())}
    priors = sorted((trained["preprocessed_dataset"] / "stipple_priors").rglob("*.npz"))
    (model / "stipple_run.json").write_text(json.dumps({"label_proportion": 0.5}))
    cmd = ["nnUNetv2_train", trained["dataset_id"], "3d_fullres", 0, "-tr", TRAINER, "-device", "cpu", "--c"]
    proc = _run(cmd, env, ok=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "refusing to resume" in out and "label_proportion was 1.0, now 0.5" in out
    assert {p: _sha(fold / p) for p in kept} == kept
    assert {p.name: _sha(p) for p in sorted((trained["raw_dataset"] / "labelsTr").iterdir())} == labels
    assert sorted((trained["preprocessed_dataset"] / "stipple_priors").rglob("*.npz")) == priors

    epochs = FIXTURE_SCHEDULE["num_epochs"]       # one more epoch, a short one
    (model / "stipple_run.json").write_text(json.dumps({"num_epochs": epochs + 1, "num_iterations_per_epoch": 3}))
    _run(cmd, env)
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert f"num_epochs {epochs} -> {epochs + 1} on resume (schedule)" in log
    assert f"num_iterations_per_epoch {FIXTURE_SCHEDULE['num_iterations_per_epoch']} -> 3 on resume (schedule)" in log
    assert json.loads((fold / "stipple_run_trained.json").read_text())["settings"]["num_epochs"] == epochs + 1


def test_image_of_nans_is_predicted_with_a_warning(trained, tmp_path):
    """Issue 12: an all-NaN image gave a full, confident-looking segmentation without a word."""
    images = tmp_path / "images"
    images.mkdir()
    source = sorted((trained["raw_dataset"] / "imagesUnlabeled").glob("*_0000.nii.gz"))[0]
    img = sitk.ReadImage(str(source), sitk.sitkFloat32)
    nan = sitk.GetImageFromArray(np.full(sitk.GetArrayFromImage(img).shape, np.nan, np.float32))
    nan.CopyInformation(img)
    sitk.WriteImage(nan, str(images / "nan_case_0000.nii.gz"))
    out = tmp_path / "pred"
    proc = _run(["nnUNetv2_stipple_predict", "-i", images, "-o", out, "-d", trained["dataset_id"], "-c", "3d_fullres",
                 "-f", 0, "-tr", TRAINER, "-device", "cpu", "--disable_tta", "-npp", 0, "-nps", 0], trained["env"])
    # SimpleITK reads a NIfTI of NaNs as zeros: the warning is about an image without contrast
    assert "case nan_case: the image is constant" in proc.stderr
    assert "INPUT: the image is constant" in proc.stdout and "1 cases with a constant or non-finite image" in proc.stdout
    report = json.loads((out / "stipple_positioning" / "nan_case.json").read_text())
    assert report["input_problem"].startswith("the image is constant")
