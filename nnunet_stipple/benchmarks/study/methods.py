"""The methods the study compares (the rows of the paper's Table 2, then the semi-supervised methods of its
Table 3), each described once, by one entry of :data:`METHOD_TABLE`: a new method is one entry here plus its
trainer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from nnunet_stipple.priors.algorithm import DEFAULT_NUM_BINS

DEFAULT_BINS = DEFAULT_NUM_BINS       # the paper's B for every proportion (one default with the trainer and the builder)


@dataclass(frozen=True)
class Method:
    """One method of the study: a row of the paper's Table 2 and the nnU-Net trainer that runs it."""
    name: str                  # on the command line, in run ids and run folders
    trainer: str               # nnU-Net trainer class (of nnunet_stipple.trainers or of nnU-Net)
    label: str                 # row label in the report's tables and plots
    table_row: int             # position in the paper's Table 2: the report's row order and the training order
    uses_prior: bool           # trains with the spatial prior: runs per bins B, positioning quality measured
    # a relabeling method: the method without relabeling whose finished model is its round 0 and whose results
    # stand for it where there is nothing to relabel; None for the others
    relabel_counterpart: Optional[str] = None
    # trains on unlabeled patches at every iteration (teacher-student methods): its trainer refuses to run where
    # nothing is unlabeled, and the study skips it there
    semi_supervised: bool = False
    # seconds per iteration relative to plain nnU-Net, for the study's time estimate (a rough count: a forward pass
    # costs about a third of a training step per patch; mean teacher trains on B labeled + B unlabeled patches and
    # runs the teacher once on B: 7/3, UA-MT also 8 dropout passes: 15/3; SASSNet and adversarial confidence train
    # the U-Net on 2B patches (2) plus a discriminator's forward/backward passes on them (about 0.5) and, SASSNet, the
    # labels' distance maps on the CPU, adversarial confidence a second discriminator pass on B (about 0.5): 3 each,
    # unmeasured); `cost` measures plain and STIPPLE only
    relative_cost: float = 1.0
    # trained by a study run without --methods: the paper's Table 2 (the evidence study); Table 3's competitors are
    # asked for by name, so adding one does not put new trainings in front of an existing study's missing rows
    in_default_study: bool = True
    # a relabeling method's round policy (stipple_run.json's round_policy, see
    # nnunet_stipple.pseudo_labeling.round_policy), written to its stipple_run.json; None: the paper's gamma schedule
    round_policy: Optional[str] = None

    @property
    def relabels(self) -> bool:
        return self.relabel_counterpart is not None


# The methods, in the order the command line and study.json list them.
METHOD_TABLE: Tuple[Method, ...] = (
    Method("plain", "nnUNetTrainer_LabelProportion", "Baseline (plain)", table_row=0, uses_prior=False),
    Method("plain_relabel", "nnUNetTrainer_PseudoLabel", "Baseline w relab", table_row=2, uses_prior=False,
           relabel_counterpart="plain"),
    Method("stipple_norelab", "STIPPLETrainer", "STIPPLE w/o relab", table_row=1, uses_prior=True),
    Method("stipple", "STIPPLETrainer_PseudoLabel", "STIPPLE", table_row=3, uses_prior=True,
           relabel_counterpart="stipple_norelab"),
    Method("mean_teacher", "nnUNetTrainer_MeanTeacher", "Mean teacher", table_row=4, uses_prior=False,
           semi_supervised=True, relative_cost=7 / 3, in_default_study=False),
    Method("ua_mt", "nnUNetTrainer_UAMT", "UA-MT (consistency)", table_row=5, uses_prior=False,
           semi_supervised=True, relative_cost=15 / 3, in_default_study=False),
    Method("sassnet", "nnUNetTrainer_SASSNet", "SASSNet (shape-aware)", table_row=6, uses_prior=False,
           semi_supervised=True, relative_cost=3.0, in_default_study=False),
    Method("adversarial_confidence", "nnUNetTrainer_AdversarialConfidence", "Adversarial (confidence)", table_row=7,
           uses_prior=False, semi_supervised=True, relative_cost=3.0, in_default_study=False),
    # the FLARE22 winners' multi-round recipe (issue 15): whole-case pseudo-labels, from scratch, T = 3, cases whose
    # pseudo-label changes between consecutive rounds dropped; round 0 is the plain model
    Method("flare22_rounds", "nnUNetTrainer_FLARE22Rounds", "FLARE22 rounds (agreement)", table_row=8,
           uses_prior=False, relabel_counterpart="plain", in_default_study=False, round_policy="agreement"),
    # the partial-labels simulation (thesis ch. 3; only in a study with --partial-remove, see
    # nnunet_stipple.benchmarks.study.partial_study): every training case labeled, 1 - alpha of them lose organs
    Method("partial_plain", "nnUNetTrainer_LabelProportion", "nnU-Net (missing organs as background)",
           table_row=20, uses_prior=False, in_default_study=False),
    Method("partial_ignore", "nnUNetTrainer_LabelProportion", "nnU-Net (partial cases' background ignored)",
           table_row=21, uses_prior=False, in_default_study=False),
    Method("inerrant", "nnUNetTrainer_INERRANT", "INERRANT0 (ambiguity maps)", table_row=22, uses_prior=False,
           in_default_study=False),
    Method("inerrant_prior", "STIPPLETrainer_INERRANT", "INERRANT0 + prior", table_row=23, uses_prior=True,
           in_default_study=False),
)
_METHOD_BY_NAME: Dict[str, Method] = {m.name: m for m in METHOD_TABLE}
METHODS: Dict[str, str] = {m.name: m.trainer for m in METHOD_TABLE}          # name -> trainer
DEFAULT_METHODS = tuple(m.name for m in METHOD_TABLE if m.in_default_study)
METHOD_ORDER = tuple(m.name for m in sorted(METHOD_TABLE, key=lambda m: m.table_row))   # Table 2, then 3


def method(name: str) -> Method:
    """The entry of :data:`METHOD_TABLE` named ``name`` (KeyError if none)."""
    return _METHOD_BY_NAME[name]
