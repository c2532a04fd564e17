"""The report's plots: Dice and NSD against alpha per method, Dice against the bins B (the paper's Figure 6) where
a method ran with several B, and Dice per organ at each alpha."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

from nnunet_stipple.benchmarks.study.methods import method
from nnunet_stipple.benchmarks.study.planning import alpha_str

def write_plots(out_dir: Path, aggregates: List[dict], names: Dict[str, str]) -> List[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    done = [a for a in aggregates if not a.get("skipped") and a["dice"]["mean"] is not None]
    if not done:
        return written
    # Dice (and NSD) vs alpha, one line per row (method, B)
    rows = list(dict.fromkeys((a["method"], a["bins"], a["label"]) for a in done))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, m in zip(axes, ("dice", "nsd")):
        for method_name, b, label in rows:
            pts = sorted((a["alpha"], a[m]["mean"], a[m]["std"] or 0.0) for a in done
                         if a["method"] == method_name and a["bins"] == b and a[m]["mean"] is not None)
            if not pts:
                continue
            x, y, e = zip(*pts)
            ax.errorbar(x, [v * 100 for v in y], yerr=[v * 100 for v in e], marker="o", capsize=3, label=label)
        ax.set_xlabel("labeled training cases α (%)")
        ax.set_ylabel(f"{'Dice' if m == 'dice' else 'NSD'} (%)")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    p = out_dir / "dice_vs_alpha.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    written.append(p)
    # Dice vs B (Figure 6) where a method has several B at one alpha
    multi = {(a["alpha"], a["method"]) for a in done if method(a["method"]).uses_prior}
    multi = sorted(k for k in multi if len({a["bins"] for a in done if (a["alpha"], a["method"]) == k}) > 1)
    if multi:
        alphas = sorted({k[0] for k in multi}, reverse=True)
        fig, axes = plt.subplots(1, len(alphas), figsize=(5 * len(alphas), 4), squeeze=False)
        for ax, al in zip(axes[0], alphas):
            for (a_, method_name) in multi:
                if a_ != al:
                    continue
                pts = sorted((a["bins"], a["dice"]["mean"], a["dice"]["std"] or 0.0) for a in done
                             if a["alpha"] == al and a["method"] == method_name)
                x, y, e = zip(*pts)
                ax.errorbar(x, [v * 100 for v in y], yerr=[v * 100 for v in e], marker="o", capsize=3,
                            label=method(method_name).label)
            base = next((a for a in done if a["alpha"] == al and a["method"] == "plain"), None)
            if base is not None:
                ax.axhline(base["dice"]["mean"] * 100, color="red", linestyle=":", label=method("plain").label)
            ax.set_title(f"α = {alpha_str(al)} %")
            ax.set_xlabel("bins B")
            ax.set_ylabel("Dice (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        p = out_dir / "dice_vs_bins.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p)
    # per-organ bars per method at each alpha
    classes = list(names.values())
    for al in sorted({a["alpha"] for a in done}, reverse=True):
        at = [a for a in done if a["alpha"] == al]
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(classes) * max(1, len(at)) / 2), 4))
        width = 0.8 / len(at)
        x = np.arange(len(classes))
        for i, a in enumerate(at):
            vals = [(a["per_class"].get(n, {}).get("dice") or 0.0) * 100 for n in classes]
            ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=a["label"])
        ax.set_xticks(x)
        ax.set_xticklabels(classes, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("Dice (%)")
        ax.set_title(f"Dice per class, α = {alpha_str(al)} %")
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out_dir / f"organs_alpha{alpha_str(al)}.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p)
    return written
