"""The method table (nnunet_stipple.benchmarks.study.methods): every entry matches its trainer."""
from __future__ import annotations

import pytest

from nnunet_stipple.benchmarks.study.methods import METHOD_ORDER, METHOD_TABLE, METHODS, method


def _trainer_class(name: str):
    """The trainer class nnUNetv2_train would find: one of nnunet_stipple.trainers, else one of nnU-Net's."""
    from os.path import join

    import nnunetv2
    import nnunet_stipple.trainers
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    return getattr(nnunet_stipple.trainers, name, None) or recursive_find_python_class(
        join(nnunetv2.__path__[0], "training", "nnUNetTrainer"), name, "nnunetv2.training.nnUNetTrainer")


@pytest.mark.parametrize("entry", METHOD_TABLE, ids=lambda m: m.name)
def test_method_entry_matches_its_trainer(entry):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunet_stipple.pseudo_labeling.loop import PseudoLabelLoopMixin
    from nnunet_stipple.trainers import STIPPLETrainer
    from nnunet_stipple.trainers.semi_supervised_base import UnlabeledTrainingMixin
    trainer = _trainer_class(entry.trainer)
    assert trainer is not None and issubclass(trainer, nnUNetTrainer), entry.trainer
    assert issubclass(trainer, STIPPLETrainer) == entry.uses_prior
    assert issubclass(trainer, PseudoLabelLoopMixin) == entry.relabels
    assert issubclass(trainer, UnlabeledTrainingMixin) == entry.semi_supervised
    assert entry.relative_cost >= 1
    if entry.relabels:      # the counterpart is the same method without relabeling
        assert entry.relabel_counterpart in METHODS
        counterpart = method(entry.relabel_counterpart)
        assert not counterpart.relabels and counterpart.uses_prior == entry.uses_prior


def test_method_table_names_labels_and_rows_are_unique():
    from nnunet_stipple.benchmarks.study.partial_study import PARTIAL_METHODS, is_partial_method
    for field in ("name", "label", "table_row"):
        values = [getattr(m, field) for m in METHOD_TABLE]
        assert len(set(values)) == len(values), field
    # one trainer per method within a kind of study; the partial-labels study's two nnU-Net baselines share
    # nnU-Net's trainer and differ in their data (missing organs as background / as ignore)
    study = [m for m in METHOD_TABLE if not is_partial_method(m.name)]
    assert len({m.trainer for m in study}) == len(study)
    assert method("partial_plain").trainer == method("partial_ignore").trainer
    assert len({m.trainer for m in METHOD_TABLE if is_partial_method(m.name)}) == len(PARTIAL_METHODS) - 1
    assert sorted(m.table_row for m in study) == list(range(len(study)))
    assert min(method(m).table_row for m in PARTIAL_METHODS) > max(m.table_row for m in study)
    assert METHODS == {m.name: m.trainer for m in METHOD_TABLE}
    assert tuple(m for m in METHOD_ORDER if not is_partial_method(m)) == (
        "plain", "stipple_norelab", "plain_relabel", "stipple",            # the paper's Table 2
        "mean_teacher", "ua_mt", "sassnet", "adversarial_confidence",      # then its Table 3
        "flare22_rounds")                                                  # then FLARE22's recipe
    assert tuple(m for m in METHOD_ORDER if is_partial_method(m)) == tuple(PARTIAL_METHODS)


def test_a_study_without_methods_trains_table_2_only():
    """Table 3's competitors are asked for by name: adding one must not put trainings in front of the missing rows
    of an existing evidence study."""
    from nnunet_stipple.benchmarks.study.methods import DEFAULT_METHODS
    assert DEFAULT_METHODS == ("plain", "plain_relabel", "stipple_norelab", "stipple")
    assert not any(method(name).semi_supervised for name in DEFAULT_METHODS)
