"""The study's report: every finished (run, fold) of a study folder (or of its record) aggregated into
``DIR/report/`` (results.json, results.csv, positioning.csv, table.md, PNG plots), and copied into the record."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from nnunet_stipple.atomic import write_json_atomic
from nnunet_stipple.benchmarks.provenance import git_commit, now, versions
from nnunet_stipple.benchmarks.record import export_files, export_report, export_run
from nnunet_stipple.benchmarks.study.methods import DEFAULT_BINS
from nnunet_stipple.benchmarks.study.metrics import (aggregate_folds, case_metric, find_dataset_json, fold_cases,
                                                     json_float, label_names, nan_if_none, nsd_cache_name,
                                                     paired_ttest, pancreas_key)
from nnunet_stipple.benchmarks.study.planning import RunSpec, main_bins, table_order
from nnunet_stipple.benchmarks.study.positioning_quality import collect_positioning, summarise_positioning
from nnunet_stipple.benchmarks.study.profiles import check_nsd_tolerance, study_nsd_tolerance
from nnunet_stipple.benchmarks.study.report_plots import write_plots
from nnunet_stipple.benchmarks.study.report_tables import (per_class_md, positioning_md, pseudo_labels_md, runs_md,
                                                           study_table_md, write_positioning_csv,
                                                           write_results_csv)
from nnunet_stipple.benchmarks.study.study_folder import REPORT_FOLDER, STUDY_FILE, load_study, model_folder, \
    read_run_json
from nnunet_stipple.errors import StippleInputError

CasesOf = Dict[str, Dict[int, List[dict]]]      # run id -> fold -> the fold's validation cases (see fold_cases)


def report_study(study_dir, nsd_tolerance_mm: Optional[float] = None, record_dir=None,
                 log: Callable[[str], None] = print,
                 recorded_runs: Optional[Mapping[str, Sequence[int]]] = None) -> dict:
    """(Re)aggregate every finished (run, fold) of a study into ``DIR/report/``.

    * ``results.json`` / ``results.csv``: per run, fold, case and class: Dice (nnU-Net's ``summary.json``) and
      NSD (MONAI ``compute_surface_dice``, tolerance ``nsd_tolerance_mm`` mm, image spacing from the files),
      with the runs' metadata (trainer, wall time, git commit, versions, machine);
    * aggregates per (alpha, method, B): mean over folds of each fold's mean (over cases) of the per-case mean
      foreground Dice / NSD, ± the sample std over folds (over cases when only one fold finished), and the
      same for the pancreas (a class whose name contains "pancreas") if any;
    * paired t-tests (``scipy.stats.ttest_rel`` over the validation cases of all folds, per alpha) of every
      method vs ``plain`` and of ``stipple`` vs ``plain_relabel``;
    * ``positioning.csv`` (run_id, fold, case, class_key, mode, dice): the prior runs' positioning quality per
      validation case and class (modes visual, naive, auto, ground_truth; see :func:`record_positioning`);
    * ``table.md`` (the paper's Table 2 layout, Dice per organ, positioning) and PNG plots.

    With ``record_dir`` the report, study.json and the runs' record files are copied there too, with the NSD
    this report computed. ``recorded_runs`` (run folder -> folds) names the runs whose record files the caller
    has just exported (:func:`run_study` does as each run finishes): of those only the NSD files are copied."""
    study_dir = Path(study_dir)
    study = load_study(study_dir)
    if study is None:
        raise StippleInputError(f"{study_dir / STUDY_FILE} not found: not a study folder (create one with "
                                f"`nnUNetv2_stipple_study run ... --study-dir {study_dir}`).")
    nsd_tolerance_mm = check_nsd_tolerance(study_nsd_tolerance(study) if nsd_tolerance_mm is None
                                           else nsd_tolerance_mm)
    dataset_json, gt_folder = find_dataset_json(study, study_dir)
    names = label_names(dataset_json)
    pancreas = pancreas_key(names)
    specs = [RunSpec.from_json(d) for d in study.get("runs", {}).values()]
    specs.sort(key=lambda s: table_order(s, main_bins(study.get("bins") or [DEFAULT_BINS])))
    run_folds = {d["run_id"] if "run_id" in d else RunSpec.from_json(d).run_id: d.get("folds", study["folds"])
                 for d in study.get("runs", {}).values()}

    runs_out, cases_of = [], {}
    for s in specs:
        entry = {**s.to_json(), "label": s.label}
        if s.skipped:
            runs_out.append(entry)
            continue
        folds = run_folds.get(s.run_id, study["folds"])
        by_fold = {}
        for f in folds:
            cs = fold_cases(study_dir, s, study, f, dataset_json, gt_folder, names, nsd_tolerance_mm, log)
            if cs is not None:
                by_fold[f] = cs
        cases_of[s.run_id] = by_fold
        entry.update(_run_metadata(read_run_json(s.folder(study_dir)), folds, by_fold))
        runs_out.append(entry)

    metrics = ["dice", "nsd"] + (["pancreas_dice", "pancreas_nsd"] if pancreas else [])
    aggregates = _aggregates(specs, cases_of, run_folds, study["folds"], metrics, pancreas, names)
    ttests = _paired_tests(specs, cases_of, metrics, pancreas, main_bins(study.get("bins", [5])))
    positioning_rows = collect_positioning(study_dir, specs, cases_of)
    positioning = summarise_positioning(positioning_rows, names)
    pseudo_labels = collect_pseudo_label_quality(study_dir, study, specs, cases_of, names)

    out_dir = study_dir / REPORT_FOLDER
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"study": {k: v for k, v in study.items() if k != "runs"}, "created": now(),
               "report_git_commit": git_commit(), "report_versions": versions(),
               "settings": {"nsd_tolerance_mm": nsd_tolerance_mm, "pancreas_key": pancreas, "classes": names,
                            "aggregation": "per fold: mean over validation cases of the per-case mean over "
                                           "foreground classes (NaN classes skipped); then mean ± sample std "
                                           "over folds (over cases when one fold)",
                            "ttest": "scipy.stats.ttest_rel over (fold, case) pairs, per alpha"},
               "runs": runs_out, "aggregates": aggregates, "ttests": ttests, "positioning": positioning,
               "pseudo_labels": pseudo_labels}
    write_json_atomic(out_dir / "results.json", results)
    write_results_csv(out_dir / "results.csv", runs_out)
    write_positioning_csv(out_dir / "positioning.csv", positioning_rows)
    table = study_table_md(study, aggregates, ttests, metrics, nsd_tolerance_mm,
                           names.get(pancreas) if pancreas else None)
    table += (per_class_md(aggregates, names, pancreas) + positioning_md(positioning)
              + pseudo_labels_md(pseudo_labels) + runs_md(runs_out))
    (out_dir / "table.md").write_text(table)
    plots = write_plots(out_dir, aggregates, names)
    n_fin = sum(len(r.get("folds_finished", [])) for r in runs_out)
    n_all = sum(len(r.get("folds_planned", [])) for r in runs_out if not r.get("skipped"))
    log(f"report: {n_fin}/{n_all} (run, fold) finished; {out_dir / 'table.md'}, results.json, results.csv, "
        f"positioning.csv ({len(positioning_rows)} rows), {len(plots)} plots")
    if record_dir is not None and Path(record_dir).resolve() != study_dir.resolve():
        written = _record_runs(study_dir, Path(record_dir), runs_out, nsd_tolerance_mm, recorded_runs or {})
        written += export_report(study_dir, Path(record_dir))
        log(f"report recorded in {record_dir} ({len(written)} files written)")
    return {"folder": str(out_dir), "finished": n_fin, "planned": n_all, "plots": [str(p) for p in plots],
            "table": table, "aggregates": aggregates, "ttests": ttests}


def _run_metadata(meta: dict, folds: Sequence[int], by_fold: Dict[int, List[dict]]) -> dict:
    """A finished run's entry in results.json besides its settings: folds, wall time per fold, the commit,
    versions and machine of its last attempt, its cases."""
    fmeta = meta.get("folds", {})
    last = {}
    for fm in fmeta.values():
        if fm.get("attempts"):
            last = fm["attempts"][-1]
    return {"folds_planned": folds, "folds_finished": sorted(by_fold),
            "wall_seconds": {f: fm.get("wall_seconds") for f, fm in fmeta.items()},
            "git_commit": last.get("git_commit"), "versions": last.get("versions"), "machine": last.get("machine"),
            "cases": [c for f in sorted(by_fold) for c in by_fold[f]]}


def _aggregates(specs: Sequence[RunSpec], cases_of: CasesOf, run_folds: Dict[str, List[int]],
                study_folds: List[int], metrics: List[str], pancreas: Optional[str],
                names: Dict[str, str]) -> List[dict]:
    """One row per run (table order): each metric aggregated over cases and folds, Dice and NSD per class."""
    aggregates = []
    for s in specs:
        base = {"alpha": s.alpha, "method": s.method, "bins": s.bins, "run_id": s.run_id, "label": s.label}
        if s.skipped:
            aggregates.append({**base, "skipped": s.skipped, "same_as": s.same_as})
            continue
        by_fold = cases_of.get(s.run_id, {})
        a = {**base, "folds_finished": sorted(by_fold), "folds_planned": run_folds.get(s.run_id, study_folds)}
        for m in metrics:
            agg = aggregate_folds(by_fold, m, pancreas)
            if by_fold and len(by_fold) < len(a["folds_planned"]):
                agg["incomplete"] = f"{len(by_fold)}/{len(a['folds_planned'])}"
            a[m] = agg
        per_class = {}
        for k, n in names.items():
            vals = [c["classes"][k] for cs in by_fold.values() for c in cs if k in c["classes"]]
            per_class[n] = {"dice": json_float(np.nanmean([nan_if_none(v["dice"]) for v in vals])) if vals and not all(
                                v["dice"] is None for v in vals) else None,
                            "nsd": json_float(np.nanmean([nan_if_none(v["nsd"]) for v in vals])) if vals and not all(
                                v["nsd"] is None for v in vals) else None}
        a["per_class"] = per_class
        aggregates.append(a)
    return aggregates


def _paired_tests(specs: Sequence[RunSpec], cases_of: CasesOf, metrics: List[str], pancreas: Optional[str],
                  main_b: int) -> List[dict]:
    """Per alpha: every run against ``plain`` (``partial_plain``), ``stipple`` (main B) against ``plain_relabel``
    and ``inerrant_prior`` against ``inerrant``, over the
    (fold, case) pairs both finished; skipped runs ("-" in the table) are not tested, their counterparts are."""
    def case_values(run_id: str, metric: str) -> Dict[Tuple[int, str], float]:
        return {(c["fold"], c["case"]): case_metric(c, metric, pancreas)
                for cs in cases_of.get(run_id, {}).values() for c in cs}

    ttests = []
    for alpha in sorted({s.alpha for s in specs}, reverse=True):
        at = [s for s in specs if s.alpha == alpha]
        # the baseline: plain nnU-Net (in a partial-labels study, with the missing organs as background)
        plain = next((s for s in at if s.method in ("plain", "partial_plain")), None)
        relab = next((s for s in at if s.method == "plain_relabel"), None)
        pairs = []
        if plain is not None:
            pairs += [(s, plain) for s in at if s.method != plain.method]
        stipple = next((s for s in at if s.method == "stipple" and s.bins == main_b), None)
        if stipple is not None and relab is not None:
            pairs.append((stipple, relab))
        inerrant = next((s for s in at if s.method == "inerrant"), None)     # what the prior adds to INERRANT0
        pairs += [(s, inerrant) for s in at if s.method == "inerrant_prior" and inerrant is not None]
        for a_spec, b_spec in pairs:
            if a_spec.skipped or b_spec.skipped:
                continue
            ra, rb = a_spec.run_id, b_spec.run_id
            for m in metrics:
                va, vb = case_values(ra, m), case_values(rb, m)
                if not va or not vb:
                    continue
                t = paired_ttest(va, vb)
                t.update({"alpha": alpha, "metric": m, "a": ra, "b": rb, "a_label": a_spec.label,
                          "b_label": b_spec.label})
                ttests.append(t)
    return ttests


def collect_pseudo_label_quality(study_dir: Path, study: dict, specs: Sequence[RunSpec], cases_of: CasesOf,
                                 names: Dict[str, str]) -> List[dict]:
    """Per relabeling run, finished fold and round: voxels added and their precision / recall against the hidden
    labels (pooled over classes and per class), from the loop's ``round_<t>/round_log.json``."""
    out = []
    for s in specs:
        if s.skipped or not s.relabels:
            continue
        mdir = model_folder(s.folder(study_dir), study["dataset"], s.trainer, study["plans"], study["configuration"])
        for f in sorted(cases_of.get(s.run_id, {})):
            for log_file in sorted((mdir / f"fold_{f}" / "pseudo_labeling").glob("round_*/round_log.json")):
                lg = json.loads(log_file.read_text())
                pooled = lg.get("quality_pooled") or {}
                out.append({"run_id": s.run_id, "fold": f, "round": lg["round"], "gamma": lg["gamma"],
                            "cases": lg["cases"], "voxels_added": lg["voxels_added"],
                            "precision": pooled.get("precision"), "recall": pooled.get("recall"),
                            "per_class": {names.get(k, k): {"precision": v.get("precision"),
                                                            "recall": v.get("recall"), "added": v.get("added")}
                                          for k, v in (lg.get("quality_per_class") or {}).items()}})
    return out


def _record_runs(study_dir: Path, record_dir: Path, runs_out: List[dict], nsd_tolerance_mm: float,
                 recorded_runs: Mapping[str, Sequence[int]]) -> List[str]:
    """The finished runs' record files into the record folder: of a run the caller recorded with all its finished
    folds only the NSD files this report may have written (nothing else in its folder changed since), of the
    others every record file (see :func:`nnunet_stipple.benchmarks.record.export_run`)."""
    written = []
    for r in runs_out:
        if r.get("skipped") or not r.get("folds_finished"):
            continue
        run_folder = RunSpec.from_json(r).relative_folder
        if set(r["folds_finished"]) <= set(recorded_runs.get(run_folder, ())):
            nsd_files = [f"{run_folder}/{nsd_cache_name(f, nsd_tolerance_mm)}" for f in r["folds_finished"]]
            written += export_files(study_dir, record_dir, nsd_files)
        else:
            written += export_run(study_dir, record_dir, run_folder, r["folds_finished"])
    return written
