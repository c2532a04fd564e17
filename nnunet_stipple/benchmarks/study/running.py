"""Running a study: its plans made where the profile has its own, study.json written, every unfinished
(run, fold) trained by ``nnUNetv2_train`` in its own ``nnUNet_results`` root (``run.json`` records each attempt),
a relabeling run's round 0 taken from its finished counterpart, the prior runs' positioning quality measured, the
record kept as runs finish, and the report written at the end."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from nnunet_stipple.atomic import write_json_atomic
from nnunet_stipple.benchmarks.provenance import git_commit, machine, now, versions
from nnunet_stipple.benchmarks.record import export_files, export_run, import_record
from nnunet_stipple.benchmarks.study.dataset import has_unlabeled_images, resolve_dataset
from nnunet_stipple.benchmarks.study.methods import DEFAULT_BINS, DEFAULT_METHODS, METHODS
from nnunet_stipple.benchmarks.study.nnunet_commands import (Runner, last_error_line, subprocess_runner,
                                                             train_command, train_env)
from nnunet_stipple.benchmarks.study.partial_study import (PARTIAL_METHODS, PARTIAL_STUDY_KEY, PartialStudy,
                                                           Preprocessor, check_partial_methods, check_partial_remove,
                                                           check_same_partial, nnunet_preprocess)
from nnunet_stipple.benchmarks.study.planning import (RunSpec, alpha_str, check_alphas, check_bins, check_folds,
                                                      check_methods, estimate, format_duration, plan_runs,
                                                      run_config_for, work_order)
from nnunet_stipple.benchmarks.study.positioning_quality import record_positioning
from nnunet_stipple.benchmarks.study.profile_plans import ensure_cpu_small_plans, ensure_profile_plans, \
    plans_summary
from nnunet_stipple.benchmarks.study.profiles import PAPER_PROFILE_NOTE, Profile, check_nsd_tolerance, \
    check_profile, reductions, scaled_profile
from nnunet_stipple.benchmarks.study.report import report_study
from nnunet_stipple.benchmarks.study.study_folder import COST_FILE, RUN_FILE, STUDY_FILE, check_same_study, \
    fold_finished, load_study, merge_studies, model_folder, read_run_json
from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.run_config import RUN_CONFIG_FILE

LABEL_SEED = 0      # the study's seed of the labeled cases (and of the cases losing organs in a partial study)


def round0_model_folder(spec: RunSpec, fold: int, study_dir: Path, dataset_name: str, plans: str,
                        configuration: str) -> Optional[Path]:
    """For a relabeling run whose loop has not started: the model folder of its counterpart without relabeling
    when that fold's model exists here (its round 0: same data, seed and settings), else None."""
    counterpart = spec.relabel_counterpart()
    if counterpart is None:
        return None
    mdir = model_folder(spec.folder(study_dir), dataset_name, spec.trainer, plans, configuration)
    if (mdir / f"fold_{fold}" / "pseudo_labeling" / "state.json").is_file():
        return None
    odir = model_folder(counterpart.folder(study_dir), dataset_name, counterpart.trainer, plans, configuration)
    return odir if (odir / f"fold_{fold}" / "checkpoint_final.pth").is_file() and fold_finished(odir, fold) else None


