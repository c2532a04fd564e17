"""The label-efficiency study of the STIPPLE paper (section 4: Table 2 ablation, Figure 6 bins study) with nnU-Net.

One study lives in one folder ``DIR``:

* ``DIR/study.json``: dataset, configuration, plans, profile (and what it reduces compared with the paper's
  protocol), folds, label proportions, methods, bins, device, machine, versions, the planned runs;
* ``DIR/runs/<alpha>/<method>[_B<b>]/``: one ``nnUNet_results`` root per run (so runs never collide), holding
  ``<Dataset>/<Trainer>__<plans>__<configuration>/stipple_run.json`` (label proportion, seed, bins, schedule),
  nnU-Net's usual model folder, ``train_fold<f>.log`` (the training's stdout/stderr), ``run.json`` (the run's
  settings, wall time per fold and attempt, machine) and ``nsd_fold<f>_tol<t>mm.json`` (cached NSD per case);
* ``DIR/report/``: ``results.json``, ``results.csv``, ``table.md`` and PNG plots (see :func:`report_study`);
* ``DIR/cost.json``: the cost benchmark of :mod:`nnunet_stipple.benchmarks.cost` (``cost`` subcommand).

A run is finished when nnU-Net's ``fold_<f>/validation/summary.json`` exists; finished runs are skipped, an
interrupted one resumes through ``nnUNetv2_train --c``. Rerunning the same command continues a study.

The steps talk to each other only through these files, one module each:

==========================  =====================================================================================
module                      what
==========================  =====================================================================================
``methods``                 the methods (rows of Table 2) and their trainers, one :class:`Method` entry each
``profiles``                training budgets (:class:`Profile`) and what a study reduces compared with the paper
``planning``                the runs (:class:`RunSpec`), their order, ``stipple_run.json``, time estimates
``profile_plans``           the nnU-Net plans a profile trains with (coarse or reduced plans made if missing)
``running``                 :func:`run_study`, :func:`run_one` (training, round 0 reuse, record), :func:`run_cost`
``positioning_quality``     the prior runs' positioning quality: measured per fold, summarised for the report
``metrics``                 Dice and NSD per case, aggregation over folds, paired tests
``report``                  :func:`report_study`; its tables (``report_tables``) and plots (``report_plots``)
``study_folder``            the folder's file names, study.json and run.json
``dataset``                 the nnU-Net dataset (name, id, raw folder, unlabeled images)
``nnunet_commands``         nnU-Net's console commands: training command and environment, logged planning
==========================  =====================================================================================

Versions, git commit and machine come from :mod:`nnunet_stipple.benchmarks.provenance`.
"""
from nnunet_stipple.benchmarks.provenance import git_commit, machine, versions
from nnunet_stipple.benchmarks.study.dataset import dataset_id, has_unlabeled_images, raw_dataset_folder, \
    resolve_dataset
from nnunet_stipple.benchmarks.study.methods import DEFAULT_BINS, DEFAULT_METHODS, METHOD_ORDER, METHOD_TABLE, \
    METHODS, Method, method
from nnunet_stipple.benchmarks.study.metrics import case_nsd, paired_ttest, pancreas_key, read_segmentation, \
    surface_dice
from nnunet_stipple.benchmarks.study.nnunet_commands import Runner, console_script, ext_trainer_folder, \
    subprocess_runner, train_command, train_env
from nnunet_stipple.benchmarks.study.planning import SKIPPED_SAME, RunSpec, alpha_str, check_alphas, check_bins, \
    check_folds, check_methods, estimate, format_duration, main_bins, plan_runs, run_config_for, \
    trainings_per_fold, work_order
from nnunet_stipple.benchmarks.study.positioning_quality import POSITIONING_MODES, collect_positioning, \
    record_positioning, summarise_positioning
from nnunet_stipple.benchmarks.study.profile_plans import coarse_target_spacing, dataset_fullres_spacing, \
    ensure_cpu_small_plans, ensure_profile_plans
from nnunet_stipple.benchmarks.study.profiles import CPU_2D_PLANS, CPU_SMALL_PLANS, DEFAULT_NSD_TOLERANCE_MM, \
    NNUNET_SCHEDULE, PAPER_ALPHAS, PAPER_FOLDS, PAPER_PROFILE_NOTE, PROFILES, Profile, check_nsd_tolerance, \
    check_profile, reductions, scaled_profile, study_nsd_tolerance
from nnunet_stipple.benchmarks.study.report import collect_pseudo_label_quality, report_study
from nnunet_stipple.benchmarks.study.running import round0_model_folder, run_cost, run_one, run_study
from nnunet_stipple.benchmarks.study.study_folder import COST_FILE, REPORT_FOLDER, RUN_FILE, RUNS_FOLDER, \
    STUDY_FILE, check_same_study, fold_finished, load_study, merge_studies, model_folder

__all__ = [
    # methods and profiles
    "Method", "METHOD_TABLE", "METHODS", "DEFAULT_METHODS", "METHOD_ORDER", "method", "DEFAULT_BINS",
    "Profile", "PROFILES", "PAPER_ALPHAS", "PAPER_FOLDS", "NNUNET_SCHEDULE", "CPU_SMALL_PLANS", "CPU_2D_PLANS",
    "DEFAULT_NSD_TOLERANCE_MM", "PAPER_PROFILE_NOTE", "check_profile", "scaled_profile", "check_nsd_tolerance",
    "study_nsd_tolerance", "reductions",
    # planning
    "RunSpec", "SKIPPED_SAME", "alpha_str", "check_alphas", "check_bins", "check_folds", "check_methods",
    "main_bins", "plan_runs", "work_order", "run_config_for", "trainings_per_fold", "estimate", "format_duration",
    # the study folder, the dataset, nnU-Net's commands and plans
    "STUDY_FILE", "RUN_FILE", "RUNS_FOLDER", "REPORT_FOLDER", "COST_FILE", "load_study", "merge_studies",
    "check_same_study", "model_folder", "fold_finished", "resolve_dataset", "dataset_id", "raw_dataset_folder",
    "has_unlabeled_images", "Runner", "console_script", "ext_trainer_folder", "subprocess_runner", "train_command",
    "train_env", "coarse_target_spacing", "dataset_fullres_spacing", "ensure_cpu_small_plans",
    "ensure_profile_plans",
    # running
    "run_study", "run_one", "round0_model_folder", "run_cost", "record_positioning", "POSITIONING_MODES",
    # metrics and report
    "surface_dice", "read_segmentation", "case_nsd", "pancreas_key", "paired_ttest", "report_study",
    "collect_positioning", "summarise_positioning", "collect_pseudo_label_quality",
    # provenance
    "versions", "git_commit", "machine",
]
