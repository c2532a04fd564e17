"""Positioning where the logits are (inference/predictor.py): the CPU fallback when the device runs out of memory,
like nnU-Net's perform_everything_on_device, and offsets made on the device of the logits."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nnunet_stipple.inference.predictor import FoldPrior, with_cpu_fallback
from nnunet_stipple.positioning.settings import PositioningSettings
from tests.positioning.test_place import _label, _onehot, _prior, label_predictor


def _on_device(tensor):
    """Logits that claim to be on a GPU (CI has none): all the fallback looks at is their device and .to()."""
    return SimpleNamespace(device=torch.device("cuda"), to=lambda device: tensor.to(device))


def test_out_of_memory_on_the_device_repeats_the_work_on_the_cpu(capsys):
    calls = []

    def work(logits):
        calls.append(logits.device.type)
        if logits.device.type != "cpu":
            raise torch.OutOfMemoryError("CUDA out of memory")
        return "positioned"

    logits = torch.zeros((3, 4, 4, 4))
    result, used = with_cpu_fallback(work, _on_device(logits))
    assert result == "positioned" and calls == ["cuda", "cpu"]
    assert used.device.type == "cpu" and torch.equal(used, logits)
    assert "ran out of memory on cuda; positioning on the CPU" in capsys.readouterr().out


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CPU out of memory"), RuntimeError("a bug")])
def test_other_failures_are_not_retried(error):
    calls = []

    def work(logits):
        calls.append(logits.device.type)
        raise error

    logits = torch.zeros((3, 4, 4, 4))
    with pytest.raises(type(error)):
        with_cpu_fallback(work, logits if isinstance(error, torch.OutOfMemoryError) else _on_device(logits))
    assert len(calls) == 1


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_offsets_are_made_on_the_device_of_the_logits(device):
    prior = _prior([_label(), _label()])
    logits = torch.from_numpy(_onehot(_label(shift=2)) * 5).to(device)
    offsets, report = label_predictor().prior_offsets(FoldPrior(prior, 1e-3, PositioningSettings(search_radius_mm=5, coarse_placement="joint")),
                                                      logits, "case")
    assert offsets.device == logits.device and report["joint"]["displacement"] == [2, 0, 0]
    expected = np.log(prior.probabilities_on_grid(logits.shape[1:], {int(c): v for c, v in report["centres"].items()}))
    np.testing.assert_allclose(offsets.cpu().numpy(), expected, rtol=0, atol=2e-7)


def test_models_with_regions_are_positioned_from_their_own_prior_driven_segmentation():
    """nnU-Net regions (sigmoid outputs, here a = {1, 2} and b = {2}): the first and the prior-driven predictions
    are their segmentations, made from the logits where they are."""
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    prior = _prior([_label(), _label()])
    predictor = label_predictor()
    predictor.label_manager = LabelManager({"background": 0, "a": [1, 2], "b": 2}, regions_class_order=[1, 2])
    label = _label(shift=3)
    logits = torch.from_numpy(np.stack([np.where(label > 0, 6.0, -6.0), np.where(label == 2, 6.0, -6.0)])
                              .astype(np.float32))
    settings = PositioningSettings(search_radius_mm=5, repositioning_steps=2, coarse_placement="joint")
    offsets, report = predictor.prior_offsets(FoldPrior(prior, 1e-3, settings), logits, "case")
    assert report["method"] == "kl_search" and report["joint"]["displacement"] == [3, 0, 0]
    assert offsets.shape == logits.shape and torch.isfinite(offsets).all()
    # a = {1, 2} is more likely than b = {2} wherever the prior sees organ 1 only
    centre = [int(round(v)) for v in report["centres"]["1"]]
    assert offsets[0][tuple(centre)] > offsets[1][tuple(centre)]
