#!/usr/bin/env python
"""STIPPLE's cost inside one training process: train steps with and without the prior, interleaved.

``scripts/bench_cost.py`` compares two processes (plain nnU-Net, STIPPLE); on a 2-core CPU two processes
of the same work differ by up to +-10-15 % for reasons that have nothing to do with the code. Here one
``STIPPLETrainer`` runs the same prefetched batches alternately with its prior (normal training) and with
the prior switched off (``ln p`` not added: the plain nnU-Net computation on the same network and data),
so process-level noise hits both alike. Data augmentation is prefetched and not timed; its extra work
(4 coordinate channels through nnU-Net's transforms) runs in nnU-Net's background workers, which are
stopped before the timed steps so that they do not refill their queues on the same cores. Steps run in
ABBA order (with, off, off, with, ...) so a slow drift of the machine cancels out; reported are the ratio
of the medians and the median of the ratios of adjacent pairs.

Example (phantom):  python scripts/bench_step_interleaved.py -d 990 -c 3d_fullres --steps 12
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnunet_stipple.benchmarks.cost import STIPPLE, _trainer, dataset_argument_parser  # noqa: E402
from nnunet_stipple.trainers.data_loader import BATCH_KEY  # noqa: E402


def main(argv=None) -> int:
    p = dataset_argument_parser(__doc__)
    p.add_argument("-device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--steps", type=int, default=12, help="timed steps in all (half with the prior)")
    p.add_argument("--warmup", type=int, default=2)
    a = p.parse_args(argv)
    trainer = _trainer(STIPPLE, a.d, a.c, a.f, a.device, a.p)
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    for _ in range(a.warmup):
        trainer.train_step(next(trainer.dataloader_train))
    batches = [next(trainer.dataloader_train) for _ in range(a.steps)]
    for loader in (trainer.dataloader_train, trainer.dataloader_val):
        if hasattr(loader, "_finish"):
            loader._finish()   # background augmentation would compete with the timed steps for the cores
    with_prior = trainer.prior_offsets_for_batch

    def prior_off(batch, training):
        batch.pop(BATCH_KEY)
        return None        # the forward hook then leaves nnU-Net's outputs as they are

    times = {"with prior": [], "prior off": []}
    sequence = []
    for i, batch in enumerate(batches):
        key = "with prior" if i % 4 in (0, 3) else "prior off"
        trainer.prior_offsets_for_batch = with_prior if key == "with prior" else prior_off
        t0 = time.perf_counter()
        trainer.train_step(batch)
        if a.device == "cuda":
            torch.cuda.synchronize()
        times[key].append(time.perf_counter() - t0)
        sequence.append(times[key][-1])
    trainer.prior_offsets_for_batch = with_prior
    trainer.on_train_end()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{trainer.plans_manager.dataset_name} {a.c}, batch {trainer.batch_size} x patch "
          f"{'x'.join(map(str, trainer.configuration_manager.patch_size))}, {a.device}, {a.steps} steps interleaved")
    for k, v in times.items():
        print(f"  {k:11s} median {med[k]:8.3f} s   ({', '.join(f'{x:.2f}' for x in v)})")
    print(f"  ratio with / off: {med['with prior'] / med['prior off']:.3f} (ratio of the medians)")
    # adjacent pairs (0, 1), (2, 3), ...: steps 0 and 3 of every 4 run with the prior
    pairs = [(sequence[i], sequence[i + 1]) if i % 4 == 0 else (sequence[i + 1], sequence[i])
             for i in range(0, len(sequence) - 1, 2)]
    if pairs:
        ratios = [w / o for w, o in pairs]
        print(f"  adjacent pairs with / off: median {statistics.median(ratios):.3f} "
              f"({', '.join(f'{r:.3f}' for r in ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
