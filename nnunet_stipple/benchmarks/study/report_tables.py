"""The report's tables: ``table.md`` (the paper's Table 2 layout per metric, paired tests, Dice per organ,
positioning of the prior, pseudo-labels, runs) and the CSV files ``results.csv`` and ``positioning.csv``."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Optional

from nnunet_stipple.benchmarks.study.planning import SKIPPED_SAME, alpha_str, format_duration
from nnunet_stipple.benchmarks.study.positioning_quality import POSITIONING_MODES


def format_cell(agg: Optional[dict], bold: bool, scale: float = 100.0) -> str:
    if agg is None or agg.get("mean") is None:
        return "n/a"
    m = f"{agg['mean'] * scale:.2f}"
    m = f"**{m}**" if bold else m
    s = "n/a" if agg.get("std") is None else f"{agg['std'] * scale:.2f}"
    cell = f"{m} (± {s})"
    if agg.get("incomplete"):
        cell += f" [{agg['incomplete']} folds]"
    return cell


def format_p_value(p: Optional[float]) -> str:
    if p is None:
        return "n/a"
    return f"{p:.3g}" if p >= 1e-3 else f"{p:.2e}"


def study_table_md(study: dict, aggregates: List[dict], ttests: List[dict], metrics: List[str], tol: float,
                   pancreas_name: Optional[str]) -> str:
    """The head of table.md: what the study reduces, one table per metric in the paper's Table 2 layout (rows:
    methods, columns: alpha) and the paired tests."""
    alphas = sorted({a["alpha"] for a in aggregates}, reverse=True)
    rows = list(dict.fromkeys((a["method"], a["bins"], a["label"]) for a in aggregates))
    by = {(a["method"], a["bins"], a["alpha"]): a for a in aggregates}
    titles = {"dice": "Dice (DSC, %), mean over foreground classes",
              "nsd": f"NSD (%, tolerance {tol:g} mm), mean over foreground classes",
              "pancreas_dice": f"Dice (DSC, %), {pancreas_name}",
              "pancreas_nsd": f"NSD (%, {tol:g} mm), {pancreas_name}"}
    lines = [f"# Label-efficiency study: {study['dataset']}, {study['configuration']}, plans {study['plans']}, "
             f"profile {study['profile']}", ""]
    if study.get("reduced_vs_paper"):
        red = "; ".join(f"{k}: {v.get('used') if isinstance(v, dict) and 'used' in v else v}"
                        for k, v in study["reduced_vs_paper"].items() if k not in ("network_input", "network"))
        lines += [f"Reduced compared with the paper protocol: {red}.", ""]
        network = study["reduced_vs_paper"].get("network")
        if network:
            changes = ", ".join(f"{k} {v['nnunet']} → {v['used']}" for k, v in network["changed"].items()
                                if k in ("batch_size", "n_stages", "features_per_stage"))
            lines += [f"Network and batch (plans derived from nnU-Net's {network['derived_from']}, same preprocessed "
                      f"data): {changes}.", ""]
    any_case_std = any(isinstance(a.get(m), dict) and a[m].get("std_over") == "cases"
                       for a in aggregates for m in metrics)
    for m in metrics:
        lines += [f"## {titles[m]}", "",
                  "| Proportion (α) | " + " | ".join(f"{alpha_str(a)}%" for a in alphas) + " |",
                  "|---|" + "---|" * len(alphas)]
        best = {}
        for al in alphas:
            vals = [by[(r[0], r[1], al)][m]["mean"] for r in rows
                    if (r[0], r[1], al) in by and not by[(r[0], r[1], al)].get("skipped")
                    and by[(r[0], r[1], al)][m]["mean"] is not None]
            best[al] = max(vals) if vals else None
        for method, b, label in rows:
            cells = []
            for al in alphas:
                a = by.get((method, b, al))
                if a is None:
                    cells.append("")
                elif a.get("skipped"):
                    cells.append("-")
                else:
                    agg = a[m]
                    cells.append(format_cell(agg, agg["mean"] is not None and best[al] is not None
                                             and agg["mean"] == best[al]))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Cells: mean (± std) over folds of each fold's mean over its validation cases"
              + (" (± std over cases where only one fold finished)" if any_case_std else "")
              + "; **bold**: best of the column; n/a: not finished; [k/n folds]: only k of n folds finished so far.",
              f"-: not trained at α = 100 % without imagesUnlabeled (nothing unlabeled): a relabeling method is "
              f"the {SKIPPED_SAME}, as in the paper; a semi-supervised one (mean teacher, UA-MT, SASSNet, "
              f"adversarial confidence) has nothing to learn from.", ""]
    if ttests:
        lines += ["## Paired tests over validation cases, per α: p-values of the t-test (scipy.stats.ttest_rel) / "
                  "the Wilcoxon signed-rank test (scipy.stats.wilcoxon)", ""]
        comps = sorted(dict.fromkeys((t["metric"], t["a_label"], t["b_label"]) for t in ttests),
                       key=lambda c: metrics.index(c[0]))     # stable: comparisons in order within a metric
        lines += ["| metric | comparison | " + " | ".join(f"{alpha_str(a)}%" for a in alphas) + " |",
                  "|---|---|" + "---|" * len(alphas)]
        tb = {(t["metric"], t["a_label"], t["b_label"], t["alpha"]): t for t in ttests}
        for metric, al_, bl in comps:
            cells = []
            for al in alphas:
                t = tb.get((metric, al_, bl, al))
                if t is None:
                    cells.append("")
                else:
                    d = "" if t["mean_diff"] is None else f" (Δ {t['mean_diff'] * 100:+.2f}, n={t['n']})"
                    cells.append(f"{format_p_value(t['p'])} / {format_p_value(t.get('p_wilcoxon'))}{d}")
            lines.append(f"| {metric} | {al_} vs {bl} | " + " | ".join(cells) + " |")
        lines += ["", "Δ: mean paired difference (first minus second) in points (%), n: paired cases; runs "
                      "shown as - are not tested (their counterpart without relabeling is).", ""]
    return "\n".join(lines) + "\n"


def runs_md(runs: List[dict]) -> str:
    """Wall time, machine and commit of every finished (run, fold)."""
    lines = ["## Runs", "", "| run | fold | wall time | machine | git commit |", "|---|---|---|---|---|"]
    for r in runs:
        if r.get("skipped"):
            continue
        mach = r.get("machine") or {}
        where = f"{mach.get('cpu_count')} CPU cores" + (f", {mach['gpu']}" if mach.get("gpu") else "")
        for f in r.get("folds_finished", []):
            wall = (r.get("wall_seconds") or {}).get(str(f))
            lines.append(f"| {r['run_id']} | {f} | {'n/a' if wall is None else format_duration(wall)} | "
                         f"{mach.get('device', 'n/a')}, {where} | {str(r.get('git_commit'))[:12]} |")
    lines += ["", "Wall time: all attempts of that fold (training, nnU-Net's final validation); a relabeling run's "
                  "includes its pseudo-labels and retraining, not the round 0 taken from its counterpart.", ""]
    return "\n".join(lines) + "\n"


def per_class_md(aggregates: List[dict], names: Dict[str, str], pancreas: Optional[str]) -> str:
    """Dice per organ (%) of every finished row, one table per alpha (the pancreas column marked)."""
    done = [a for a in aggregates if not a.get("skipped") and a.get("per_class")]
    if not done:
        return ""
    pname = names.get(pancreas) if pancreas else None
    cols = list(names.values())
    lines = ["## Dice per organ (%, mean over validation cases)", ""]
    for al in sorted({a["alpha"] for a in done}, reverse=True):
        lines += [f"α = {alpha_str(al)} %", "",
                  "| method | " + " | ".join(f"**{c}**" if c == pname else c for c in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for a in (a for a in done if a["alpha"] == al):
            vals = [a["per_class"].get(c, {}).get("dice") for c in cols]
            lines.append(f"| {a['label']} | " + " | ".join("n/a" if v is None else f"{v * 100:.1f}" for v in vals)
                         + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def positioning_md(summary: List[dict]) -> str:
    if not summary:
        return ""
    lines = ["## Positioning of the prior (Dice %, mean over validation cases of the mean over organs)", "",
             "| run | cases | visual (no prior) | naive centring | automatic | ground-truth centres | efficiency |",
             "|---|---|---|---|---|---|---|"]
    for e in summary:
        cells = ["n/a" if e["mean"].get(m) is None else f"{e['mean'][m] * 100:.2f}" for m in POSITIONING_MODES]
        eff = "n/a" if e["efficiency"] is None else f"{e['efficiency']:.2f}"
        lines.append(f"| {e['run_id']} | {e['cases']} | " + " | ".join(cells) + f" | {eff} |")
    lines += ["", "Network voxel grid, test-time mirroring on; efficiency = (automatic - visual) / "
                  "(ground truth - visual). Per case and organ: positioning.csv.", ""]
    return "\n".join(lines) + "\n"


def pseudo_labels_md(rows: List[dict]) -> str:
    if not rows:
        return ""
    lines = ["## Pseudo-labels against the hidden labels (pooled over organs)", "",
             "| run | fold | round | γ | cases | voxels added | precision | recall |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pr = "n/a" if r["precision"] is None else f"{r['precision']:.3f}"
        rc = "n/a" if r["recall"] is None else f"{r['recall']:.3f}"
        lines.append(f"| {r['run_id']} | {r['fold']} | {r['round']} | {r['gamma']:.2f} | {r['cases']} | "
                     f"{r['voxels_added']} | {pr} | {rc} |")
    lines += ["", "Recall counts the hidden organ voxels that received their true label; per organ in results.json.", ""]
    return "\n".join(lines) + "\n"


def write_positioning_csv(path: Path, rows: List[dict]) -> None:
    cols = ["run_id", "fold", "case", "class_key", "mode", "dice"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow([r[c] if not (c == "dice" and r[c] is None) else "" for c in cols])


def write_results_csv(path: Path, runs: List[dict]) -> None:
    cols = ["alpha", "method", "bins", "trainer", "run_id", "fold", "case", "class_key", "class_name", "dice",
            "nsd", "wall_seconds_fold", "git_commit", "nnunetv2", "torch", "platform", "device"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in runs:
            if r.get("skipped"):
                continue
            ver, mach = r.get("versions") or {}, r.get("machine") or {}
            for c in r.get("cases", []):
                for k, v in c["classes"].items():
                    w.writerow([r["alpha"], r["method"], r["bins"], r["trainer"], r["run_id"], c["fold"], c["case"],
                                k, v["name"], "" if v["dice"] is None else v["dice"],
                                "" if v["nsd"] is None else v["nsd"],
                                (r.get("wall_seconds") or {}).get(str(c["fold"])), r.get("git_commit"),
                                ver.get("nnunetv2"), ver.get("torch"), mach.get("platform"), mach.get("device")])
