"""nnUNetv2_stipple_show_prior and summarize_prior."""
import json

import numpy as np
import pytest

from nnunet_stipple.commands.show_prior import main
from conftest import handmade_prior, run_refused
from nnunet_stipple.priors.spatial_prior import SpatialPrior
from nnunet_stipple.priors.summary import summarize_prior


def tiny_prior(spacing=(2.0, 1.0, 1.0)) -> SpatialPrior:
    """Class 1 built (box 4x3x3, B=2), class 2 missing."""
    hist = np.full((2, 3, 3), 0.5, dtype=np.float32)
    hist[0, 1, 1] = 1.0
    return handmade_prior({1: hist}, {1: np.full((4, 3, 3), 128, dtype=np.uint8)}, {1: [5.0, 6.0, 7.0]},
                          {1: "liver", 2: "spleen"}, spacing=spacing, slice_counts={1: np.array([6, 6])},
                          num_cases_per_class={1: 3}, training_cases=["a", "b", "c"],
                          case_centres={"a": {1: [5.0, 6.0, 7.0]}})


def run_main(argv, capsys):
    return run_refused(main, argv, capsys)


@pytest.mark.parametrize("needle", [
    "Dataset999_Tiny", "nnUNetPlans", "3d_fullres", "Fold:              0", "B (bins):          2",
    "Axial axis:        0", "(2.000, 1.000, 1.000)", "Training cases:    3", "liver", "4x3x3", "8.0x3.0x3.0",
    "(5.0, 6.0, 7.0)", "1.000", "Missing classes (in no training case; they get the floor probability): 2 (spleen)",
])
def test_summary_contents(needle):
    assert needle in summarize_prior(tiny_prior())


def test_summary_with_path_lists_figures(tmp_path):
    path = tiny_prior().save(tmp_path / "fold_0.npz")
    assert "Figures:           none" in summarize_prior(tiny_prior(), path)
    (tmp_path / "fold_0_figures").mkdir()
    (tmp_path / "fold_0_figures" / "a.png").write_bytes(b"")
    text = summarize_prior(tiny_prior(), path)
    assert f"File:              {path}" in text and "fold_0_figures (1 PNG file)" in text


def test_summary_of_non_3d_spacing_does_not_fail():
    assert "n/a (spacing not 3D)" in summarize_prior(tiny_prior(spacing=(1.0, 1.0)))


def test_cli_on_file(tmp_path, capsys):
    path = tiny_prior().save(tmp_path / "fold_0.npz")
    for arg in (path, path.with_suffix(".json")):
        assert main([str(arg)]) == 0
        out = capsys.readouterr().out
        assert "liver" in out and "spleen" in out


@pytest.mark.parametrize("corrupt, needle", [
    ("missing", "does not exist"),
    ("checksum", "checksum differs"),
    ("json", "not valid JSON"),
])
def test_cli_bad_files_exit_2(tmp_path, capsys, corrupt, needle):
    path = tiny_prior().save(tmp_path / "fold_0.npz")
    if corrupt == "missing":
        path = tmp_path / "fold_9.npz"
    elif corrupt == "checksum":
        meta = json.loads(path.with_suffix(".json").read_text())
        meta["npz_sha256"] = "0" * 64
        path.with_suffix(".json").write_text(json.dumps(meta))
    else:
        path.with_suffix(".json").write_text("{")
    code, captured = run_main([str(path)], capsys)
    assert code == 2 and needle in captured.err


@pytest.mark.parametrize("argv", [[], ["x.npz", "-d", "1"], ["-d", "1", "-c", "3d_fullres"]])
def test_cli_argument_errors(argv, capsys):
    code, captured = run_main(argv, capsys)
    assert code == 2 and "usage:" in captured.err


@pytest.mark.e2e
def test_cli_locates_prior_and_lists_class_names(nnunet_env, capsys):
    from nnunet_stipple.priors.build import build_priors
    env = nnunet_env
    build_priors(env["dataset_id"], "3d_fullres", [0], num_bins=4, figures=False, log=lambda *_: None)
    assert main(["-d", str(env["dataset_id"]), "-c", "3d_fullres", "-f", "0", "-B", "4"]) == 0
    out = capsys.readouterr().out
    labels = json.loads((env["raw_dataset"] / "dataset.json").read_text())["labels"]
    for name in labels:
        if name != "background":
            assert name in out
    assert env["dataset_name"] in out and "B (bins):          4" in out

    code, captured = run_main(["-d", str(env["dataset_id"]), "-c", "3d_fullres", "-f", "2", "-B", "4"], capsys)
    assert code == 2
    assert "nnUNetv2_stipple_build_priors -d" in captured.err and "nnUNetPlans__3d_fullres/B4/fold_0.npz" in captured.err