def run_one(spec: RunSpec, fold: int, study_dir: Path, dataset_name: str, configuration: str, plans: str,
            profile: Profile, device: str, runner: Runner = subprocess_runner,
            log: Callable[[str], None] = print, data_env: Optional[Mapping[str, str]] = None) -> str:
    """Train one (run, fold) unless finished. Returns 'finished', 'done' (trained now) or 'failed'.
    ``data_env``: nnUNet_raw / nnUNet_preprocessed of the training where they are not the user's (the
    partial-labels simulation's derived data, :mod:`~nnunet_stipple.benchmarks.study.partial_study`)."""
    root = spec.folder(study_dir)
    mdir = model_folder(root, dataset_name, spec.trainer, plans, configuration)
    run_file = root / RUN_FILE
    meta = read_run_json(root)
    meta.update({**spec.to_json(), "dataset": dataset_name, "configuration": configuration, "plans": plans,
                 "profile": profile.name, "model_folder": str(mdir.relative_to(root))})
    meta.setdefault("folds", {})
    fmeta = meta["folds"].setdefault(str(fold), {"attempts": [], "wall_seconds": 0.0})
    if fold_finished(mdir, fold):
        fmeta["status"] = "finished"
        write_json_atomic(run_file, meta)
        return "finished"
    rc_dict = run_config_for(spec, profile)
    round0 = round0_model_folder(spec, fold, study_dir, dataset_name, plans, configuration)
    if round0 is not None:
        rc_dict["round0_model_folder"] = os.path.relpath(round0, mdir)
        log(f"[{spec.run_id} fold {fold}] round 0 = the finished {spec.relabel_counterpart().method} model "
            f"({round0}), not trained again")
    rc_file = mdir / RUN_CONFIG_FILE
    if not rc_file.is_file() or json.loads(rc_file.read_text()) != rc_dict:
        write_json_atomic(rc_file, rc_dict)
    cmd = train_command(dataset_name, configuration, fold, spec.trainer, plans, device)
    env = train_env(root)
    env.update(data_env or {})
    log_file = root / f"train_fold{fold}.log"
    attempt = {"started": now(), "command": cmd, "log": log_file.name, "git_commit": git_commit(),
               "versions": versions(), "machine": machine(device)}
    if data_env:
        attempt["data"] = {k: os.path.relpath(v, Path(study_dir).resolve()) for k, v in data_env.items()}
    fmeta["status"] = "running"
    fmeta["attempts"].append(attempt)
    write_json_atomic(run_file, meta)
    log(f"[{spec.run_id} fold {fold}] {' '.join(cmd)}  (nnUNet_results={root}"
        + "".join(f"; {k}={v}" for k, v in (data_env or {}).items()) + f"; log {log_file})")
    t0 = time.perf_counter()
    try:
        rc = runner(cmd, env, log_file)
    except KeyboardInterrupt:
        attempt.update({"ended": now(), "wall_seconds": time.perf_counter() - t0, "returncode": "interrupted"})
        fmeta["wall_seconds"] += attempt["wall_seconds"]
        fmeta["status"] = "interrupted"
        write_json_atomic(run_file, meta)
        raise
    wall = time.perf_counter() - t0
    attempt.update({"ended": now(), "wall_seconds": wall, "returncode": rc})
    fmeta["wall_seconds"] += wall
    ok = rc == 0 and fold_finished(mdir, fold)
    fmeta["status"] = "finished" if ok else "failed"
    if not ok:
        attempt["error"] = last_error_line(log_file)
    write_json_atomic(run_file, meta)
    log(f"[{spec.run_id} fold {fold}] "
        + ("finished" if ok else f"FAILED (exit {rc}): {attempt['error'] or '(no error line)'}; see {log_file}")
        + f" after {format_duration(wall)}")
    return "done" if ok else "failed"


