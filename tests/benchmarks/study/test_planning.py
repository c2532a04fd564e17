"""Planning a study (nnunet_stipple.benchmarks.study.planning): runs, skips, bins study, stipple_run.json,
trainings, work order."""
from __future__ import annotations

from nnunet_stipple.benchmarks.study.methods import METHODS
from nnunet_stipple.benchmarks.study.planning import (SKIPPED_NOTHING_UNLABELED, SKIPPED_SAME, RunSpec, estimate,
                                                      plan_runs, run_config_for, trainings_per_fold, work_order)
from nnunet_stipple.benchmarks.study.partial_study import is_partial_method
from nnunet_stipple.benchmarks.study.profiles import PROFILES

STUDY_METHODS = [m for m in METHODS if not is_partial_method(m)]    # the partial-labels study runs apart


def test_plan_runs_trainers_folders_and_skips(tmp_path):
    specs = plan_runs([100, 10], STUDY_METHODS, [5], has_unlabeled=False)
    ids = {s.run_id: s for s in specs}
    assert set(ids) == {f"{a}/{m}" for a in (100, 10) for m in ("plain", "stipple_norelab", "plain_relabel", "stipple",
                                                                "mean_teacher", "ua_mt", "sassnet", "adversarial_confidence",
                                                                "flare22_rounds")}
    assert ids["10/plain"].trainer == "nnUNetTrainer_LabelProportion"
    assert ids["10/plain_relabel"].trainer == "nnUNetTrainer_PseudoLabel"
    assert ids["10/stipple_norelab"].trainer == "STIPPLETrainer"
    assert ids["10/stipple"].trainer == "STIPPLETrainer_PseudoLabel"
    assert ids["10/mean_teacher"].trainer == "nnUNetTrainer_MeanTeacher" and ids["10/ua_mt"].trainer == "nnUNetTrainer_UAMT"
    assert ids["100/plain_relabel"].skipped == SKIPPED_SAME and ids["100/plain_relabel"].same_as == "100/plain"
    assert ids["100/stipple"].skipped and ids["100/stipple"].same_as == "100/stipple_norelab"
    assert not ids["10/stipple"].skipped and not ids["100/plain"].skipped
    assert ids["10/stipple"].folder(tmp_path) == tmp_path / "runs" / "10" / "stipple"
    # semi-supervised methods at 100 % without imagesUnlabeled: nothing to learn from, nothing stands for them
    assert ids["10/sassnet"].trainer == "nnUNetTrainer_SASSNet"
    assert ids["10/adversarial_confidence"].trainer == "nnUNetTrainer_AdversarialConfidence"
    assert ids["10/flare22_rounds"].trainer == "nnUNetTrainer_FLARE22Rounds" and not ids["10/flare22_rounds"].skipped
    assert ids["100/flare22_rounds"].skipped == SKIPPED_SAME and ids["100/flare22_rounds"].same_as == "100/plain"
    for m in ("mean_teacher", "ua_mt", "sassnet", "adversarial_confidence"):
        assert ids[f"100/{m}"].skipped == SKIPPED_NOTHING_UNLABELED and ids[f"100/{m}"].same_as is None
        assert not ids[f"10/{m}"].skipped                   # alpha < 100 %: the hidden training cases are unlabeled
    # with imagesUnlabeled there is something to relabel, and unlabeled patches, at 100 %
    assert not any(s.skipped for s in plan_runs([100], ["plain_relabel", "stipple", "mean_teacher", "ua_mt"],
                                                  has_unlabeled=True))
    # a skipped semi-supervised run adds no other run
    assert [s.run_id for s in plan_runs([100], ["ua_mt"])] == ["100/ua_mt"]
    # the counterpart of a skipped run is added when not asked for
    only = {s.run_id: s for s in plan_runs([100], ["stipple"])}
    assert only["100/stipple_norelab"].added_for == "100/stipple" and only["100/stipple"].skipped


def test_plan_runs_bins_study():
    specs = plan_runs([70, 10], ["plain", "stipple_norelab", "stipple"], [1, 2, 5, 7, 10])
    ids = {s.run_id: s for s in specs}
    for a in ("70", "10"):
        for b in (1, 2, 7, 10):
            assert ids[f"{a}/stipple_norelab_B{b}"].bins == b
        assert ids[f"{a}/stipple_norelab"].bins == 5          # B = 5 keeps the unsuffixed folder
        assert ids[f"{a}/stipple"].bins == 5                  # stipple only in the bins study if asked
        assert ids[f"{a}/plain"].bins is None
    assert "70/stipple_B7" not in ids
    both = {s.run_id for s in plan_runs([10], ["stipple"], [1, 5], bins_methods=["stipple_norelab", "stipple"])}
    assert both == {"10/stipple", "10/stipple_B1"}
    assert {s.bins for s in plan_runs([10], ["stipple_norelab"], [7])} == {7}


