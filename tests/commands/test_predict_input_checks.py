"""Input checks of nnUNetv2_stipple_predict (before any model is loaded)."""
import json

import pytest

from nnunet_stipple.commands.predict import main
from conftest import run_refused
from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.inference.input_checks import check_input_folder

DJ1 = {"channel_names": {"0": "CT"}, "file_ending": ".nii.gz", "labels": {"background": 0, "liver": 1}}
DJ2 = {"channel_names": {"0": "T1", "1": "T2"}, "file_ending": ".nii.gz", "labels": {"background": 0, "a": 1}}


def make_files(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")
    return folder


@pytest.mark.parametrize("dj, names, cases", [
    (DJ1, ["a_0000.nii.gz", "b_0000.nii.gz"], ["a", "b"]),
    (DJ1, ["case_01_0000.nii.gz", ".DS_Store"], ["case_01"]),                 # underscores in ids; hidden ignored
    (DJ2, ["a_0000.nii.gz", "a_0001.nii.gz"], ["a"]),
])
def test_good_folders(tmp_path, dj, names, cases):
    assert check_input_folder(make_files(tmp_path / "in", names), dj) == cases


@pytest.mark.parametrize("dj, names, needles", [
    (DJ1, [], ["holds no image files", "CASE_XXXX.nii.gz"]),
    (DJ1, ["a_0001.nii.gz"], ["a_0001.nii.gz", "channel index >= 1", "missing a_0000.nii.gz"]),
    (DJ1, ["a_0000.nii.gz", "a_0001.nii.gz"], ["a_0001.nii.gz", "channel index >= 1"]),
    (DJ1, ["a_0000.nii"], ["a_0000.nii", "file ending '.nii.gz'"]),
    (DJ1, ["a_0000.nii.gz", "b.nii.gz"], ["b.nii.gz", "not named CASE_XXXX.nii.gz"]),
    (DJ1, ["a_000.nii.gz"], ["a_000.nii.gz", "not named"]),
    (DJ2, ["a_0000.nii.gz", "b_0001.nii.gz", "b_0000.nii.gz", "c_0001.nii.gz"],
     ["missing c_0000.nii.gz", "_0000 .. _0001"]),
    (DJ2, ["a_0000.nii.gz"], ["missing a_0001.nii.gz", "2 channels (T1, T2)"]),
])
def test_bad_folders(tmp_path, dj, names, needles):
    with pytest.raises(StippleInputError) as excinfo:
        check_input_folder(make_files(tmp_path / "in", names), dj)
    for needle in needles:
        assert needle in str(excinfo.value)
    assert "nnU-Net needs one file per case and channel" in str(excinfo.value)


def test_missing_folder(tmp_path):
    with pytest.raises(StippleInputError, match="does not exist"):
        check_input_folder(tmp_path / "nope", DJ1)


def fake_model_folder(root, folds=(0,), dj=DJ1):
    import torch
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(dj))
    (root / "plans.json").write_text(json.dumps({"original_median_shape_after_transp": [20, 30, 30]}))
    for f in folds:
        (root / f"fold_{f}").mkdir()
        torch.save({"network_weights": {}}, root / f"fold_{f}" / "checkpoint_final.pth")   # a readable zip
    return root


def _digests(root):
    import hashlib
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def write_image(path, shape):
    import numpy as np
    import SimpleITK as sitk
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(shape, np.float32), isVector=False), str(path))


def run_main(argv, capsys):
    return run_refused(main, argv, capsys)