def run_study(dataset, configuration: str, study_dir, profile: str = "cpu-small",
              folds: Optional[Sequence[int]] = None, alphas: Optional[Sequence[float]] = None,
              methods: Optional[Sequence[str]] = None, bins: Optional[Sequence[int]] = None,
              bins_methods: Sequence[str] = ("stipple_norelab",), plans: Optional[str] = None,
              device: Optional[str] = None, dry_run: bool = False, report: bool = True,
              nsd_tolerance_mm: Optional[float] = None, runner: Runner = subprocess_runner,
              schedule_scale: float = 1, record_dir=None, partial_remove: Optional[Sequence[str]] = None,
              preprocessor: Optional[Preprocessor] = None, log: Callable[[str], None] = print) -> dict:
    """Plan, (for cpu-small) plan/preprocess the coarse plans, train every unfinished run, then report.

    With ``record_dir`` (e.g. docs/results/<study>): the record's runs are imported first (finished there =
    finished here, see :mod:`nnunet_stipple.benchmarks.record`), and every run's record files are exported to
    it as soon as the run finishes (with its positioning rows), the report at the end.

    ``schedule_scale`` multiplies the profile's number of epochs (e.g. 2: the check that a longer schedule
    changes little); a study folder holds one schedule. Returns a dict with the planned runs, the estimate
    and the status of each (run, fold).

    ``partial_remove`` (class names of dataset.json): the partial-labels simulation of the thesis (see
    :mod:`~nnunet_stipple.benchmarks.study.partial_study`; alpha is then the proportion of training cases that
    keep every organ, the methods are ``partial_plain``, ``partial_ignore``, ``inerrant``, ``inerrant_prior``
    and the default); ``preprocessor`` replaces nnU-Net's preprocessing of its derived data (tests)."""
    prof = scaled_profile(check_profile(profile), schedule_scale)
    partial_remove = list(partial_remove) if partial_remove else None
    if methods is None:
        methods = list(PARTIAL_METHODS) if partial_remove else list(DEFAULT_METHODS)
    methods = check_methods(methods)
    check_partial_methods(methods, partial_remove is not None)
    alphas = check_alphas(alphas if alphas is not None else prof.alphas)
    bins = check_bins(bins if bins is not None else [prof.bins])
    folds = check_folds(folds if folds is not None else prof.folds)
    bins_methods = check_methods(bins_methods)
    device = device or prof.device
    if device not in ("cpu", "cuda"):
        raise StippleInputError(f"Unknown device {device!r}; use cpu or cuda.")
    nsd_tolerance_mm = check_nsd_tolerance(prof.nsd_tolerance_mm if nsd_tolerance_mm is None else nsd_tolerance_mm)
    study_dir = Path(study_dir)
    plans = plans or prof.plans
    dataset_name = resolve_dataset(dataset)
    if partial_remove is not None:
        partial_remove = check_partial_remove(partial_remove, dataset_name)
    recorded = load_study(Path(record_dir)) if record_dir is not None else None
    if recorded is not None:
        check_same_study(recorded, dataset_name, configuration, plans, prof.name, Path(record_dir), schedule_scale)
        check_same_partial(recorded, partial_remove, Path(record_dir) / STUDY_FILE)
    existing = load_study(study_dir)
    if existing is not None:
        check_same_study(existing, dataset_name, configuration, plans, prof.name, study_dir, schedule_scale)
        check_same_partial(existing, partial_remove, study_dir / STUDY_FILE)
    if recorded is not None and not dry_run:
        import_record(Path(record_dir), study_dir, log)
        existing = merge_studies(existing, recorded)

    check_configuration(dataset_name, configuration)
    ds, planning = _open_profile_plans(prof, dataset_name, configuration, plans, study_dir,
                                       (existing or {}).get("planning"), dry_run, log)
    unlabeled = has_unlabeled_images(dataset_name)
    specs = plan_runs(alphas, methods, bins, unlabeled, bins_methods)
    case_counts = fold_case_counts(ds, folds)
    partial = None
    if partial_remove is not None:      # every training case is labeled (some partially): no count to check
        from nnunet_stipple.nnunet_folders import training_cases_of_fold
        partial = PartialStudy(study_dir, dataset_name, configuration, plans, partial_remove, LABEL_SEED,
                               preprocessor or nnunet_preprocess,
                               {f: training_cases_of_fold(ds, f) for f in folds} if ds is not None else {})
    else:
        check_labeled_counts(alphas, case_counts)
    n_tr, n_val = case_counts.get(folds[0], (None, None))
    plans_config = ds.plans["configurations"][configuration] if ds is not None else None
    cost = json.loads((study_dir / COST_FILE).read_text()) if (study_dir / COST_FILE).is_file() else None
    est = estimate(specs, folds, prof, device, plans_config, cost, n_tr, n_val)

    # study.json (first run creates it; later runs extend alphas / methods / bins / folds)
    study = existing or {"dataset": dataset_name, "configuration": configuration, "plans": plans,
                         "profile": prof.name, "created": now(), "git_commit": git_commit(),
                         "versions": versions(), "machine": machine(device),
                         "nnUNet_preprocessed": os.environ.get("nnUNet_preprocessed"),
                         "nnUNet_raw": os.environ.get("nnUNet_raw")}
    study["profile_description"] = prof.description
    study["paper_protocol_note"] = PAPER_PROFILE_NOTE
    study["schedule"] = prof.schedule
    study["schedule_scale"] = schedule_scale
    study["nsd_tolerance_mm"] = nsd_tolerance_mm
    study["label_seed"] = LABEL_SEED
    study["folds"] = sorted(set(study.get("folds", [])) | set(folds))
    study["alphas"] = sorted(set(study.get("alphas", [])) | set(alphas), reverse=True)
    study["methods"] = [m for m in METHODS if m in set(study.get("methods", [])) | set(methods)]
    study["bins"] = list(dict.fromkeys(list(study.get("bins", [])) + list(bins)))
    study["bins_methods"] = list(dict.fromkeys(list(study.get("bins_methods", [])) + list(bins_methods)))
    study["device"] = device
    study["has_imagesUnlabeled"] = unlabeled
    if partial is not None and partial.folds:
        entry = partial.study_entry(alphas, folds)
        previous = (study.get(PARTIAL_STUDY_KEY) or {}).get("losing_cases", {})
        for a, by_fold in previous.items():
            entry["losing_cases"][a] = {**by_fold, **entry["losing_cases"].get(a, {})}
        study[PARTIAL_STUDY_KEY] = entry
    if planning:
        study["planning"] = planning
    plans_info = plans_summary(dataset_name, configuration, plans) if ds is not None else {}
    study["reduced_vs_paper"] = reductions(prof, study["folds"], study["alphas"], plans, planning, plans_info)
    runs = study.get("runs", {})
    for s in specs:
        entry = runs.setdefault(s.run_id, s.to_json())
        entry["folds"] = sorted(set(entry.get("folds", [])) | set(folds))
    study["runs"] = runs
    study["last_invocation"] = {"time": now(), "argv": sys.argv, "device": device}

    log(f"Study {study_dir}: {dataset_name} {configuration} -p {plans}, profile {prof.name} ({prof.description})")
    if partial is not None:
        log(f"  partial labels: {', '.join(partial_remove)} removed from 100 - alpha % of each fold's training "
            f"cases (seed {LABEL_SEED}); alpha = the % of training cases that keep every organ; validation cases "
            f"keep every organ")
    log(f"  folds {folds}, alphas {[alpha_str(a) for a in alphas]} %, methods {methods}, bins {bins}"
        + ("" if unlabeled else "; no imagesUnlabeled: relabel methods at 100 % are skipped (same as without "
                                "relabeling), semi-supervised ones too (nothing unlabeled)"))
    log(f"  {est['runs']} runs x folds, {est['trainings']} nnU-Net trainings "
        f"(relabel methods train T models after the round 0 of their counterpart, 1 + T alone)"
        + (f"; rough time estimate {format_duration(est['seconds'])} on {device} "
           f"({est['seconds_per_iteration_source']}: {est['seconds_per_iteration']['plain']:.2f} s/iteration, "
           f"patch {est['patch_size']}, batch {est['batch_size']})" if "seconds" in est else ""))
    result = {"study_dir": str(study_dir), "runs": [s.to_json() for s in specs], "estimate": est, "status": {}}
    if partial is not None and dry_run:
        for a in alphas:
            for variant in dict.fromkeys(PARTIAL_METHODS[m] for m in methods):
                for f in folds:
                    log("  " + (partial.describe(a, variant, f) if f in partial.folds else
                                f"partial data of {alpha_str(a)} % / {variant} / fold {f}: derived and "
                                f"preprocessed once the source's plans and splits exist"))
    for s in specs:
        root = s.folder(study_dir)
        mdir = model_folder(root, dataset_name, s.trainer, plans, configuration)
        if s.skipped:
            log(f"  {s.run_id:28s} skipped: {s.skipped}" + (f" (= {s.same_as})" if s.same_as else ""))
            continue
        for f in folds:
            state = "finished" if fold_finished(mdir, f) else "to do"
            if dry_run:
                log(f"  {s.run_id:28s} fold {f}: {state:8s} {s.trainer}  stipple_run.json "
                    f"{json.dumps(run_config_for(s, prof))}")
                cmd = train_command(dataset_name, configuration, f, s.trainer, plans, device)
                data = ("".join(f" {k}={v}" for k, v in partial.roots(s.alpha, PARTIAL_METHODS[s.method], f).items())
                        if partial is not None else "")
                log(f"      nnUNet_results={root}{data} {' '.join(cmd)}")
            result["status"][f"{s.run_id}/fold_{f}"] = state
    if dry_run:
        log("(dry run: nothing written, nothing trained)")
        return result

    study_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(study_dir / STUDY_FILE, study)
    status, failed, recorded_runs = _train_runs(specs, folds, study_dir, dataset_name, configuration, plans, prof,
                                                device, runner, record_dir, log, partial)
    result["status"].update(status)
    result["failed"] = failed
    if report:
        result["report"] = report_study(study_dir, nsd_tolerance_mm=nsd_tolerance_mm, record_dir=record_dir,
                                        log=log, recorded_runs=recorded_runs)
    return result


