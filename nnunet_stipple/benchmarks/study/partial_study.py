"""The partial-labels simulation of the thesis (ch. 3, section 3.4.1) in the study harness.

A study started with ``--partial-remove CLASS ...`` (names of the dataset.json's labels) is a *partial-labels
study*: for every fold and label proportion alpha, ``1 - alpha`` of the fold's training cases (seeded by the
study's ``label_seed``, nested: the cases that lose organs at 70 % also lose them at 50 %) have those organs
removed from their label files; the fold's validation cases keep every organ, so the evaluation (nnU-Net's
``summary.json``, the report's Dice and NSD) is on fully labeled cases. Alpha is the proportion of training
cases that keep every organ; every training case is used (``label_proportion`` 1 in ``stipple_run.json``).

The derived data live in the study folder only, one pair of nnU-Net roots per (alpha, variant, fold)::

    DIR/partial_data/<alpha>/<variant>/fold_<f>/nnUNet_raw/<Dataset>/           (derive_partial_dataset)
    DIR/partial_data/<alpha>/<variant>/fold_<f>/nnUNet_preprocessed/<Dataset>/  (nnUNetv2_preprocess)
    DIR/partial_data/<alpha>/<variant>/fold_<f>/prepared.json                   (written last: complete)

The derived dataset keeps the source's name and id (it is alone in its roots), so nnU-Net's commands, the run
folders, the model folders, run.json, the record and the report are those of any study; only the training's
``nnUNet_raw`` / ``nnUNet_preprocessed`` point at the derived roots. Images are links to the source images; the
plans are the study's own plans file (e.g. ``nnUNetPlans_cpu2d``) copied from the source's preprocessed folder
(same dataset name, so the copy is what ``nnUNetv2_move_plans_between_datasets`` would write), with the source's
``splits_final.json`` (same folds) and ``dataset_fingerprint.json``; then ``nnUNetv2_preprocess -d ID
-plans_name PLANS -c CONFIG`` runs on the derived roots. ``prepared.json`` is written when all that succeeded; a
fold folder without it (an interrupted preparation) is removed and made again (``shutil.rmtree`` removes the
image links, never the source images).

Variants (what the removed organs become in the cases that lose them), per method:

==================  ==========  ==============================================================================
method              variant     trainer
==================  ==========  ==============================================================================
``partial_plain``   background  nnU-Net (``nnUNetTrainer_LabelProportion`` at proportion 1): the thesis's naive
                                baseline, missing organs learned as background
``partial_ignore``  ignore      the same trainer; every background voxel of a case that lacks organs is
                                nnU-Net's ignore label (thesis 3.3.1: with one softmax "when only one organ is
                                missing no background label can be used"); its annotated organs stay labeled
``inerrant``        background  ``nnUNetTrainer_INERRANT`` (INERRANT0: ambiguity maps from partial_labels.json)
``inerrant_prior``  background  ``STIPPLETrainer_INERRANT`` (INERRANT0 + STIPPLE's prior)
==================  ==========  ==============================================================================

A partial-labels study runs these four methods only, and they run in no other study (both refused with an
error, not skipped: a study folder holds one kind of study).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from nnunet_stipple.atomic import write_json_atomic
from nnunet_stipple.benchmarks.provenance import now
from nnunet_stipple.benchmarks.study.dataset import dataset_id, raw_dataset_folder
from nnunet_stipple.benchmarks.study.nnunet_commands import console_script, run_logged
from nnunet_stipple.errors import StippleInputError

PARTIAL_FOLDER = "partial_data"
PREPARED_FILE = "prepared.json"
PARTIAL_STUDY_KEY = "partial_labels"            # study.json's entry of a partial-labels study
# method -> variant of the derived labels it trains on
PARTIAL_METHODS: Dict[str, str] = {"partial_plain": "background", "partial_ignore": "ignore",
                                   "inerrant": "background", "inerrant_prior": "background"}

# (dataset name, configuration, plans, derived nnUNet_raw root, derived nnUNet_preprocessed root, log file, log)
#   -> the commands run; tests pass a fake one
Preprocessor = Callable[[str, str, str, Path, Path, Path, Callable[[str], None]], List[List[str]]]


def is_partial_method(name: str) -> bool:
    return name in PARTIAL_METHODS


def preprocess_command(dataset_name: str, configuration: str, plans: str) -> List[str]:
    return [console_script("nnUNetv2_preprocess"), "-d", str(dataset_id(dataset_name)), "-plans_name", plans,
            "-c", configuration, "-np", "2"]


def nnunet_preprocess(dataset_name: str, configuration: str, plans: str, raw_root: Path, pre_root: Path,
                      log_file: Path, log: Callable[[str], None]) -> List[List[str]]:
    """nnU-Net's own preprocessing of the derived dataset, on the derived roots only."""
    env = dict(os.environ, nnUNet_raw=str(Path(raw_root).resolve()),
               nnUNet_preprocessed=str(Path(pre_root).resolve()))
    cmd = preprocess_command(dataset_name, configuration, plans)
    run_logged(cmd, log_file, log, env=env)
    return [cmd]


