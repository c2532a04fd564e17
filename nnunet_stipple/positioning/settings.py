"""The settings of positioning a prior in a volume: one typed object, its defaults, checks and JSON form.

A model's settings come from its trainer (``STIPPLETrainer.stipple_search_radius_mm`` and its siblings,
the knobs trainer variants change), are stored with the prior in every checkpoint, and can be overridden
per prediction (``nnUNetv2_stipple_predict --search-radius-mm ...``) or per call of
``nnUNetv2_stipple_position``. Every path builds a :class:`PositioningSettings`, so the values are checked
here and only here, and every positioning report records the settings it ran with.

Checkpoints written before a setting existed hold no value for it: it gets its default below. An unknown
key is an error (a typo must not fall back to a default silently).
"""
from __future__ import annotations

import argparse
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from numbers import Integral, Real
from typing import Any, Dict, Mapping, Optional

from nnunet_stipple.errors import StippleInputError

COARSE_PLACEMENTS = ("joint", "components", "hybrid")
LAYOUT_GUARDS = ("fallback", "flag", "off")
CHOICES = {"coarse_placement": COARSE_PLACEMENTS, "layout_guard": LAYOUT_GUARDS}   # settings with named values
TRAINER_ATTRIBUTE_PREFIX = "stipple_"   # a trainer's knob for setting x is its attribute stipple_x
STORED_KEY = "positioning"              # the settings' key among a trainer's stored settings

# what each setting means, for error messages and --help texts (the key is the field name)
DESCRIPTIONS = {
    "search_radius_mm": "search radius of each organ's exhaustive KL translation search, in mm per axis (+-)",
    "repositioning_steps": "re-searches from the prior-driven probabilities after the first placement "
                           "(stops early when a step moves nothing)",
    "anatomy_tolerance_mm": "reject an organ placement more than this far (mm) from the field-of-view "
                            "displacement most organs agree on, and place it from the others instead; "
                            "0 switches the check off",
    "coarse_placement": "where each organ's KL search starts: 'joint' searches one displacement of all "
                        "organs' mean training centres that best explains the first prediction; "
                        "'components' starts from each organ's largest predicted component; 'hybrid' takes the "
                        "components that agree with each other (anatomy_tolerance_mm) and the joint start for "
                        "the others",
    "layout_guard": "what a case whose first prediction holds another organ layout than the prior's (a mirrored "
                    "layout fitting it far better, and as well as the training cases fit theirs) gets: 'fallback' flags it and predicts without the prior "
                    "(plain nnU-Net output), 'flag' only flags it, 'off' does not check",
}


def _is_number(x) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


