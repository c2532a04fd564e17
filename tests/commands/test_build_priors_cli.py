"""nnUNetv2_stipple_build_priors on nnU-Net-preprocessed phantom data (the shared ``phantom_preprocessed``)."""
import re
import subprocess

import pytest

from nnunet_stipple.commands.build_priors import main
from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.priors.build import build_priors, figures_folder
from nnunet_stipple.nnunet_folders import parse_fold

from conftest import run_refused, venv_script

B = 3   # a B no other test uses, so the shared preprocessed folder keeps other tests' priors untouched


def prior_file(env, fold, num_bins=B, configuration="3d_fullres"):
    return (env["preprocessed_dataset"] / "stipple_priors" / f"nnUNetPlans__{configuration}" / f"B{num_bins}"
            / f"fold_{fold}.npz")


def run_main(argv, capsys):
    return run_refused(main, argv, capsys)


@pytest.mark.parametrize("fold, expected", [(0, 0), ("3", 3), ("all", "all"), (" all ", "all")])
def test_parse_fold(fold, expected):
    assert parse_fold(fold) == expected


@pytest.mark.parametrize("fold", ["-1", "x", "1.5", ""])
def test_parse_fold_rejects(fold):
    with pytest.raises(StippleInputError, match="neither a fold number"):
        parse_fold(fold)


@pytest.mark.e2e
def test_build_reuse_overwrite(nnunet_env, capsys):
    env = nnunet_env
    ds = str(env["dataset_id"])
    assert main(["-d", ds, "-c", "3d_fullres", "-f", "0", "all", "-B", str(B), "--overwrite"]) == 0
    out = capsys.readouterr().out
    for fold in (0, "all"):
        npz = prior_file(env, fold)
        assert npz.is_file() and npz.with_suffix(".json").is_file()
        figs = figures_folder(npz)
        assert figs.is_dir() and len(list(figs.glob("*.png"))) >= 1
        assert f"fold {fold}: prior {npz}" in out and f"fold {fold}: figures {figs}" in out
        assert re.search(rf"fold {fold}: done in \d+\.\d s", out)
    mtime = prior_file(env, 0).stat().st_mtime_ns

    assert main(["-d", ds, "-c", "3d_fullres", "-f", "0", "-B", str(B)]) == 0
    out = capsys.readouterr().out
    assert "reusing the matching prior" in out
    assert prior_file(env, 0).stat().st_mtime_ns == mtime

    assert main(["-d", ds, "-c", "3d_fullres", "-f", "0", "-B", str(B), "--overwrite", "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "wrote prior" in out and "reusing" not in out
    assert prior_file(env, 0).stat().st_mtime_ns != mtime


@pytest.mark.e2e
def test_library_function_returns_paths_and_redraws_missing_figures(nnunet_env):
    import shutil
    env = nnunet_env
    paths = build_priors(env["dataset_id"], "3d_fullres", ["0"], num_bins=B, log=lambda *_: None)
    assert paths == [prior_file(env, 0)]
    shutil.rmtree(figures_folder(paths[0]))
    build_priors(env["dataset_id"], "3d_fullres", [0], num_bins=B, log=lambda *_: None)   # reused, figures redrawn
    assert list(figures_folder(paths[0]).glob("*.png"))


@pytest.mark.e2e
def test_no_figures(nnunet_env, capsys):
    env = nnunet_env
    assert main(["-d", str(env["dataset_id"]), "-c", "3d_fullres", "-f", "1", "-B", "2", "--no-figures",
                 "--overwrite"]) == 0
    assert "(none; --no-figures)" in capsys.readouterr().out
    assert prior_file(env, 1, 2).is_file() and not figures_folder(prior_file(env, 1, 2)).exists()


@pytest.mark.e2e
@pytest.mark.parametrize("extra, needles", [
    (["-f", "7"], ["splits_final.json", "Fold 7"]),
    (["-f", "0", "7"], ["splits_final.json", "Fold 7"]),        # checked before fold 0 is built
    (["-f", "x"], ["neither a fold number"]),
    (["-f", "0", "-B", "50"], ["B=50", "class", "Use B <="]),
    (["-f", "0", "-B", "0"], ["B (number of bins) must be >= 1"]),
    (["-f", "0", "-c", "3d_lowres_typo"], ["Configuration '3d_lowres_typo'"]),
])
def test_bad_arguments_exit_2(nnunet_env, capsys, extra, needles):
    argv = ["-d", str(nnunet_env["dataset_id"]), "-c", "3d_fullres", "-B", str(B), *extra]
    code, captured = run_main(argv, capsys)
    assert code == 2
    for needle in needles:
        assert needle in captured.err
    assert not prior_file(nnunet_env, 7).exists()


@pytest.mark.e2e
def test_b_too_large_names_the_class(nnunet_env, capsys):
    code, captured = run_main(["-d", str(nnunet_env["dataset_id"]), "-c", "3d_fullres", "-f", "0", "-B", "50"],
                              capsys)
    assert code == 2
    names = "|".join(["liver", "spleen", "right_kidney", "left_kidney", "pancreas"])
    assert re.search(rf"depth of class \d+ \(({names})\)", captured.err)


def test_not_preprocessed_dataset_gives_plan_and_preprocess_hint(tmp_path, monkeypatch, capsys):
    from nnunet_stipple.phantom.generator import make_phantom_dataset
    for sub in ("raw", "pre", "res"):
        (tmp_path / sub).mkdir()
    make_phantom_dataset(tmp_path / "raw", dataset_id=993, num_labeled=2, num_unlabeled=0, shape=(16, 16, 16))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "res"))
    code, captured = run_main(["-d", "993", "-c", "3d_fullres", "-f", "0"], capsys)
    assert code == 2
    assert "nnUNetv2_plan_and_preprocess -d 993 -c 3d_fullres" in captured.err
    code, captured = run_main(["-d", "994", "-c", "3d_fullres", "-f", "0"], capsys)
    assert code == 2 and "Dataset 994 not found" in captured.err


