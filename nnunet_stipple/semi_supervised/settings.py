"""Settings of the semi-supervised trainers: the ``semi_supervised`` object of ``stipple_run.json`` (all keys
optional), checked once when the trainer is created (and, key by key, when the file is read). One settings class per
family of trainers (:class:`SemiSupervisedSettings`: mean teacher and UA-MT; :class:`SASSNetSettings`;
:class:`AdversarialConfidenceSettings`); a key the trainer's class does not know is an error.

Teacher-student trainers (mean teacher, UA-MT):

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
from typing import Dict, Optional, Sequence, Tuple

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


def _integer(source: str, name: str, value, low: int, what: str) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise StippleInputError(f"{source}: {SETTINGS_KEY}.{name} must be an integer >= {low} ({what}), got {value!r}")


def _parse(cls, d, source: str, known: Sequence[str], hint: str = ""):
    """``cls(**d)`` validated, refusing keys outside ``known`` (a trainer would silently ignore them)."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise StippleInputError(f"{source}: {SETTINGS_KEY} must be a JSON object of settings, e.g. "
                                f'{{"unlabeled_batch_ratio": 1.0}}, got {d!r}')
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise StippleInputError(f"{source}: unknown {SETTINGS_KEY} setting(s) {unknown} for this trainer"
                                f"{hint}; known: {list(known)}")
    return cls(**d).validate(source)


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
        _integer(source, "mc_passes", self.mc_passes, 2, "stochastic teacher passes")
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
        known = [f.name for f in fields(cls) if uncertainty or f.name not in UNCERTAINTY_KEYS]
        hint = "" if uncertainty else f" ({', '.join(UNCERTAINTY_KEYS)} are UA-MT settings)"
        return _parse(cls, d, source, known, hint)

    @classmethod
    def known_keys(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class SASSNetSettings:
    """SASSNet (Li, Zhang, He, MICCAI 2020; ``nnUNetTrainer_SASSNet``). Defaults from the paper's section 3
    ("Implementation Details") unless said otherwise:

    * ``unlabeled_batch_ratio`` 1.0: unlabeled patches per labeled one (its code: 2 labeled + 2 unlabeled of 4);
    * ``sdm_weight`` 0.3: alpha of Eq. 2, L_s = L_seg + alpha L_sdm (sec. 2.3, value sec. 3; code ``--beta 0.3``);
    * ``adversarial_weight`` 0.001: beta_max of Eq. 5-6, beta(t) = 0.001 exp(-5 (1 - t / t_max)^2) (sec. 3; the public
      code's default is 0.01, the paper's text says 0.001 and is followed here);
    * ``adversarial_rampup`` 1.0: fraction of the training's iterations that is t_max (sec. 3: t counts iterations up
      to the end; its code ramps over 40 x 150 = its 6000 iterations, the whole training);
    * ``discriminator_lr`` 1e-4: Adam, constant learning rate (sec. 3; betas (0.9, 0.99) of the public code);
    * ``discriminator_features`` 64 and ``discriminator_dropout`` 0.5: the discriminator's first width (doubling per
      layer) and its channel dropout (the public code's ``FC3DDiscriminator``, ndf = 64, ``Dropout3d(0.5)``).
    """
    unlabeled_batch_ratio: float = 1.0
    sdm_weight: float = 0.3
    adversarial_weight: float = 0.001
    adversarial_rampup: float = 1.0
    discriminator_lr: float = 1e-4
    discriminator_features: int = 64
    discriminator_dropout: float = 0.5

    def validate(self, source: str) -> "SASSNetSettings":
        _number(source, "unlabeled_batch_ratio", self.unlabeled_batch_ratio, 0, 8, low_open=True)
        _number(source, "sdm_weight", self.sdm_weight, 0, math.inf, high_open=True)
        _number(source, "adversarial_weight", self.adversarial_weight, 0, math.inf, high_open=True)
        _number(source, "adversarial_rampup", self.adversarial_rampup, 0, 1)
        _number(source, "discriminator_lr", self.discriminator_lr, 0, 1, low_open=True)
        _integer(source, "discriminator_features", self.discriminator_features, 1, "channels of the first layer")
        _number(source, "discriminator_dropout", self.discriminator_dropout, 0, 1, high_open=True)
        return self

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d, source: str) -> "SASSNetSettings":
        return _parse(cls, d, source, cls.known_keys())

    @classmethod
    def known_keys(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class AdversarialConfidenceSettings:
    """Adversarial confidence learning (Nie, Gao, Wang, Shen: "ASDNet: Attention based semi-supervised deep networks
    for medical image segmentation", MICCAI 2018; ``nnUNetTrainer_AdversarialConfidence``).

    The ASDNet paper is not among the project's paper files and these values were NOT checked against it. They are
    the values of Hung et al. ("Adversarial learning for semi-supervised semantic segmentation", BMVC 2018, public
    code ``AdvSemiSeg``), whose fully convolutional confidence discriminator and confidence-masked self-training
    loss ASDNet builds on, as recalled from memory:

    * ``unlabeled_batch_ratio`` 1.0: unlabeled patches per labeled one (Hung et al. alternate equal batches);
    * ``adversarial_weight`` 0.01: lambda_adv of the adversarial loss on the labeled predictions;
    * ``semi_weight`` 0.1: lambda_semi of the masked cross-entropy on the unlabeled patches;
    * ``confidence_threshold`` 0.2: a voxel enters the masked cross-entropy where the confidence exceeds it;
    * ``semi_start`` 0.25: fraction of the training before the masked cross-entropy starts, so that the confidence
      network has learned something first (Hung et al.: 5000 of 20000 iterations);
    * ``discriminator_lr`` 1e-4: Adam (betas (0.9, 0.99)), constant;
    * ``discriminator_features`` 64: width of the first confidence-network layer, doubling per layer.
    """
    unlabeled_batch_ratio: float = 1.0
    adversarial_weight: float = 0.01
    semi_weight: float = 0.1
    confidence_threshold: float = 0.2
    semi_start: float = 0.25
    discriminator_lr: float = 1e-4
    discriminator_features: int = 64

    def validate(self, source: str) -> "AdversarialConfidenceSettings":
        _number(source, "unlabeled_batch_ratio", self.unlabeled_batch_ratio, 0, 8, low_open=True)
        _number(source, "adversarial_weight", self.adversarial_weight, 0, math.inf, high_open=True)
        _number(source, "semi_weight", self.semi_weight, 0, math.inf, high_open=True)
        _number(source, "confidence_threshold", self.confidence_threshold, 0, 1, high_open=True)
        _number(source, "semi_start", self.semi_start, 0, 1)
        _number(source, "discriminator_lr", self.discriminator_lr, 0, 1, low_open=True)
        _integer(source, "discriminator_features", self.discriminator_features, 1, "channels of the first layer")
        return self

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d, source: str) -> "AdversarialConfidenceSettings":
        return _parse(cls, d, source, cls.known_keys())

    @classmethod
    def known_keys(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


# which trainers read which settings class (for the messages of check_semi_supervised_object)
SETTINGS_CLASSES: Dict[str, type] = {
    "nnUNetTrainer_MeanTeacher / nnUNetTrainer_UAMT": SemiSupervisedSettings,
    "nnUNetTrainer_SASSNet": SASSNetSettings,
    "nnUNetTrainer_AdversarialConfidence": AdversarialConfidenceSettings,
}


def check_semi_supervised_object(d, source: str) -> None:
    """When ``stipple_run.json`` is read, before the trainer is known: ``d`` must be an object whose keys all belong to
    one trainer family and whose values that family accepts (the trainer checks it again against its own class)."""
    if not isinstance(d, dict):
        _parse(SemiSupervisedSettings, d, source, ())   # the message for a non-object
    known_by_any = sorted({k for cls in SETTINGS_CLASSES.values() for k in cls.known_keys()})
    unknown = sorted(set(d) - set(known_by_any))
    if unknown:
        raise StippleInputError(f"{source}: unknown {SETTINGS_KEY} setting(s) {unknown}; known: "
                                + "; ".join(f"{t}: {list(c.known_keys())}" for t, c in SETTINGS_CLASSES.items()))
    first_error: Optional[StippleInputError] = None
    for cls in SETTINGS_CLASSES.values():
        if set(d) <= set(cls.known_keys()):
            try:
                cls.from_dict(d, source)
                return
            except StippleInputError as e:
                first_error = first_error or e
    if first_error is not None:
        raise first_error
    raise StippleInputError(f"{source}: the {SETTINGS_KEY} settings {sorted(d)} belong to different trainers; "
                            + "; ".join(f"{t}: {list(c.known_keys())}" for t, c in SETTINGS_CLASSES.items()))
