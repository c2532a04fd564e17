"""PositioningSettings: defaults, the checks of every value, JSON round trip, old and unknown keys, the stored
layouts of checkpoints and the command-line options."""
import argparse
import json

import pytest

from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.positioning.settings import PositioningSettings, add_positioning_arguments, \
    positioning_overrides, setting_names, stored_positioning_settings


def test_defaults():
    assert PositioningSettings().to_json() == {"search_radius_mm": 20.0, "repositioning_steps": 1,
                                               "anatomy_tolerance_mm": 60.0, "coarse_placement": "hybrid",
                                               "layout_guard": "fallback"}


BAD = [
    # (setting, value, part of the message)
    ("search_radius_mm", -1.0, "search_radius_mm (search radius"),
    ("search_radius_mm", float("nan"), "must be a non-negative number, got nan"),
    ("search_radius_mm", "20", "must be a non-negative number, got '20'"),
    ("search_radius_mm", True, "must be a non-negative number, got True"),
    ("search_radius_mm", None, "must be a non-negative number, got None"),
    ("anatomy_tolerance_mm", float("inf"), "anatomy_tolerance_mm (reject"),
    ("anatomy_tolerance_mm", -5, "got -5"),
    ("repositioning_steps", -1, "repositioning_steps (re-searches"),
    ("repositioning_steps", 1.0, "must be a non-negative integer, got 1.0"),
    ("repositioning_steps", "2", "must be a non-negative integer, got '2'"),
    ("repositioning_steps", False, "must be a non-negative integer, got False"),
    ("coarse_placement", "centre", "coarse_placement must be one of joint, components, hybrid, got 'centre'"),
    ("coarse_placement", None, "got None"),
    ("layout_guard", "warn", "layout_guard must be one of fallback, flag, off, got 'warn'"),
    ("layout_guard", False, "layout_guard must be one of fallback, flag, off, got False"),
]


@pytest.mark.parametrize("name, value, needle", BAD, ids=[f"{n}={v!r}" for n, v, _ in BAD])
def test_bad_values_are_refused_naming_the_source(name, value, needle):
    with pytest.raises(StippleInputError) as direct:
        PositioningSettings(**{name: value})
    assert needle in str(direct.value)
    with pytest.raises(StippleInputError) as from_json:
        PositioningSettings.from_json({name: value}, "fold_0/checkpoint_final.pth")
    assert str(from_json.value).startswith("fold_0/checkpoint_final.pth: ") and needle in str(from_json.value)


@pytest.mark.parametrize("values", [
    {"search_radius_mm": 0, "repositioning_steps": 0, "anatomy_tolerance_mm": 0, "coarse_placement": "components"},
    {"search_radius_mm": 3, "repositioning_steps": 5, "anatomy_tolerance_mm": 1e9},
])
def test_valid_values_are_stored_with_their_types(values):
    settings = PositioningSettings(**values)
    assert isinstance(settings.search_radius_mm, float) and isinstance(settings.anatomy_tolerance_mm, float)
    assert isinstance(settings.repositioning_steps, int)


def test_json_round_trip():
    settings = PositioningSettings(search_radius_mm=12.5, repositioning_steps=3, anatomy_tolerance_mm=0.0,
                                   coarse_placement="components")
    text = json.dumps(settings.to_json())
    assert PositioningSettings.from_json(json.loads(text), "a report") == settings


def test_json_without_keys_gets_the_defaults():
    assert PositioningSettings.from_json({}, "old checkpoint") == PositioningSettings()
    assert PositioningSettings.from_json({"search_radius_mm": 5}, "old checkpoint") == \
        PositioningSettings(search_radius_mm=5.0)


def test_unknown_keys_are_an_error_naming_the_source():
    with pytest.raises(StippleInputError, match=r"^my.json: unknown positioning setting\(s\) \['radius_mm'\]; "
                                                r"known: search_radius_mm, repositioning_steps"):
        PositioningSettings.from_json({"radius_mm": 5}, "my.json")
    with pytest.raises(StippleInputError, match="my.json: the positioning settings must be a JSON object"):
        PositioningSettings.from_json([5], "my.json")


def test_overrides_replace_only_what_they_name():
    model = PositioningSettings(search_radius_mm=30.0, coarse_placement="components")
    assert model.with_overrides({"repositioning_steps": 0}, "cli") == \
        PositioningSettings(search_radius_mm=30.0, repositioning_steps=0, coarse_placement="components")
    with pytest.raises(StippleInputError, match="^cli: search_radius_mm"):
        model.with_overrides({"search_radius_mm": -2.0}, "cli")


def test_checkpoint_layouts():
    """Trainers store the settings under "positioning"; older checkpoints held them at the top level of the
    trainer's settings (next to keys that are not positioning settings), or not at all."""
    new = {"trainer": "STIPPLETrainer", "floor": 1e-3, "positioning": {"search_radius_mm": 10.0, "coarse_placement": "joint"}}
    old = {"trainer": "STIPPLETrainer", "floor": 1e-3, "search_radius_mm": 10.0, "coarse_placement": "joint"}
    assert stored_positioning_settings(new, "ckpt") == stored_positioning_settings(old, "ckpt") == \
        PositioningSettings(search_radius_mm=10.0, coarse_placement="joint")
    # a setting a checkpoint does not hold gets today's default
    assert stored_positioning_settings({"trainer": "STIPPLETrainer"}, "ckpt") == PositioningSettings()
    with pytest.raises(StippleInputError, match="^ckpt: unknown positioning setting"):
        stored_positioning_settings({"positioning": {"radius": 1}}, "ckpt")


def _parser():
    parser = argparse.ArgumentParser()
    add_positioning_arguments(parser, "test", aliases={"coarse_placement": ("--coarse",)})
    return parser


def test_command_line_options_are_the_setting_names():
    args = _parser().parse_args(["--search-radius-mm", "7", "--repositioning-steps", "2",
                                 "--anatomy-tolerance-mm", "0", "--coarse", "components", "--layout-guard", "flag"])
    overrides = positioning_overrides(args)
    assert overrides == {"search_radius_mm": 7.0, "repositioning_steps": 2, "anatomy_tolerance_mm": 0.0,
                         "coarse_placement": "components", "layout_guard": "flag"}
    assert sorted(overrides) == sorted(setting_names())
    assert positioning_overrides(_parser().parse_args([])) == {}
    with pytest.raises(StippleInputError, match="^the command line: repositioning_steps"):
        positioning_overrides(_parser().parse_args(["--repositioning-steps", "-1"]))