@pytest.mark.e2e
def test_console_script_exit_status(phantom_preprocessed):
    proc = subprocess.run([venv_script("nnUNetv2_stipple_build_priors"), "-d", str(phantom_preprocessed["dataset_id"]),
                           "-c", "3d_fullres", "-f", "7"], env=phantom_preprocessed["env"], capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert "splits_final.json" in proc.stderr and "Traceback" not in proc.stderr
    help_text = subprocess.run([venv_script("nnUNetv2_stipple_build_priors"), "-h"], capture_output=True,
                               text=True).stdout
    assert "spatial prior" in help_text and "--axial-axis" in help_text


def _truncate(path):
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


def _garbage(path):
    path.write_bytes(b"this is not a pickle")


@pytest.mark.parametrize("suffix, damage", [("_seg.b2nd", _truncate), (".b2nd", _truncate), (".pkl", _garbage),
                                            (".pkl", _truncate)])
def test_damaged_preprocessed_case_names_the_case_and_the_fix(nnunet_env, tmp_path, monkeypatch, capsys,
                                                              suffix, damage):
    """Issue 12: a truncated _seg.b2nd or a garbage .pkl ended in raw blosc2/pickle tracebacks."""
    import shutil
    copy = tmp_path / "pre"
    shutil.copytree(nnunet_env["preprocessed"], copy, ignore=shutil.ignore_patterns("stipple_priors"))
    monkeypatch.setenv("nnUNet_preprocessed", str(copy))
    folder = copy / nnunet_env["dataset_name"] / "nnUNetPlans_3d_fullres"
    case = sorted(p.name[: -len("_seg.b2nd")] for p in folder.glob("*_seg.b2nd"))[0]
    damage(folder / f"{case}{suffix}")
    code, captured = run_main(["-d", str(nnunet_env["dataset_id"]), "-c", "3d_fullres", "-f", "all", "-B", "2"],
                              capsys)
    assert code == 2
    assert f"Cannot read the preprocessed case {case}" in captured.err and str(folder) in captured.err
    assert "re-run `nnUNetv2_preprocess" in captured.err