@pytest.mark.parametrize("setup, extra, needles", [
    ("same_io", [], ["output folder (-o) is the input folder"]),
    ("empty", [], ["holds no image files"]),
    ("missing_0000", [], ["missing x_0000.nii.gz"]),
    ("extra_channel", [], ["x_0001.nii.gz", "channel index >= 1"]),
    ("wrong_ending", [], ["x_0000.nii", "file ending"]),
    ("ok", ["-f", "0", "1"], ["fold(s) 1", "fold_0"]),
    ("ok", ["-f", "x"], ["argument -f/--folds: Fold 'x' is neither a fold number (0, 1, ...) nor 'all'"]),
    ("ok", ["-prev_stage_predictions", "prev"], ["cascade"]),
    ("ok", ["-num_parts", "2", "-part_id", "2"], ["-part_id"]),
    ("ok", ["-step_size", "1.5"], ["-step_size"]),
    ("ok", ["--search-radius-mm", "-3"], ["the command line: search_radius_mm", "non-negative number, got -3.0"]),
    ("ok", ["--repositioning-steps", "-1"], ["the command line: repositioning_steps", "non-negative integer"]),
    ("no_model", [], ["model folder", "does not exist"]),
    ("output_is_file", [], ["is a file. Choose a folder (-o)"]),
    ("output_under_file", [], ["cannot be created", "is a file, not a folder"]),
    ("truncated_checkpoint", [], ["checkpoint_final.pth is not a readable torch checkpoint", "truncated"]),
    ("image_4d", [], ["x_0000.nii.gz: 4-D image of size (7, 6, 5, 3)"]),
    ("image_2d", [], ["x_0000.nii.gz: a 2-D image of size (7, 6)"]),
    ("image_garbage", [], ["x_0000.nii.gz: not a readable image"]),
])
def test_cli_rejects_before_loading(tmp_path, capsys, setup, extra, needles):
    model = tmp_path / "model" if setup == "no_model" else fake_model_folder(tmp_path / "model")
    names = {"empty": [], "missing_0000": ["x_0001.nii.gz"], "extra_channel": ["x_0000.nii.gz", "x_0001.nii.gz"],
             "wrong_ending": ["x_0000.nii"]}.get(setup, ["x_0000.nii.gz"])
    inp = make_files(tmp_path / "in", names)
    shape = {"image_4d": (3, 5, 6, 7), "image_2d": (6, 7)}.get(setup, (5, 6, 7))
    if setup not in ("empty", "missing_0000", "extra_channel", "wrong_ending", "image_garbage"):
        write_image(inp / "x_0000.nii.gz", shape)
    out = inp if setup == "same_io" else tmp_path / "out"
    if setup == "output_is_file":
        out.write_text("a file")
    elif setup == "output_under_file":
        (tmp_path / "blocker").write_text("a file")
        out = tmp_path / "blocker" / "out"
    elif setup == "truncated_checkpoint":
        ckpt = model / "fold_0" / "checkpoint_final.pth"
        ckpt.write_bytes(ckpt.read_bytes()[:100])
    before = _digests(tmp_path)
    code, captured = run_main(["-i", str(inp), "-o", str(out), "-m", str(model), "-f", "0", "-device", "cpu",
                               *extra], capsys)
    assert code == 2, captured.err
    assert _digests(tmp_path) == before     # images, checkpoints and everything else untouched
    for needle in needles:
        assert needle in captured.err
    if setup != "output_is_file":
        assert not (tmp_path / "out").exists()      # nothing written before the checks pass


@pytest.mark.parametrize("argv", [
    ["-i", "a", "-o", "b"],                                        # neither -m nor -d/-c
    ["-i", "a", "-o", "b", "-d", "1"],                              # -c missing
    ["-i", "a", "-o", "b", "-m", "m", "-d", "1", "-c", "2d"],       # both
    ["-i", "a", "-o", "b", "-m", "m", "-device", "tpu"],
])
def test_cli_argument_errors(argv, capsys):
    code, captured = run_main(argv, capsys)
    assert code == 2 and "usage:" in captured.err


def test_cli_dataset_without_results_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("nnUNet_results", raising=False)
    code, captured = run_main(["-i", str(tmp_path), "-o", str(tmp_path / "o"), "-d", "1", "-c", "3d_fullres"], capsys)
    assert code == 2 and "nnUNet_results" in captured.err


@pytest.mark.e2e
def test_model_without_prior_exits_2(phantom_preprocessed, tmp_path, capsys):
    """A plain nnUNetTrainer checkpoint (random weights) is refused with a clear message."""
    import shutil

    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    pre = phantom_preprocessed["preprocessed_dataset"]
    model = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True)
    shutil.copy(pre / "dataset.json", model / "dataset.json")
    shutil.copy(pre / "nnUNetPlans.json", model / "plans.json")
    pm = PlansManager(str(model / "plans.json"))
    dj = json.loads((model / "dataset.json").read_text())
    net = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1,
                                                   pm.get_label_manager(dj).num_segmentation_heads,
                                                   enable_deep_supervision=False)
    torch.save({"trainer_name": "nnUNetTrainer", "init_args": {"configuration": "3d_fullres"},
                "network_weights": net.state_dict(), "inference_allowed_mirroring_axes": (0, 1, 2)},
               model / "fold_0" / "checkpoint_final.pth")
    inp = tmp_path / "in"
    inp.mkdir()
    src = phantom_preprocessed["raw_dataset"] / "imagesTr" / "phantom_000_0000.nii.gz"
    shutil.copy(src, inp / src.name)
    code, captured = run_main(["-i", str(inp), "-o", str(tmp_path / "out"), "-m", str(model), "-f", "0",
                               "-device", "cpu", "-npp", "0", "-nps", "0"], capsys)
    assert code == 2
    assert "holds no STIPPLE prior" in captured.err and "nnUNetv2_predict" in captured.err