def test_run_config_contents():
    prof = PROFILES["cpu-small"]
    spec = RunSpec(10.0, "stipple_norelab", 7, "STIPPLETrainer")
    assert run_config_for(spec, prof) == {"label_proportion": 0.1, "label_seed": 0, "num_epochs": 5,
                                             "num_iterations_per_epoch": 50, "num_val_iterations_per_epoch": 5,
                                             "num_bins": 7}
    plain = run_config_for(RunSpec(70.0, "plain", None, "nnUNetTrainer_LabelProportion"), PROFILES["paper"])
    assert plain == {"label_proportion": 0.7, "label_seed": 0, "num_epochs": 1000, "num_iterations_per_epoch": 250,
                     "num_val_iterations_per_epoch": 50}


def test_flare22_rounds_run_plan():
    """The FLARE22 recipe: plain nnU-Net's data and schedule, round policy 'agreement' in its stipple_run.json, round
    0 = the plain model, T = 3 relabeled rounds (its policy's, at every alpha)."""
    prof = PROFILES["cpu-small"]
    spec = next(s for s in plan_runs([10], ["flare22_rounds"]) if s.method == "flare22_rounds")
    assert spec.trainer == "nnUNetTrainer_FLARE22Rounds" and spec.relabels and not spec.uses_prior
    assert spec.relabel_counterpart().run_id == "10/plain"
    assert run_config_for(spec, prof) == {**run_config_for(RunSpec(10.0, "plain", None,
                                                                   "nnUNetTrainer_LabelProportion"), prof),
                                          "round_policy": "agreement"}
    assert trainings_per_fold(spec) == 1 + 3 and trainings_per_fold(spec, round0_reused=True) == 3
    # the other relabeling methods keep their stipple_run.json (no round_policy: the paper's schedule)
    assert "round_policy" not in run_config_for(RunSpec(10.0, "plain_relabel", None, "nnUNetTrainer_PseudoLabel"),
                                                prof)


def test_trainings_count():
    specs = plan_runs([100, 70, 10], STUDY_METHODS)
    # 100: plain, stipple_norelab (relabel and semi-supervised skipped); 70: 2 + 2 x (1 + 2 rounds) + 4
    # semi-supervised + flare22_rounds 1 + 3 (its policy's T at every alpha); 10: 2 + 2 x (1 + 1) + 4 + (1 + 3)
    assert sum(trainings_per_fold(s) for s in specs) == 2 + (2 + 6 + 4 + 4) + (2 + 4 + 4 + 4)
    # in a study the counterparts are trained too: their models are the relabeling runs' round 0
    est = estimate(specs, [0, 1], PROFILES["cpu-small"], "cpu",
                      {"patch_size": [32, 64, 64], "batch_size": 2, "median_image_size_in_voxels": [40, 90, 90]})
    assert est["trainings"] == 2 * (2 + (2 + 4 + 4 + 3) + (2 + 2 + 4 + 3)) and est["seconds"] > 0
    alone = [s for s in specs if s.run_id == "10/stipple"]
    assert estimate(alone, [0], PROFILES["cpu-small"], "cpu")["trainings"] == 2
    # the teacher's passes make an iteration of the semi-supervised methods dearer than plain nnU-Net's
    seconds = {m: estimate([s for s in specs if s.run_id == f"10/{m}"], [0], PROFILES["cpu-small"], "cpu",
                           {"patch_size": [32, 64, 64], "batch_size": 2})["seconds"]
               for m in ("plain", "mean_teacher", "ua_mt")}
    assert seconds["plain"] < seconds["mean_teacher"] < seconds["ua_mt"]


def test_work_order_priority_alphas_then_folds_then_table_rows():
    specs = plan_runs([100, 30, 10], STUDY_METHODS)
    order = [(s.run_id, f) for s, f in work_order(specs, [0, 1], alpha_priority=(10, 100))]
    rows = ["plain", "stipple_norelab", "plain_relabel", "stipple", "mean_teacher", "ua_mt", "sassnet",
            "adversarial_confidence", "flare22_rounds"]                 # Tables 2, then 3
    n = len(rows)
    assert order[:2 * n] == [(f"10/{m}", f) for f in (0, 1) for m in rows]
    assert order[2 * n:2 * n + 4] == [("100/plain", 0), ("100/stipple_norelab", 0), ("100/plain", 1),
                                      ("100/stipple_norelab", 1)]       # skipped runs are not trained
    assert [a for a, _ in order[2 * n + 4:]] == [f"30/{m}" for m in rows] * 2
    # no priority: decreasing alpha
    assert [s.alpha for s, _ in work_order(specs, [0])][0] == 100
