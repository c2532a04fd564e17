#!/usr/bin/env python
"""What STIPPLE adds to every training step, timed alone: the prior at the augmented coordinates.

For one batch of the configuration's patch and batch size, with a fold's real prior from
``nnUNet_preprocessed`` (built if missing), times what ``STIPPLETrainer.prior_offsets_for_batch`` does
on top of nnU-Net's step: the organ probabilities at every voxel (``PriorModule.organ_probabilities_at``),
their combination with the background and floor, and ``ln p`` at every deep-supervision resolution.
Coordinates are a rotated and zoomed patch grid (what nnU-Net's spatial transform makes of them).

Run it next to ``scripts/bench_cost.py``: on a 2-core CPU the step-to-step noise between two training
processes (about +-10 %) is larger than this extra work, so the side-by-side ratio alone cannot show
whether it is below 5 % of a step; this script measures the extra work itself.

Example (BTCV 3d_fullres, fold 0):  python scripts/bench_prior_lookup.py -d 101 -c 3d_fullres --repeats 5
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnunet_stipple.activation.prior_driven import softmax_offset  # noqa: E402
from nnunet_stipple.benchmarks.cost import dataset_argument_parser  # noqa: E402
from nnunet_stipple.priors.algorithm import box_start  # noqa: E402
from nnunet_stipple.priors.build import load_or_build, open_preprocessed  # noqa: E402
from nnunet_stipple.priors.prior_module import PriorModule  # noqa: E402
from nnunet_stipple.priors.spatial_prior import combine_class_probabilities  # noqa: E402


def augmented_coordinates(patch, batch, centre, angle=0.3, zoom=1.2) -> torch.Tensor:
    """(batch, 3, *patch) voxel coordinates of a patch rotated about two axes and zoomed around ``centre``."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) - (s - 1) / 2 for s in patch],
                                      indexing="ij")).reshape(3, -1)
    c, s = float(np.cos(angle)), float(np.sin(angle))
    rot = torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]]) @ torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    xyz = (rot @ grid) * zoom + torch.tensor(centre, dtype=torch.float32).view(3, 1)
    return xyz.reshape(1, 3, *patch).expand(batch, -1, *patch).contiguous()


def main(argv=None) -> int:
    p = dataset_argument_parser(__doc__, "fold whose prior is used (default 0)")
    p.add_argument("-B", type=int, default=5, help="bins of the prior (default 5)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    ds = open_preprocessed(a.d, a.c, a.p)
    patch = [int(v) for v in ds.configuration_manager.patch_size]
    batch = int(ds.configuration_manager.batch_size)
    if len(patch) != 3:
        raise SystemExit("3D configurations only")
    prior, _ = load_or_build(ds, a.f, a.B)
    module = PriorModule()
    module.set_prior(prior)
    case = sorted(prior.case_centres)[0]
    centres = prior.case_centres[case]
    liver_like = max(centres, key=lambda k: int(np.prod(prior.box_size(k))))
    coords = augmented_coordinates(patch, batch, centres[liver_like])
    starts = {k: torch.as_tensor(np.stack([box_start(v, prior.box_size(k))] * batch)) for k, v in centres.items()}
    present = {k: torch.ones(batch, dtype=torch.bool) for k in centres}
    scales = [1.0] + [1.0 / 2 ** i for i in range(1, len(ds.configuration_manager.pool_op_kernel_sizes))]
    times = {"lookup": [], "combine": [], "ln p (all outputs)": []}
    for _ in range(a.repeats + 1):
        t0 = time.perf_counter()
        q = module.organ_probabilities_at(coords, starts, present)
        t1 = time.perf_counter()
        prob = combine_class_probabilities(q, 1e-3, channel_dim=1)
        t2 = time.perf_counter()
        for sc in scales:
            size = tuple(max(1, int(round(s * sc))) for s in patch)
            softmax_offset(prob if sc == 1 else F.interpolate(prob, size=size, mode="area"))
        t3 = time.perf_counter()
        for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
            times[k].append(v)
    med = {k: statistics.median(v[1:]) for k, v in times.items()}   # first call warms caches
    total = sum(med.values())
    print(f"{ds.name} {a.c}, fold {a.f}, B = {a.B}, {len(prior.built_classes)} classes, batch {batch} x patch "
          f"{'x'.join(map(str, patch))}, torch threads {torch.get_num_threads()}")
    for k, v in med.items():
        print(f"  {k:24s} {v:8.3f} s")
    print(f"  {'STIPPLE extra per step':24s} {total:8.3f} s  (median of {a.repeats})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