def source_dataset_json(dataset_name: str) -> Tuple[dict, str]:
    """The source dataset's dataset.json (nnUNet_raw, else nnUNet_preprocessed) and where it was read."""
    from nnunet_stipple.nnunet_folders import nnunet_preprocessed_root
    candidates = [raw_dataset_folder(dataset_name)]
    try:
        candidates.append(nnunet_preprocessed_root() / dataset_name)
    except StippleInputError:
        pass
    for folder in candidates:
        if folder is not None and (folder / "dataset.json").is_file():
            f = folder / "dataset.json"
            return json.loads(f.read_text()), str(f)
    raise StippleInputError(f"--partial-remove: dataset.json of {dataset_name} not found in nnUNet_raw or "
                            f"nnUNet_preprocessed (set them to the source dataset's folders).")


def check_partial_remove(remove: Sequence[str], dataset_name: str) -> List[str]:
    """The class names to remove, checked against the source's dataset.json (before anything is planned)."""
    from nnunet_stipple.partial_labels.declaration import foreground_classes
    remove = list(dict.fromkeys(remove))
    dataset_json, source = source_dataset_json(dataset_name)
    names = list(foreground_classes(dataset_json, source).values())
    if not remove:
        raise StippleInputError(f"--partial-remove needs at least one class name; valid: {', '.join(names)}.")
    for r in remove:
        if r not in names:
            raise StippleInputError(f"--partial-remove: {r!r} is not a foreground class of {source}; valid class "
                                    f"names: {', '.join(names)}.")
    if len(remove) == len(names):
        raise StippleInputError(f"--partial-remove removes every class ({', '.join(names)}): the partial cases "
                                f"would annotate nothing; keep at least one class.")
    return remove


def check_partial_methods(methods: Sequence[str], partial: bool) -> None:
    """A partial-labels study trains the partial methods only; the partial methods need one."""
    if partial:
        other = [m for m in methods if not is_partial_method(m)]
        if other:
            raise StippleInputError(f"Method(s) {', '.join(other)} are not partial-labels methods: a study with "
                                    f"--partial-remove runs {', '.join(PARTIAL_METHODS)} only (use another "
                                    f"--study-dir for the label-efficiency methods).")
    else:
        asked = [m for m in methods if is_partial_method(m)]
        if asked:
            raise StippleInputError(f"Method(s) {', '.join(asked)} belong to the partial-labels simulation: give "
                                    f"the organs to remove with --partial-remove CLASS ... (class names of "
                                    f"dataset.json).")


def check_same_partial(existing: Optional[dict], remove: Optional[Sequence[str]], where: Path) -> None:
    """A study folder keeps its kind: partial-labels (with the same organs removed) or not."""
    if existing is None:
        return
    have = existing.get(PARTIAL_STUDY_KEY)
    have_remove = have.get("remove") if have else None
    asked = list(remove) if remove else None
    if have_remove != asked:
        def kind(r):
            return f"a partial-labels study removing {' '.join(r)}" if r else "not a partial-labels study"
        raise StippleInputError(f"{where} is {kind(have_remove)}; asked: {kind(asked)}. Use the study's own "
                                f"--partial-remove setting or another --study-dir.")


def losing_proportion(alpha: float) -> float:
    """The proportion of training cases that lose the organs at alpha (in %, the proportion that keeps them)."""
    return max(0.0, 1 - float(alpha) / 100)


def losing_cases(training_cases: Sequence[str], alpha: float, seed: int) -> List[str]:
    """The fold's training cases that lose the organs at proportion alpha (in %, the proportion that keeps them)."""
    from nnunet_stipple.partial_labels.simulate import cases_losing_labels
    return cases_losing_labels(training_cases, losing_proportion(alpha), seed)


