"""The whole placement (positioning/procedure.py): STIPPLE prediction and nnUNetv2_stipple_position run the same
procedure, so the same first prediction gives the same placement and report; re-positioning and the uniform
fallback; the prior-driven softmax from probabilities."""
import json

import numpy as np
import pytest
import torch

from nnunet_stipple.commands.position import main as position_main
from nnunet_stipple.inference.predictor import FoldPrior
from nnunet_stipple.positioning.procedure import UNIFORM_FALLBACK, place_prior, prior_driven_probabilities
from nnunet_stipple.positioning.settings import PositioningSettings, command_line_flag
from tests.positioning.test_anatomical_consistency import _with_far_false_positive
from tests.positioning.test_place import _label, _onehot, _prior, label_predictor

# the report keys of the placement itself (the predictor adds the fold and the time, the command the prior
# and the input)
PLACEMENT_KEYS = ("method", "settings", "floor", "repositioning_steps", "ok", "confidence", "centres", "classes",
                  "joint")


def _first_logits(kind: str) -> torch.Tensor:
    rng = np.random.default_rng(0)
    if kind == "shifted":
        label = _label(shift=2)
    else:   # "false_positive": class 2 predicted only far from the organ
        label = _with_far_false_positive()[1]
    logits = _onehot(label) * 4 + rng.normal(0, 1.0, (3, *label.shape)).astype(np.float32)
    return torch.from_numpy(logits.astype(np.float32))


def _command_flags(settings: PositioningSettings):
    return [str(v) for name, value in settings.to_json().items() for v in (command_line_flag(name), value)]


@pytest.mark.parametrize("kind, settings, floor", [
    ("shifted", PositioningSettings(search_radius_mm=5.0), 1e-3),
    ("false_positive", PositioningSettings(search_radius_mm=3.0, repositioning_steps=3, anatomy_tolerance_mm=10.0,
                                           coarse_placement="components"), 1e-2),
    ("false_positive", PositioningSettings(search_radius_mm=4.0, repositioning_steps=2), 1e-3),
])
def test_prediction_and_position_command_place_the_prior_alike(tmp_path, kind, settings, floor):
    prior = _prior([_label(), _label()])
    logits = _first_logits(kind)
    offsets, predicted = label_predictor().prior_offsets(FoldPrior(prior, floor, settings), logits, "case")
    assert predicted["method"] == "kl_search" and predicted["fold"] == "0"
    # the first prediction's probabilities as nnU-Net saves them (--save_probabilities), in the prior's space
    np.savez(tmp_path / "case.npz", probabilities=torch.softmax(logits, 0).numpy())
    prior_file = prior.save(tmp_path / "fold_0.npz")
    assert position_main(["--prior", str(prior_file), "--probabilities", str(tmp_path / "case.npz"),
                          "--floor", str(floor), *_command_flags(settings), "-o", str(tmp_path / "case.json")]) == 0
    positioned = json.loads((tmp_path / "case.json").read_text())
    for key in PLACEMENT_KEYS:
        assert positioned[key] == json.loads(json.dumps(predicted[key])), key
    assert positioned["settings"] == settings.to_json() and positioned["floor"] == floor
    # the offsets are those of the reported centres: ln p, to float32 rounding of p (ln of a p near 1 rounded
    # to float32 is off by up to 6e-8 in absolute terms, the offsets are computed as ln without rounding p)
    expected = torch.log(torch.from_numpy(prior.probabilities_on_grid(
        logits.shape[1:], {int(c): v for c, v in predicted["centres"].items()}, floor)))
    np.testing.assert_allclose(offsets.numpy(), expected.numpy(), rtol=0, atol=2e-7)


@pytest.mark.parametrize("steps, steps_run, final_shift", [(0, 0, 0), (2, 2, 2), (10, 4, 3)])
def test_repositioning_steps_search_from_the_last_placement_until_nothing_moves(steps, steps_run, final_shift):
    """A prior-driven prediction that moves the organs by one more slice per step, up to 3: each step starts
    at the last placement and finds the move; the step after the last move finds none and ends the loop."""
    prior = _prior([_label(), _label()])
    calls = []

    def driven(centres):
        calls.append(centres)
        return _onehot(_label(shift=min(len(calls), 3)))

    settings = PositioningSettings(search_radius_mm=5.0, repositioning_steps=steps)
    placement = place_prior(prior, _onehot(_label()), settings, driven_probabilities=driven)
    assert placement.report["repositioning_steps"] == steps_run == len(calls)
    assert placement.report["settings"]["repositioning_steps"] == steps
    assert placement.centres == {c: list(np.add(prior.mean_centres[c], [final_shift, 0, 0])) for c in (1, 2)}
    for step, centres in enumerate(calls):   # each step searched from the placement before it
        assert centres == {c: list(np.add(prior.mean_centres[c], [step, 0, 0])) for c in (1, 2)}


def test_nothing_found_falls_back_to_a_uniform_prior_in_both():
    prior = _prior([_label(), _label()])
    background = np.zeros((3, 30, 24, 24), np.float32)
    background[0] = 1
    with pytest.warns(UserWarning, match="of case empty; the prior is not placed and prediction uses a uniform prior"):
        placement = place_prior(prior, background, PositioningSettings(), case="empty")
    assert placement.centres is None and placement.report["method"] == UNIFORM_FALLBACK
    assert placement.report["centres"] == {"1": None, "2": None} and not placement.report["ok"]
    assert placement.report["settings"] == PositioningSettings().to_json()


def test_prior_driven_probabilities_equal_the_prior_driven_softmax():
    rng = np.random.default_rng(1)
    logits = torch.from_numpy(rng.normal(0, 3, (3, 5, 4, 3)).astype(np.float32))
    prior = rng.random((3, 5, 4, 3)).astype(np.float32) + 1e-3
    prior /= prior.sum(0, keepdims=True)
    expected = torch.softmax(logits + torch.log(torch.from_numpy(prior)), 0).numpy()
    driven = prior_driven_probabilities(torch.softmax(logits, 0).numpy(), prior)
    np.testing.assert_allclose(driven, expected, rtol=1e-5, atol=1e-7)
    assert driven.dtype == np.float32
    # a voxel without any first probability stays without (no division by zero)
    empty = np.zeros((3, 1, 1, 1), np.float32)
    assert np.all(prior_driven_probabilities(empty, prior[:, :1, :1, :1]) == 0)
