"""What STIPPLE adds to a network survives nnU-Net's DDP wrapping (checked on CPU with the gloo backend).

nnU-Net's own multi-GPU path (``nnUNetv2_train -num_gpus N``) needs CUDA and NCCL, which CI does not have;
this test checks the pieces STIPPLE relies on under ``DistributedDataParallel``: the prior buffers are
broadcast from rank 0 (every rank predicts with the same prior), the refusal hook can be removed on the
wrapped module, a forward hook on the DDP wrapper adds the prior offsets, and gradients stay in sync.
"""
import os
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prior(seed):
    from conftest import handmade_prior
    rng = np.random.default_rng(seed)
    return handmade_prior({1: rng.random((2, 3, 3)).astype(np.float32)},
                          {1: (rng.random((4, 3, 3)) * 255).astype(np.uint8)}, {1: [2.0, 2.0, 2.0]}, {1: "a"},
                          slice_counts={1: np.array([2, 2])})


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from nnunet_stipple.priors.prior_module import allow_prior_free_forward, attach_prior_module, prior_module_of
    torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
    net = attach_prior_module(torch.nn.Conv3d(1, 2, 3, padding=1))
    prior_module_of(net).set_prior(_prior(seed=rank))
    allow_prior_free_forward(net)
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    offsets = torch.full((1, 2, 4, 4, 4), 0.5)
    ddp.register_forward_hook(lambda m, i, o: o + offsets)
    x = torch.randn(1, 1, 4, 4, 4, generator=torch.Generator().manual_seed(rank))
    y = ddp(x)
    raw = net(x)  # the inner module: no offset
    y.sum().backward()
    hist = prior_module_of(net).hist_1.clone()
    grad = net.weight.grad.clone()
    dist.all_reduce(hist, op=dist.ReduceOp.MAX)
    hist_min = prior_module_of(net).hist_1.clone()
    dist.all_reduce(hist_min, op=dist.ReduceOp.MIN)
    gmax, gmin = grad.clone(), grad.clone()
    dist.all_reduce(gmax, op=dist.ReduceOp.MAX)
    dist.all_reduce(gmin, op=dist.ReduceOp.MIN)
    if rank == 0:
        out.put({"hist_equal": bool(torch.equal(hist, hist_min)),
                 "hist_is_rank0": bool(torch.allclose(hist, torch.from_numpy(_prior(0).histograms[1]))),
                 "grads_equal": bool(torch.allclose(gmax, gmin)),
                 "offset_added": bool(torch.allclose(y - raw, offsets))})
    # Without this barrier one rank may tear gloo down while the other still holds a pending connection,
    # which aborts the process ("terminate called without an active exception"), about once in 12 runs.
    dist.barrier()
    dist.destroy_process_group()


def test_prior_module_and_hooks_under_ddp():
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    mp.start_processes(_worker, args=(_free_port(), out), nprocs=2, join=True, start_method="spawn")
    res = out.get(timeout=30)
    assert res == {"hist_equal": True, "hist_is_rank0": True, "grads_equal": True, "offset_added": True}