@dataclass
class PartialStudy:
    """The partial-labels setting of one study and the derived data of its (alpha, variant, fold)."""
    study_dir: Path
    dataset_name: str
    configuration: str
    plans: str
    remove: List[str]
    seed: int
    preprocessor: Preprocessor = nnunet_preprocess
    folds: Dict[int, Tuple[List[str], List[str]]] = field(default_factory=dict)   # fold -> (training, validation)

    def data_folder(self, alpha: float, variant: str, fold: int) -> Path:
        from nnunet_stipple.benchmarks.study.planning import alpha_str
        return Path(self.study_dir) / PARTIAL_FOLDER / alpha_str(alpha) / variant / f"fold_{fold}"

    def roots(self, alpha: float, variant: str, fold: int) -> Dict[str, str]:
        """The environment of a training on the derived data (nnUNet_raw, nnUNet_preprocessed)."""
        d = self.data_folder(alpha, variant, fold).resolve()
        return {"nnUNet_raw": str(d / "nnUNet_raw"), "nnUNet_preprocessed": str(d / "nnUNet_preprocessed")}

    def cases(self, fold: int) -> Tuple[List[str], List[str]]:
        if fold not in self.folds:
            raise StippleInputError(f"fold {fold}: no training / validation cases known (the source dataset's "
                                    f"splits_final.json is needed before a partial-labels study derives its data)")
        return self.folds[fold]

    def settings(self, alpha: float, variant: str, fold: int) -> dict:
        """What a derived (alpha, variant, fold) holds; ``prepared.json`` records it."""
        train, val = self.cases(fold)
        losing = losing_cases(train, alpha, self.seed)
        return {"dataset": self.dataset_name, "configuration": self.configuration, "plans": self.plans,
                "alpha": float(alpha), "variant": variant, "fold": fold, "remove": list(self.remove),
                "seed": self.seed, "training_cases": len(train), "validation_cases": len(val),
                "losing_cases": losing}

    def describe(self, alpha: float, variant: str, fold: int) -> str:
        s = self.settings(alpha, variant, fold)
        d = self.data_folder(alpha, variant, fold)
        state = "prepared" if (d / PREPARED_FILE).is_file() else "to derive and preprocess"
        return (f"partial data {d} ({state}): {', '.join(self.remove)} removed from {len(s['losing_cases'])} of "
                f"{s['training_cases']} training cases of fold {fold} (seed {self.seed}; missing organs as "
                f"{variant}); the {s['validation_cases']} validation cases keep every organ; then "
                f"{' '.join(preprocess_command(self.dataset_name, self.configuration, self.plans))} on "
                f"nnUNet_raw={d / 'nnUNet_raw'} nnUNet_preprocessed={d / 'nnUNet_preprocessed'}")

    def prepare(self, alpha: float, variant: str, fold: int, log: Callable[[str], None] = print) -> Dict[str, str]:
        """Derive and preprocess the data of (alpha, variant, fold) unless done; returns the training's roots."""
        from nnunet_stipple.nnunet_folders import nnunet_preprocessed_root
        from nnunet_stipple.partial_labels.simulate import derive_partial_dataset
        d = self.data_folder(alpha, variant, fold)
        settings = self.settings(alpha, variant, fold)
        done = d / PREPARED_FILE
        if done.is_file():
            have = json.loads(done.read_text())
            if have.get("settings") != settings:
                raise StippleInputError(f"{done} was prepared with other settings ({have.get('settings')}; now "
                                        f"{settings}); remove {d} to derive it again.")
            return self.roots(alpha, variant, fold)
        if d.exists():
            log(f"[partial data {d}] incomplete (interrupted): made again")
            shutil.rmtree(d)        # the imagesTr link is removed, not followed
        source = raw_dataset_folder(self.dataset_name)
        if source is None or not (source / "labelsTr").is_dir():
            raise StippleInputError(f"The partial-labels simulation derives its labels from nnUNet_raw/"
                                    f"{self.dataset_name}/labelsTr, which is missing (set nnUNet_raw).")
        source_pre = nnunet_preprocessed_root() / self.dataset_name
        raw_root, pre_root = d / "nnUNet_raw", d / "nnUNet_preprocessed"
        train, _ = self.cases(fold)
        prefix = f"Dataset{dataset_id(self.dataset_name):03d}_"
        derive_partial_dataset(source, raw_root, dataset_id(self.dataset_name), self.dataset_name[len(prefix):],
                               self.remove, train, losing_proportion(alpha), self.seed, missing_as=variant)
        target = pre_root / self.dataset_name
        target.mkdir(parents=True)
        for name in (f"{self.plans}.json", "splits_final.json"):
            if not (source_pre / name).is_file():
                raise StippleInputError(f"{source_pre / name} is missing: the partial-labels data take the study's "
                                        f"plans and folds from the source dataset's preprocessed folder.")
            shutil.copyfile(source_pre / name, target / name)
        if (source_pre / "dataset_fingerprint.json").is_file():
            shutil.copyfile(source_pre / "dataset_fingerprint.json", target / "dataset_fingerprint.json")
        # nnU-Net's preprocessor reads dataset.json from nnUNet_preprocessed: the derived one (ignore label)
        shutil.copyfile(raw_root / self.dataset_name / "dataset.json", target / "dataset.json")
        log(f"[partial data {d}] {', '.join(self.remove)} removed from {len(settings['losing_cases'])} of "
            f"{settings['training_cases']} training cases (missing organs as {variant}); preprocessing")
        commands = self.preprocessor(self.dataset_name, self.configuration, self.plans, raw_root, pre_root,
                                     d / "preprocess.log", log)
        write_json_atomic(done, {"settings": settings, "commands": commands, "created": now()})
        return self.roots(alpha, variant, fold)

    def study_entry(self, alphas: Sequence[float], folds: Sequence[int]) -> dict:
        """study.json's record of the setting: the organs, the seed and the cases that lose them."""
        from nnunet_stipple.benchmarks.study.planning import alpha_str
        return {"remove": list(self.remove), "seed": self.seed,
                "alpha_meaning": "percentage of the fold's training cases that keep every organ; the others "
                                 "lose the removed organs; validation cases keep every organ",
                "variants": dict(PARTIAL_METHODS),
                "losing_cases": {alpha_str(a): {str(f): losing_cases(self.cases(f)[0], a, self.seed)
                                                for f in folds if f in self.folds} for a in alphas}}