def _open_profile_plans(prof: Profile, dataset_name: str, configuration: str, plans: str, study_dir: Path,
                        planning: Optional[dict], dry_run: bool, log: Callable[[str], None]):
    """The preprocessed dataset of the plans the profile trains with (None in a dry run before they exist) and
    study.json's record of their planning, made first where the profile has plans of its own."""
    from nnunet_stipple.nnunet_folders import open_preprocessed
    if prof.reduction is None and not prof.coarse_spacing:
        return open_preprocessed(dataset_name, configuration, plans), planning
    if dry_run:
        try:
            return open_preprocessed(dataset_name, configuration, plans), planning
        except StippleInputError:
            if prof.reduction is not None:
                log(f"(dry run) would derive {plans} from nnUNetPlans ({prof.reduction}) and preprocess "
                    f"{configuration} if needed")
            else:
                log(f"(dry run) would plan {plans} with a coarse target spacing and preprocess {configuration}")
            return None, planning
    if prof.reduction is not None:
        planning = ensure_profile_plans(dataset_name, configuration, plans, prof.reduction, study_dir, log)
    else:
        previous = planning or {}
        planning = ensure_cpu_small_plans(dataset_name, configuration, plans, study_dir, log)
        if not planning["commands"] and previous.get("commands"):   # planned by an earlier invocation
            planning["commands"] = previous["commands"]
    return open_preprocessed(dataset_name, configuration, plans), planning