@dataclass(frozen=True)
class PositioningSettings:
    """How a prior is placed in a volume (see :func:`nnunet_stipple.positioning.procedure.place_prior`).

    Constructing one checks every value (a :class:`StippleInputError` on a bad one); the constructors
    :meth:`from_json`, :meth:`with_overrides` and :meth:`from_trainer` prefix the message with the
    source of the values (a checkpoint, the command line, a trainer class)."""
    search_radius_mm: float = 20.0
    repositioning_steps: int = 1
    anatomy_tolerance_mm: float = 60.0
    coarse_placement: str = "hybrid"
    layout_guard: str = "fallback"

    def __post_init__(self):
        for name in ("search_radius_mm", "anatomy_tolerance_mm"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise StippleInputError(f"{name} ({DESCRIPTIONS[name]}) must be a non-negative number, "
                                        f"got {value!r}.")
            object.__setattr__(self, name, float(value))
        steps = self.repositioning_steps
        if not isinstance(steps, Integral) or isinstance(steps, bool) or steps < 0:
            raise StippleInputError(f"repositioning_steps ({DESCRIPTIONS['repositioning_steps']}) must be a "
                                    f"non-negative integer, got {steps!r}.")
        object.__setattr__(self, "repositioning_steps", int(steps))
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise StippleInputError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}.")

    # ---- JSON ---------------------------------------------------------------------------------------------
    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any], source: str) -> "PositioningSettings":
        """Settings stored as JSON (a checkpoint's prior, a report); missing keys get their defaults."""
        if not isinstance(d, Mapping):
            raise StippleInputError(f"{source}: the positioning settings must be a JSON object, got {d!r}.")
        return cls().with_overrides(d, source)

    def with_overrides(self, overrides: Mapping[str, Any], source: str) -> "PositioningSettings":
        """A copy with ``overrides`` (setting name -> value) applied and checked."""
        unknown = sorted(set(overrides) - set(setting_names()))
        with _named(source):
            if unknown:
                raise StippleInputError(f"unknown positioning setting(s) {unknown}; known: "
                                        f"{', '.join(setting_names())}.")
            return replace(self, **overrides)

    @classmethod
    def from_trainer(cls, trainer) -> "PositioningSettings":
        """The settings a STIPPLE trainer defines as ``stipple_<setting>`` attributes (errors name its class)."""
        values = {name: getattr(trainer, TRAINER_ATTRIBUTE_PREFIX + name) for name in setting_names()}
        attributes = ", ".join(TRAINER_ATTRIBUTE_PREFIX + name for name in setting_names())
        return cls().with_overrides(values, f"{type(trainer).__name__} ({attributes})")


def setting_names():
    return tuple(f.name for f in fields(PositioningSettings))


def stored_positioning_settings(trainer_settings: Mapping[str, Any], source: str) -> PositioningSettings:
    """The positioning settings among a trainer's stored settings (``STIPPLETrainer.stipple_settings``, kept
    with the prior in every checkpoint and in ``stipple.json``): under ``"positioning"``. Checkpoints written
    before the settings were grouped hold them at the top level, between the trainer's other settings."""
    if STORED_KEY in trainer_settings:
        return PositioningSettings.from_json(trainer_settings[STORED_KEY], source)
    flat = {name: trainer_settings[name] for name in setting_names() if name in trainer_settings}
    return PositioningSettings.from_json(flat, source)


@contextmanager
def _named(source: str):
    """Prefix the message of a bad value with where it came from."""
    try:
        yield
    except StippleInputError as e:
        raise StippleInputError(f"{source}: {e}") from None


# ---- command line -------------------------------------------------------------------------------------------
def command_line_flag(name: str) -> str:
    """``--search-radius-mm`` for ``search_radius_mm``: every command spells a setting the same way."""
    return "--" + name.replace("_", "-")


def add_positioning_arguments(parser: argparse.ArgumentParser, description: str,
                              aliases: Optional[Mapping[str, tuple]] = None) -> None:
    """One option per setting, in a ``--help`` group with ``description`` (say there which value a setting
    that is not given takes). A setting not given is left out of the parsed arguments. ``aliases``
    (setting name -> extra option strings) keeps older spellings."""
    group = parser.add_argument_group("positioning settings", description)
    types = {f.name: f.type for f in fields(PositioningSettings)}
    defaults = PositioningSettings()
    for name in setting_names():
        kwargs = {"choices": CHOICES[name]} if name in CHOICES else \
            {"type": int if types[name] in (int, "int") else float}
        group.add_argument(command_line_flag(name), *(aliases or {}).get(name, ()), dest=name,
                           default=argparse.SUPPRESS,
                           help=f"{DESCRIPTIONS[name]} (built-in default {getattr(defaults, name)!r})", **kwargs)


def positioning_overrides(args: argparse.Namespace) -> Dict[str, Any]:
    """The positioning settings given on the command line (see :func:`add_positioning_arguments`), checked:
    a bad value is a :class:`StippleInputError` naming the command line."""
    overrides = {name: getattr(args, name) for name in setting_names() if hasattr(args, name)}
    PositioningSettings().with_overrides(overrides, "the command line")
    return overrides
