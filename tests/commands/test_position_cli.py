"""nnUNetv2_stipple_position and position_prior."""
import json

import numpy as np
import pytest

from nnunet_stipple.commands.position import main
from conftest import handmade_prior, run_refused
from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.positioning.api import position_prior
from nnunet_stipple.positioning.place import centres_from_label
from nnunet_stipple.positioning.settings import PositioningSettings
from nnunet_stipple.priors.spatial_prior import SpatialPrior


def tiny_prior() -> SpatialPrior:
    """Classes 1 and 2, both built (boxes 4x3x3), B=2, spacing (2, 1, 1)."""
    hist = np.full((2, 3, 3), 0.5, dtype=np.float32)
    tmpl = np.full((4, 3, 3), 255, dtype=np.uint8)
    return handmade_prior({1: hist, 2: hist.copy()}, {1: tmpl, 2: tmpl.copy()},
                          {1: [5.5, 5.0, 5.0], 2: [12.5, 10.0, 10.0]}, {1: "liver", 2: "spleen"},
                          spacing=(2.0, 1.0, 1.0), slice_counts={1: np.array([2, 2]), 2: np.array([2, 2])})


def tiny_label(shape=(20, 16, 16)):
    lab = np.zeros(shape, dtype=np.uint8)
    lab[4:8, 4:7, 4:7] = 1
    lab[11:15, 9:12, 9:12] = 2
    return lab


def run_main(argv, capsys):
    return run_refused(main, argv, capsys)


def test_from_label():
    res = position_prior(tiny_prior(), label=tiny_label())
    assert res["method"] == "label" and res["confidence"] == 1.0
    assert res["centres"] == {"1": [5.5, 5.0, 5.0], "2": [12.5, 10.0, 10.0]}
    json.dumps(res)


def test_from_label_absent_class_and_nnunet_layout():
    lab = tiny_label()
    lab[lab == 2] = 0
    res = position_prior(tiny_prior(), label=lab[None].astype(np.int16) - (lab[None] == 0))   # -1 outside mask
    assert res["centres"]["2"] is None and res["classes"]["2"]["method"] == "absent"
    assert res["centres"]["1"] == [5.5, 5.0, 5.0]


def test_from_probabilities_recovers_position():
    lab = tiny_label()
    probs = np.stack([(lab == c).astype(np.float32) * 0.9 + 0.05 for c in range(3)])
    res = position_prior(tiny_prior(), probabilities=probs, settings=PositioningSettings(search_radius_mm=4))
    assert res["method"] == "kl_search" and res["ok"] and res["settings"]["search_radius_mm"] == 4.0
    assert res["centres"] == {"1": [5.5, 5.0, 5.0], "2": [12.5, 10.0, 10.0]}
    assert 0 <= res["confidence"] <= 1
    json.dumps(res)


@pytest.mark.parametrize("kwargs, needle", [
    ({}, "neither"),
    ({"label": tiny_label(), "probabilities": np.zeros((3, 20, 16, 16))}, "both"),
    ({"label": np.zeros((16, 16))}, "2 dims"),
    ({"label": np.zeros((2, 4, 4, 4))}, "4 dims"),
    ({"label": np.zeros((1, 1, 4, 4, 4))}, "5 dims"),
    ({"label": np.full((4, 4, 4), 0.5)}, "non-integer"),
    ({"probabilities": np.zeros((20, 16, 16))}, "3 dims"),
    ({"probabilities": np.zeros((2, 20, 16, 16))}, "2 channels but the prior has 3 classes"),
    ({"probabilities": np.full((3, 4, 4, 4), np.nan)}, "non-finite"),
    ({"probabilities": np.full((3, 4, 4, 4), 0.5), "floor": 0.0}, "floor must be in"),
])
def test_errors(kwargs, needle):
    with pytest.raises(StippleInputError, match=needle):
        position_prior(tiny_prior(), **kwargs)


def test_cli_label_files(tmp_path, capsys):
    import SimpleITK as sitk
    prior_path = tiny_prior().save(tmp_path / "fold_0.npz")
    lab = tiny_label()
    np.save(tmp_path / "lab.npy", lab)
    np.savez(tmp_path / "lab.npz", seg=lab[None])
    img = sitk.GetImageFromArray(lab)
    img.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(img, str(tmp_path / "lab.nii.gz"))
    expected = {str(c): v for c, v in centres_from_label(lab, [1, 2]).items()}
    for name in ("lab.npy", "lab.npz", "lab.nii.gz"):
        assert main(["--prior", str(prior_path), "--label", str(tmp_path / name)]) == 0
        captured = capsys.readouterr()
        assert json.loads(captured.out)["centres"] == expected
        assert "warning" not in captured.err


