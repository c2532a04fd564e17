"""Settings of the teacher-student trainers (mean teacher, UA-MT): the ``semi_supervised`` object of
``stipple_run.json`` (all keys optional), checked once when the trainer is created.

    {"label_proportion": 0.1, "semi_supervised": {"ema_decay": 0.99, "unlabeled_batch_ratio": 1.0}}

The defaults are the values of UA-MT's public code (Yu et al., MICCAI 2019, github.com/yulequan/UA-MT,
``train_LA_meanteacher_certainty_unlabel.py``), which also trains the paper's "vanilla MT" row; the mean
teacher trainer uses the same ones so that the two methods differ only by the uncertainty mask:

* ``ema_decay`` 0.99: teacher = decay * teacher + (1 - decay) * student after every optimizer step, with
  Tarvainen & Valpola's warm-up ``min(1 - 1 / (step + 1), decay)`` (the true average of the first steps);
* ``consistency_weight`` 0.1: lambda_max of the consistency term;
* ``consistency_rampup`` 1.0: fraction of the training's iterations (``num_epochs * num_iterations_per_epoch``)
  over which lambda follows the sigmoid ramp-up ``exp(-5 (1 - t)^2)``; UA-MT's code ramps over 40 x 150 of its
  6000 iterations, i.e. the whole training (0: lambda_max from the first iteration);
* ``unlabeled_batch_ratio`` 1.0: unlabeled patches per labeled patch of nnU-Net's batch (UA-MT: 2 + 2);
* ``teacher_noise_std`` 0.1 and ``teacher_noise_clip`` 0.2: the teacher's input is the student's augmented
  unlabeled patch plus ``clip(N(0, std^2), -clip, clip)`` (nnU-Net's normalised intensities, as UA-MT's);
* UA-MT only: ``mc_passes`` 8 (T stochastic teacher passes), ``mc_dropout`` 0.5 (channel dropout of the
  paper's V-Net, see :mod:`nnunet_stipple.semi_supervised.consistency`), ``uncertainty_threshold_start`` 0.75
  (the threshold ramps from 0.75 ln K to ln K over the training, K classes).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields

from nnunet_stipple.errors import StippleInputError

SETTINGS_KEY = "semi_supervised"      # the object's key in stipple_run.json
UNCERTAINTY_KEYS = ("mc_passes", "mc_dropout", "uncertainty_threshold_start")


def _number(source: str, name: str, value, low: float, high: float, low_open=False, high_open=False) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise StippleInputError(f"{source}: {SETTINGS_KEY}.{name} must be a number in {interval}, got {value!r}")


@dataclass(frozen=True)
class SemiSupervisedSettings:
    ema_decay: float = 0.99
    consistency_weight: float = 0.1
    consistency_rampup: float = 1.0
    unlabeled_batch_ratio: float = 1.0
    teacher_noise_std: float = 0.1
    teacher_noise_clip: float = 0.2
    mc_passes: int = 8
    mc_dropout: float = 0.5
    uncertainty_threshold_start: float = 0.75

    def validate(self, source: str) -> "SemiSupervisedSettings":
        _number(source, "ema_decay", self.ema_decay, 0, 1, high_open=True)
        _number(source, "consistency_weight", self.consistency_weight, 0, math.inf, high_open=True)
        _number(source, "consistency_rampup", self.consistency_rampup, 0, 1)
        # at most 8 unlabeled patches per labeled one: more is a typo (and a batch that does not fit)
        _number(source, "unlabeled_batch_ratio", self.unlabeled_batch_ratio, 0, 8, low_open=True)
        _number(source, "teacher_noise_std", self.teacher_noise_std, 0, math.inf, high_open=True)
        _number(source, "teacher_noise_clip", self.teacher_noise_clip, 0, math.inf, high_open=True)
        passes = self.mc_passes
        if not isinstance(passes, numbers.Integral) or isinstance(passes, bool) or passes < 2:
            raise StippleInputError(f"{source}: {SETTINGS_KEY}.mc_passes must be an integer >= 2 (stochastic "
                                    f"teacher passes), got {passes!r}")
        _number(source, "mc_dropout", self.mc_dropout, 0, 1, high_open=True)
        _number(source, "uncertainty_threshold_start", self.uncertainty_threshold_start, 0, 1, low_open=True)
        return self

    def to_json(self, uncertainty: bool) -> dict:
        """The settings a trainer uses (the UA-MT keys only where the uncertainty mask is used)."""
        d = asdict(self)
        return d if uncertainty else {k: v for k, v in d.items() if k not in UNCERTAINTY_KEYS}

    @classmethod
    def from_dict(cls, d, source: str, uncertainty: bool = True) -> "SemiSupervisedSettings":
        """Check ``d`` (the ``semi_supervised`` object, or None for the defaults); ``uncertainty`` False refuses
        the UA-MT keys (a trainer without uncertainty mask would silently ignore them)."""
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise StippleInputError(f"{source}: {SETTINGS_KEY} must be a JSON object of settings, e.g. "
                                    f'{{"ema_decay": 0.99}}, got {d!r}')
        known = [f.name for f in fields(cls) if uncertainty or f.name not in UNCERTAINTY_KEYS]
        unknown = sorted(set(d) - set(known))
        if unknown:
            extra = "" if uncertainty else f" ({', '.join(UNCERTAINTY_KEYS)} are UA-MT settings)"
            raise StippleInputError(f"{source}: unknown {SETTINGS_KEY} setting(s) {unknown} for this trainer"
                                    f"{extra}; known: {known}")
        return cls(**d).validate(source)
