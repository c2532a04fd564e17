"""Large tensors for work on the CPU or a GPU alike."""
from __future__ import annotations

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