def test_cli_probabilities_to_file(tmp_path, capsys):
    prior_path = tiny_prior().save(tmp_path / "fold_0.npz")
    lab = tiny_label()
    np.savez(tmp_path / "p.npz", probabilities=np.stack([(lab == c) * 0.9 + 0.05 for c in range(3)]))
    out = tmp_path / "sub" / "pos.json"
    assert main(["--prior", str(prior_path), "--probabilities", str(tmp_path / "p.npz"), "--search-radius-mm", "4",
                 "--anatomy-tolerance-mm", "30", "--repositioning-steps", "0", "-o", str(out)]) == 0
    assert "kl_search" in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert written["centres"]["2"] == [12.5, 10.0, 10.0]
    assert written["settings"] == {"search_radius_mm": 4.0, "repositioning_steps": 0, "anatomy_tolerance_mm": 30.0,
                                   "coarse_placement": "hybrid", "layout_guard": "fallback"}
    assert written["repositioning_steps"] == 0 and written["floor"] == 1e-3


@pytest.mark.parametrize("coarse, flags", [("joint", ["--search-radius-mm", "4", "--coarse-placement", "joint"]),
                                           ("components", ["--radius-mm", "4", "--coarse", "components"])])
def test_cli_coarse_placement(tmp_path, capsys, coarse, flags):
    """The settings' own flags, and the older spellings --radius-mm and --coarse."""
    prior_path = tiny_prior().save(tmp_path / "fold_0.npz")
    lab = tiny_label()
    np.savez(tmp_path / "p.npz", probabilities=np.stack([(lab == c) * 0.9 + 0.05 for c in range(3)]))
    assert main(["--prior", str(prior_path), "--probabilities", str(tmp_path / "p.npz"), *flags]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["settings"]["coarse_placement"] == coarse and result["centres"]["2"] == [12.5, 10.0, 10.0]
    assert result["settings"]["search_radius_mm"] == 4.0 and result["repositioning_steps"] == 1
    assert (result["joint"] is not None) == (coarse == "joint")


@pytest.mark.parametrize("flags, needle", [
    (["--coarse", "centre"], "invalid choice: 'centre'"),
    (["--search-radius-mm", "-1"], "the command line: search_radius_mm"),
    (["--repositioning-steps", "-2"], "the command line: repositioning_steps"),
    (["--repositioning-steps", "1.5"], "invalid int value: '1.5'"),
    (["--anatomy-tolerance-mm", "nan"], "the command line: anatomy_tolerance_mm"),
])
def test_cli_bad_positioning_settings(tmp_path, capsys, flags, needle):
    code, captured = run_main(["--prior", "p.npz", "--probabilities", "p.npz", *flags], capsys)
    assert code == 2 and needle in captured.err


@pytest.mark.parametrize("make, needle", [
    (lambda d: np.savez(d / "x.npz", other=np.zeros((3, 4, 4, 4))), "no array named 'probabilities'"),
    (lambda d: np.savez(d / "x.npz", probabilities=np.zeros((2, 4, 4, 4))), "2 channels"),
    (lambda d: np.savez(d / "x.npz", probabilities=np.zeros((4, 4, 4))), "3 dims"),
    (lambda d: (d / "x.npz").write_text("not a zip"), "Cannot read"),
    (lambda d: None, "does not exist"),
])
def test_cli_probability_errors(tmp_path, capsys, make, needle):
    prior_path = tiny_prior().save(tmp_path / "fold_0.npz")
    make(tmp_path)
    code, captured = run_main(["--prior", str(prior_path), "--probabilities", str(tmp_path / "x.npz")], capsys)
    assert code == 2 and needle in captured.err


@pytest.mark.parametrize("extra", [[], ["--label", "a.npy", "--probabilities", "b.npz"]])
def test_cli_needs_exactly_one_input(tmp_path, capsys, extra):
    code, captured = run_main(["--prior", "p.npz", *extra], capsys)
    assert code == 2 and "usage:" in captured.err


def test_cli_spacing_warning(tmp_path, capsys):
    import SimpleITK as sitk
    prior_path = tiny_prior().save(tmp_path / "fold_0.npz")
    sitk.WriteImage(sitk.GetImageFromArray(tiny_label()), str(tmp_path / "lab.nii.gz"))    # spacing 1, 1, 1
    assert main(["--prior", str(prior_path), "--label", str(tmp_path / "lab.nii.gz")]) == 0
    assert "warning" in capsys.readouterr().err


@pytest.mark.e2e
def test_label_of_preprocessed_cases_recovers_prior_centres(nnunet_env, tmp_path, capsys):
    from nnunet_stipple.priors.build import build_priors
    from nnunet_stipple.nnunet_folders import dataset_class_for, open_preprocessed
    env = nnunet_env
    [path] = build_priors(env["dataset_id"], "3d_fullres", [0], num_bins=4, figures=False, log=lambda *_: None)
    prior = SpatialPrior.load(path)
    ds = open_preprocessed(env["dataset_id"], "3d_fullres")
    cases = sorted(prior.case_centres)
    assert len(cases) == 8
    data = dataset_class_for(ds)(str(ds.data_folder), cases)
    for i, case in enumerate(cases):
        seg = np.asarray(data.load_case(case)[1])           # (1, X, Y, Z), -1 outside the nonzero mask
        expected = {str(c): v for c, v in prior.case_centres[case].items()}
        if i == 0:      # once through the command line
            np.save(tmp_path / "seg.npy", seg)
            assert main(["--prior", str(path), "--label", str(tmp_path / "seg.npy")]) == 0
            centres = json.loads(capsys.readouterr().out)["centres"]
        else:
            centres = position_prior(prior, label=seg)["centres"]
        assert {k: v for k, v in centres.items() if v is not None} == expected


def _ct_like(d):
    """A CT image (Hounsfield units) given where a label belongs."""
    rng = np.random.default_rng(0)
    np.save(d / "x.npy", rng.integers(-1024, 2000, size=(20, 16, 16)).astype(np.int16))
    return "--label"


def _logits(d):
    lab = tiny_label()
    np.savez(d / "x.npz", probabilities=np.stack([(lab == c) * 8.0 - 4.0 for c in range(3)]))
    return "--probabilities"


def _other_labels(d):
    lab = tiny_label()
    lab[0, 0, 0] = 7
    np.save(d / "x.npy", lab)
    return "--label"


@pytest.mark.parametrize("make, needles", [
    (_ct_like, ["not classes of the prior", "looks like an image, not a segmentation"]),
    (_other_labels, ["not classes of the prior (7;", "1 liver, 2 spleen"]),
    (_logits, ["range from -4 to 4, outside [0, 1]: these look like logits"]),
])
def test_cli_wrong_kind_of_input(tmp_path, capsys, make, needles):
    """Issue 12: a CT as --label gave exit 0 with every organ at the image centre; logits gave a ValueError naming
    an internal variable."""
    prior_path = tiny_prior().save(tmp_path / "fold_0.npz")
    flag = make(tmp_path)
    name = "x.npy" if flag == "--label" else "x.npz"
    code, captured = run_main(["--prior", str(prior_path), flag, str(tmp_path / name)], capsys)
    assert code == 2
    for needle in needles:
        assert needle in captured.err


def test_cli_prior_json_instead_of_npz(tmp_path, capsys):
    prior_path = tiny_prior().save(tmp_path / "fold_0.npz")
    np.save(tmp_path / "lab.npy", tiny_label())
    code, captured = run_main(["--prior", str(prior_path.with_suffix(".json")), "--label", str(tmp_path / "lab.npy")],
                              capsys)
    assert code == 2 and "give the prior's .npz file (fold_0.npz" in captured.err


def test_huge_radius_is_bounded_by_the_volume(tmp_path, capsys):
    """Issue 12: --radius-mm 1e6 asked for exabytes; the search is bounded by the volume and finds the organs."""
    prior_path = tiny_prior().save(tmp_path / "fold_0.npz")
    lab = tiny_label()
    np.savez(tmp_path / "p.npz", probabilities=np.stack([(lab == c) * 0.9 + 0.05 for c in range(3)]))
    assert main(["--prior", str(prior_path), "--probabilities", str(tmp_path / "p.npz"),
                 "--radius-mm", "1e6"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["centres"] == {"1": [5.5, 5.0, 5.0], "2": [12.5, 10.0, 10.0]}
