"""STIPPLETrainer checks its positioning settings when it is created, not after training (when the final
validation first positions a prior)."""
import pytest
import torch

from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.positioning.settings import PositioningSettings
from nnunet_stipple.trainers import STIPPLETrainer

CASES = [
    # (attribute, value, part of the message)
    ("stipple_coarse_placement", "centre", "coarse_placement must be one of joint, components, hybrid, got 'centre'"),
    ("stipple_search_radius_mm", -5.0, "must be a non-negative number, got -5.0"),
    ("stipple_search_radius_mm", "20", "must be a non-negative number, got '20'"),
    ("stipple_anatomy_tolerance_mm", float("inf"), "anatomy_tolerance_mm (reject an organ placement"),
    ("stipple_anatomy_tolerance_mm", None, "anatomy_tolerance_mm (reject an organ placement"),
    ("stipple_repositioning_steps", 1.5, "repositioning_steps (re-searches"),
    ("stipple_layout_guard", "warn", "layout_guard must be one of fallback, flag, off, got 'warn'"),
]


def _make(nnunet_env, cls):
    from nnunet_stipple.nnunet_folders import open_preprocessed
    ds = open_preprocessed(nnunet_env["dataset_name"], "3d_fullres", "nnUNetPlans")
    # nnU-Net's trainer pops 'continue_training' from the plans dict (run_training.py puts it there)
    return cls(dict(ds.plans, continue_training=False), "3d_fullres", 0, ds.dataset_json, torch.device("cpu"))


@pytest.mark.parametrize("attribute, value, needle", CASES, ids=[f"{c[0]}={c[1]!r}" for c in CASES])
def test_trainer_refuses_bad_positioning_settings(nnunet_env, attribute, value, needle):
    cls = type("STIPPLETrainer_BadSetting", (STIPPLETrainer,), {attribute: value})
    with pytest.raises(StippleInputError) as excinfo:
        _make(nnunet_env, cls)
    assert str(excinfo.value).startswith("STIPPLETrainer_BadSetting (stipple_search_radius_mm, ")
    assert needle in str(excinfo.value)


def test_trainer_with_default_and_components_settings_is_created(nnunet_env):
    cls = type("STIPPLETrainer_Components", (STIPPLETrainer,), {"stipple_coarse_placement": "components",
                                                                 "stipple_anatomy_tolerance_mm": 0})
    trainer = _make(nnunet_env, cls)
    assert trainer.positioning_settings == PositioningSettings(coarse_placement="components", anatomy_tolerance_mm=0)
    assert trainer.stipple_settings()["positioning"]["coarse_placement"] == "components"
    assert _make(nnunet_env, STIPPLETrainer).stipple_settings()["positioning"] == PositioningSettings().to_json()