def check_configuration(dataset_name: str, configuration: str) -> None:
    """The configuration exists in nnU-Net's plans of the dataset (checked in a dry run too; the profiles derive
    their plans from nnUNetPlans and keep its configuration names)."""
    from nnunet_stipple.nnunet_folders import nnunet_preprocessed_root
    plans_file = nnunet_preprocessed_root() / dataset_name / "nnUNetPlans.json"
    known = (list(json.loads(plans_file.read_text())["configurations"]) if plans_file.is_file()
             else ["2d", "3d_fullres", "3d_lowres"])
    supported = [c for c in known if "cascade" not in c]
    if configuration not in supported:
        where = f"in {plans_file}" if plans_file.is_file() else "of nnU-Net"
        raise StippleInputError(f"Configuration {configuration!r} is not one of the configurations {where} that "
                                f"STIPPLE trains ({', '.join(supported)}); choose one with -c.")


def fold_case_counts(ds, folds: Sequence[int]) -> Dict[int, Tuple[int, int]]:
    """(training, validation) case counts of every fold, each fold's split read once; {} without a preprocessed
    dataset. A fold missing from the splits is refused naming the folds asked for."""
    from nnunet_stipple.nnunet_folders import training_cases_of_fold
    if ds is None:
        return {}
    counts = {}
    for f in folds:
        try:
            tr, val = training_cases_of_fold(ds, f)
        except StippleInputError as e:
            raise StippleInputError(f"{e} (asked --folds {' '.join(map(str, folds))})") from e
        counts[f] = (len(tr), len(val))
    return counts


def check_labeled_counts(alphas: Sequence[float], case_counts: Mapping[int, Tuple[int, int]]) -> None:
    """Every proportion leaves at least one labeled case in every fold (``case_counts``: fold -> (training,
    validation) cases; --alphas takes percentages: 0.1 is 0.1 %, not 10 %), checked before the first training
    instead of at it."""
    from nnunet_stipple.pseudo_labeling.label_proportions import labeled_count
    for f, (n, _) in case_counts.items():
        for a in alphas:
            if labeled_count(n, a / 100) == 0:
                smallest = 100 * 0.5 / n
                raise StippleInputError(
                    f"--alphas {alpha_str(a)} (percent) leaves 0 of the {n} training cases of fold {f} labeled; "
                    f"the smallest proportion with one labeled case is {smallest:g} %."
                    + (f" Did you mean {alpha_str(a * 100)} (percent)?" if a <= 1 else ""))


