"""Large tensors and threads for work on the CPU or a GPU alike."""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

_NUMPY_DTYPES = {torch.float64: np.float64, torch.float32: np.float32, torch.complex128: np.complex128,
                 torch.uint8: np.uint8, torch.int64: np.int64}


def workspace(shape, dtype: torch.dtype, device, zeros: bool = False) -> torch.Tensor:
    """A new tensor for the searches' large intermediates. On the CPU it is numpy's memory: numpy asks the
    kernel for transparent huge pages, torch's CPU allocator does not, and the page faults of fresh 4 KiB
    pages made each new region-sized tensor cost about ten times the operation that fills it (2-core
    machine, docs/benchmarks.md)."""
    shape = tuple(int(n) for n in shape)
    if torch.device(device).type == "cpu":
        make = np.zeros if zeros else np.empty
        return torch.from_numpy(make(shape, dtype=_NUMPY_DTYPES[dtype]))
    return (torch.zeros if zeros else torch.empty)(shape, dtype=dtype, device=device)


@contextmanager
def one_thread_on_cpu(device):
    """Run torch's CPU work inside with one thread (the count before is restored), nothing changes on a GPU.

    Positioning is hundreds of short operations, each a parallel region whose threads wait for each other at
    its end, spinning. When other processes share the cores (nnU-Net's export workers, a training) a thread
    spins while its partner waits for a core: positioning the BTCV case took 10-16 CPU s with two threads
    and 3.1-3.6 with one (docs/benchmarks.md, "Positioning on the prediction device")."""
    if torch.device(device).type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
