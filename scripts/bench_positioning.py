#!/usr/bin/env python
"""Benchmark of the exhaustive KL translation search used to position STIPPLE priors (paper section 3.2).

Simulates one 13-class abdominal CT case at nnU-Net 3d_fullres network resolution like BTCV
(about 110 x 230 x 230 voxels, spacing (3.0, 1.3, 1.3) mm, z first), with organ boxes of realistic size,
synthetic per-class probability maps (smooth blob of a "target patient" shape + noise) and reference
templates (one-hot crop of a slightly different "reference patient" shape of the same organ). Coarse
starts are the true starts displaced by a random offset inside the search radius (20 mm by default).

Reports:
  * the fast (FFT) search time per case for all 13 classes, median of ``--repeats`` runs, with the
    reference spectrum computed on each call and with it pre-computed once (``prepare_reference``);
  * the brute-force time for the classes in ``--brute-classes`` (small ones by default) and a
    brute-force total extrapolated to all 13 classes from the time per (offset x template voxel);
  * agreement of fast and brute-force answers on those classes (offset and max relative cost
    difference), plus a spot check of ``--spot-checks`` random offsets per class on every class;
  * the positioning error of the fast search with respect to the true start (mm).

Example:
    python scripts/bench_positioning.py                 # default, ~1 minute on 2 cores
    python scripts/bench_positioning.py --brute-classes 4 12 13 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnunet_stipple.benchmarks.simulated_case import organ_shape  # noqa: E402
from nnunet_stipple.positioning.kl_search import (  # noqa: E402
    brute_force_kl_translation_search,
    kl_translation_search,
    mm_to_voxel_radius,
    prepare_reference,
)

SPACING = (3.0, 1.3, 1.3)
VOLUME = (110, 230, 230)

# label, name, box size in mm (z, y, x), relative box centre in the volume (z, y, x)
ORGANS = [
    (1, "spleen", (120, 100, 100), (0.55, 0.45, 0.76)),
    (2, "right kidney", (110, 70, 70), (0.45, 0.62, 0.28)),
    (3, "left kidney", (110, 70, 70), (0.50, 0.62, 0.72)),
    (4, "gallbladder", (70, 50, 50), (0.50, 0.38, 0.32)),
    (5, "esophagus", (120, 30, 30), (0.78, 0.55, 0.54)),
    (6, "liver", (170, 200, 180), (0.60, 0.42, 0.32)),
    (7, "stomach", (150, 150, 130), (0.60, 0.36, 0.64)),
    (8, "aorta", (250, 35, 35), (0.50, 0.58, 0.52)),
    (9, "inferior vena cava", (220, 35, 35), (0.50, 0.55, 0.42)),
    (10, "portal/splenic vein", (80, 120, 60), (0.52, 0.45, 0.50)),
    (11, "pancreas", (70, 150, 70), (0.46, 0.47, 0.55)),
    (12, "right adrenal gland", (40, 30, 30), (0.62, 0.56, 0.37)),
    (13, "left adrenal gland", (40, 30, 30), (0.62, 0.56, 0.63)),
]


def simulate_case(radius_vox, seed: int):
    """Probability maps (13, *VOLUME) float32, templates, true and coarse starts."""
    rng = np.random.default_rng(seed)
    probs = np.empty((len(ORGANS),) + VOLUME, dtype=np.float32)
    templates, true_starts, coarse_starts, boxes = [], [], [], []
    for i, (_, _, size_mm, rel_centre) in enumerate(ORGANS):
        box = tuple(int(round(s / sp)) for s, sp in zip(size_mm, SPACING))
        box = tuple(min(b, n) for b, n in zip(box, VOLUME))
        start = tuple(
            int(np.clip(round(c * n - b / 2), 0, n - b)) for c, n, b in zip(rel_centre, VOLUME, box)
        )
        target_label = organ_shape(box, rng)  # the "target patient" organ
        reference = organ_shape(box, rng)  # the "reference patient" organ (different shape)
        q = rng.random(VOLUME, dtype=np.float32) * np.float32(0.04)  # background: low probabilities
        sl = tuple(slice(s, s + b) for s, b in zip(start, box))
        blob = gaussian_filter(target_label, sigma=1.0) * 0.9 + 0.05 + rng.normal(0.0, 0.05, box)
        q[sl] = np.maximum(q[sl], np.clip(blob, 0.0, 1.0).astype(np.float32))
        probs[i] = q
        offset = tuple(int(rng.integers(-r, r + 1)) for r in radius_vox)
        templates.append(reference)
        true_starts.append(start)
        coarse_starts.append(tuple(s - o for s, o in zip(start, offset)))
        boxes.append(box)
    return probs, templates, true_starts, coarse_starts, boxes


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--radius-mm", type=float, default=20.0, help="search radius each way in mm (default 20)")
    p.add_argument("--repeats", type=int, default=7, help="repeats of the fast search per case (median)")
    p.add_argument("--brute-classes", type=int, nargs="*", default=[12, 13],
                   help="labels checked with the full brute-force search (default: the adrenal glands)")
    p.add_argument("--spot-checks", type=int, default=20,
                   help="random offsets per class whose cost is recomputed by brute force (all classes)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    radius = mm_to_voxel_radius(args.radius_mm, SPACING)
    n_offsets = int(np.prod([2 * r + 1 for r in radius]))
    print(f"volume {VOLUME} voxels, spacing {SPACING} mm, radius {args.radius_mm} mm -> {radius} voxels "
          f"({n_offsets} offsets per class)")
    t0 = time.perf_counter()
    probs, templates, true_starts, coarse_starts, boxes = simulate_case(radius, args.seed)
    print(f"simulated case in {time.perf_counter() - t0:.1f} s\n")

    # ---- fast search, reference spectrum computed on each call -------------------------------------
    def run_all(refs):
        return [kl_translation_search(probs[i], refs[i], coarse_starts[i], radius) for i in range(len(ORGANS))]

    kl_translation_search(probs[-1], templates[-1], coarse_starts[-1], radius)  # warm-up (imports, plans)
    prepared, t_prep = timed(lambda: [prepare_reference(t, radius) for t in templates])
    # the two variants are interleaved so that machine load affects both alike
    times_plain, times_prep, per_class = [], [], np.zeros(len(ORGANS))
    for _ in range(args.repeats):
        t_case = 0.0
        for i in range(len(ORGANS)):
            _, dt = timed(kl_translation_search, probs[i], templates[i], coarse_starts[i], radius)
            per_class[i] += dt / args.repeats
            t_case += dt
        times_plain.append(t_case)
        # ---- prepared references (spectrum computed once, reused across cases) ----
        times_prep.append(timed(run_all, prepared)[1])
    results = run_all(templates)
    results_prep = run_all(prepared)
    assert all(a.offset == b.offset for a, b in zip(results, results_prep))

    # ---- brute force on selected classes ---------------------------------------------------------
    brute = {}
    for label in args.brute_classes:
        i = label - 1
        res_b, dt = timed(brute_force_kl_translation_search, probs[i], templates[i], coarse_starts[i], radius)
        fin = np.isfinite(res_b.costs)
        rel = np.max(np.abs(results[i].costs[fin] - res_b.costs[fin]) / np.abs(res_b.costs[fin]))
        brute[label] = (res_b, dt, rel)

    # ---- spot checks on every class --------------------------------------------------------------
    rng = np.random.default_rng(args.seed + 1)
    spot_rel = np.zeros(len(ORGANS))
    for i in range(len(ORGANS)):
        for _ in range(args.spot_checks):
            t = tuple(int(rng.integers(-r, r + 1)) for r in radius)
            s = tuple(c + o for c, o in zip(coarse_starts[i], t))
            c_b = brute_force_kl_translation_search(probs[i], templates[i], s, 0).cost
            c_f = results[i].costs[tuple(o + r for o, r in zip(t, radius))]
            spot_rel[i] = max(spot_rel[i], abs(c_f - c_b) / abs(c_b))

    # ---- table -----------------------------------------------------------------------------------
    hdr = (f"{'lbl':>3} {'organ':<20} {'box (vox)':>14} {'fast ms':>8} {'err mm':>7} {'conf':>5} "
           f"{'spot rel':>9} {'brute s':>8} {'same t':>6} {'max rel':>9}")
    print(hdr)
    print("-" * len(hdr))
    for i, (label, name, _, _) in enumerate(ORGANS):
        res = results[i]
        err = np.sqrt(sum(((a - b) * sp) ** 2 for a, b, sp in zip(res.start, true_starts[i], SPACING)))
        line = (f"{label:>3} {name:<20} {'x'.join(map(str, boxes[i])):>14} {per_class[i] * 1e3:8.1f} "
                f"{err:7.1f} {res.confidence:5.2f} {spot_rel[i]:9.1e}")
        if label in brute:
            res_b, dt, rel = brute[label]
            line += f" {dt:8.2f} {str(res_b.offset == res.offset):>6} {rel:9.1e}"
        print(line)
    print()
    med_plain, med_prep = statistics.median(times_plain), statistics.median(times_prep)
    print(f"fast search, all 13 classes, per case: median {med_plain:.3f} s, min {min(times_plain):.3f} s "
          f"over {args.repeats} runs (reference spectrum computed per call)")
    print(f"fast search, all 13 classes, per case: median {med_prep:.3f} s, min {min(times_prep):.3f} s "
          f"over {args.repeats} runs (prepared references; one-off preparation {t_prep:.3f} s)")
    if brute:
        work = sum(n_offsets * np.prod(boxes[label - 1]) for label in brute)
        t_brute = sum(dt for _, dt, _ in brute.values())
        per_unit = t_brute / work
        total_work = sum(n_offsets * np.prod(b) for b in boxes)
        print(f"brute force on labels {sorted(brute)}: {t_brute:.2f} s "
              f"({per_unit * 1e9:.2f} ns per offset x template voxel)")
        print(f"brute force extrapolated to all 13 classes: {per_unit * total_work:.0f} s per case "
              f"(~{per_unit * total_work / med_plain:.0f}x the fast search)")
        agree = all(res_b.offset == results[lbl - 1].offset for lbl, (res_b, _, _) in brute.items())
        print(f"fast and brute force agree on the offsets: {agree}; "
              f"max relative cost difference {max(rel for _, _, rel in brute.values()):.1e}")
    print(f"spot checks ({args.spot_checks} offsets x 13 classes): max relative cost difference "
          f"{spot_rel.max():.1e}")
    ok = (not brute or all(res_b.offset == results[lbl - 1].offset for lbl, (res_b, _, _) in brute.items()))
    ok = ok and spot_rel.max() < 1e-6
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