def _train_runs(specs: Sequence[RunSpec], folds: Sequence[int], study_dir: Path, dataset_name: str,
                configuration: str, plans: str, prof: Profile, device: str, runner: Runner, record_dir,
                log: Callable[[str], None], partial: Optional[PartialStudy] = None
                ) -> Tuple[Dict[str, str], List[str], Dict[str, List[int]]]:
    """Every (run, fold) in work order: trained unless finished (in a partial-labels study on its derived data,
    derived and preprocessed first unless done), its positioning quality measured, its run's record files
    exported. Returns the status of each (run, fold), the failed ones and the recorded runs (run folder -> its
    finished folds, as exported)."""
    status, failed, recorded_runs = {}, [], {}
    for s, f in work_order(specs, folds, prof.alpha_priority):
        data_env = None
        mdir = model_folder(s.folder(study_dir), dataset_name, s.trainer, plans, configuration)
        if partial is not None and not fold_finished(mdir, f):
            try:
                data_env = partial.prepare(s.alpha, PARTIAL_METHODS[s.method], f, log)
            except StippleInputError as e:
                log(f"[{s.run_id} fold {f}] partial data FAILED: {e}; rerun the same command to retry")
                status[f"{s.run_id}/fold_{f}"] = "failed"
                failed.append(f"{s.run_id}/fold_{f}")
                continue
        st = run_one(s, f, study_dir, dataset_name, configuration, plans, prof, device, runner, log, data_env)
        status[f"{s.run_id}/fold_{f}"] = st
        if st == "failed":
            failed.append(f"{s.run_id}/fold_{f}")
            recorded_runs.pop(s.relative_folder, None)    # its run.json changed since: the report records it again
            continue
        try:
            record_positioning(s, f, study_dir, dataset_name, plans, configuration, device, log)
        except Exception as e:  # noqa: BLE001 - a failed measurement must not stop the remaining trainings
            log(f"[{s.run_id} fold {f}] positioning quality FAILED ({type(e).__name__}: {e}); the next run of "
                f"the study retries it while the model exists")
        if record_dir is not None:
            mdir = model_folder(s.folder(study_dir), dataset_name, s.trainer, plans, configuration)
            done = [g for g in folds if fold_finished(mdir, g)]
            written = export_run(study_dir, Path(record_dir), s.relative_folder, done)
            export_files(study_dir, Path(record_dir), [STUDY_FILE])
            recorded_runs[s.relative_folder] = done
            log(f"[{s.run_id} fold {f}] record: {len(written)} files written to {record_dir}")
    return status, failed, recorded_runs


def run_cost(dataset, configuration: str, study_dir, plans: Optional[str] = None, fold: int = 0,
             device: str = "cpu", iterations: int = 5, warmup: int = 2, repeats: int = 2, num_cases: int = 2,
             mirroring: bool = True, num_bins: int = DEFAULT_BINS, log: Callable[[str], None] = print) -> dict:
    """Run :func:`nnunet_stipple.benchmarks.cost.run_cost_benchmark` and store its JSON as ``DIR/cost.json``
    (used by ``run`` for its time estimate)."""
    from nnunet_stipple.benchmarks.cost import format_summary, run_cost_benchmark
    from nnunet_stipple.nnunet_folders import open_preprocessed
    study_dir = Path(study_dir)
    dataset_name = resolve_dataset(dataset)
    existing = load_study(study_dir)
    if existing is not None:
        plans = plans or existing["plans"]
        check_same_study(existing, dataset_name, configuration, plans, existing["profile"], study_dir)
    plans = plans or "nnUNetPlans"
    open_preprocessed(dataset_name, configuration, plans)
    res = run_cost_benchmark(dataset_name, configuration, fold, device, plans, iterations, warmup, repeats,
                             num_cases, mirroring, num_bins, log=log)
    res["created"] = now()
    res["versions"] = versions()
    study_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(study_dir / COST_FILE, res)
    log(format_summary(res))
    log(f"written: {study_dir / COST_FILE}")
    return res
