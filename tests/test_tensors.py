"""nnunet_stipple/tensors.py: CPU workspaces in numpy's memory, one torch thread for positioning on the CPU."""
import numpy as np
import pytest
import torch

from nnunet_stipple.tensors import one_thread_on_cpu, workspace


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex128, torch.uint8, torch.int64])
@pytest.mark.parametrize("zeros", [True, False])
def test_cpu_workspace_is_a_tensor_over_numpy_memory(dtype, zeros):
    tensor = workspace((3, 4, 5), dtype, "cpu", zeros=zeros)
    assert tensor.shape == (3, 4, 5) and tensor.dtype == dtype and tensor.device.type == "cpu"
    assert not zeros or not tensor.any()
    tensor.fill_(1)
    assert np.all(tensor.numpy() == 1)      # the same memory seen from numpy


def test_positioning_uses_one_thread_on_the_cpu_and_restores_the_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_thread_on_cpu(torch.device("cpu")):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError):
            with one_thread_on_cpu("cpu"):
                raise RuntimeError("positioning failed")
        assert torch.get_num_threads() == 2
        with one_thread_on_cpu(torch.device("cuda")):   # only the device's type is looked at
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
