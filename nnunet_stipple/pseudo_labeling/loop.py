"""Iterative pseudo-labeling (Algorithm 2) run by a trainer: ``nnUNetv2_train D C F -tr <...>PseudoLabel``.

Round 0 trains m0 on the labeled cases. Round t = 1..T predicts every unlabeled case with m_{t-1}, keeps
per case and class the gamma_t = t/T * gamma_max most confident predicted organ voxels (the trainer's
selection strategy), marks all other voxels with nnU-Net's ignore label and trains m_t on labeled +
pseudo-labeled cases (from scratch by default, or fine-tuned). Validation cases never get pseudo-labels
and never inform the prior.

Everything lives in the fold folder, ``<fold>/pseudo_labeling/``:

* ``state.json``: settings and finished rounds (resuming with ``--c`` skips them);
* ``round_<t>/``: nnU-Net's checkpoints and logs of m_t, ``nnunet_data/`` (the round's training set),
  ``pseudo_labels/<case>.npz`` + ``.json`` (label in preprocessed space, selection stats, prior position),
  ``round_log.json`` (cases and voxels added; precision/recall per class when ground truth is known);
* ``quality.png``: precision/recall of the added voxels and voxels added per class over rounds.

``round_policy`` (see :mod:`.round_policy`) chooses how the rounds go: the paper's gamma schedule (above), or
``agreement``, the FLARE22 winners' recipe (whole-case pseudo-labels, from scratch, T = 3, and from round 2 on only
the cases whose pseudo-label agrees with the previous round's enter the round's training set; the others are
dropped and listed with their agreement value in ``round_log.json``).

Pseudo-labels of a round are written case by case, atomically; existing ones are reused, so a killed run
loses at most one case, and shards predicted elsewhere (``nnUNetv2_stipple_pseudo_label_predict
-num_parts N -part_id i``) are picked up. At the end m_T's checkpoint becomes ``<fold>/checkpoint_final.pth``
and nnU-Net's usual final validation runs on it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from tqdm import tqdm

from nnunet_stipple.atomic import atomic_path, write_json_atomic, write_npz_atomic
from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.pseudo_labeling.label_files import dataset_json_with_ignore, ignore_label_for
from nnunet_stipple.pseudo_labeling.quality import added_label_quality, pooled_added_label_quality
from nnunet_stipple.pseudo_labeling.round_dataset import build_round_folder
from nnunet_stipple.pseudo_labeling.round_policy import AGREEMENT_MEASURES, GAMMA_SCHEDULE, ROUND_POLICIES, \
    agreement_value, check_round_policy, resolved_agreement
from nnunet_stipple.pseudo_labeling.selection import SELECTION_STRATEGIES, check_selection_options, \
    get_selection_strategy
from nnunet_stipple.pseudo_labeling.unlabeled import UnlabeledCase, UnlabeledCasesMixin
from nnunet_stipple.run_config import RELABELING_KEYS, RUN_CONFIG_FILE, TRAINED_SETTINGS_FILE, RunConfig

PL_FOLDER = "pseudo_labeling"


class PseudoLabelLoopMixin(UnlabeledCasesMixin):
    """Mix into a trainer that also has :class:`LabelProportionMixin`. Overrides ``run_training``."""
    default_selection = "prior_confidence"
    default_round_policy = GAMMA_SCHEDULE  # round_policy when stipple_run.json does not set one
    round0_trainer: Optional[str] = None   # the trainer without relabeling whose model can be round 0
    has_spatial_prior = False              # prior-driven selection strategies need one

    def _setup_pseudo_labeling(self, dataset_json: dict) -> None:
        self.ignore_label_value, _ = ignore_label_for(dataset_json)
        self.dataset_json = dataset_json_with_ignore(dataset_json)
        self.label_manager = self.plans_manager.get_label_manager(self.dataset_json)
        self.fold_folder = Path(self.output_folder)
        self._fold_log_file = self.log_file
        self._round_folder: Optional[Path] = None
        self._round_pseudo_ids: List[str] = []
        self._check_selection()

    # ---- paths and state ------------------------------------------------------------------------------
    @property
    def pl_folder(self) -> Path:
        return self.fold_folder / PL_FOLDER

    def round_folder(self, t: int) -> Path:
        return self.pl_folder / f"round_{t}"

    def _recorded_state(self) -> Optional[dict]:
        """``state.json`` as this trainer last read or wrote it (read from disk once), None before the loop's
        first run. Both the resume check (:meth:`resume_keys`) and the loop use it."""
        if getattr(self, "_state", None) is None:
            path = self.pl_folder / "state.json"
            if not path.is_file():
                return None
            try:
                state = json.loads(path.read_text())
                if not isinstance(state["settings"], dict) or not isinstance(state["finished_rounds"], list):
                    raise TypeError("'settings' must be an object and 'finished_rounds' a list")
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise StippleInputError(f"{path} is damaged ({e}); it records the loop's settings and finished "
                                        f"rounds. Delete {self.pl_folder} to run the loop again from round 0.")
            self._state = state
        return self._state

    def _load_state(self) -> dict:
        state = self._recorded_state()
        if state is None:
            return {"settings": self.trained_settings(), "finished_rounds": []}
        self.check_resume_settings(state["settings"], self.pl_folder / "state.json")
        state["settings"] = self.trained_settings()
        return state

    def trained_settings(self) -> dict:
        settings = super().trained_settings()
        settings.pop("round0_model_folder", None)   # where m0 came from matters only until round 0 exists
        settings.update(selection=self.selection_name, rounds=self.loop_rounds)
        if self.round_policy_name != GAMMA_SCHEDULE:   # resolved; absent (None) for the paper's, as recorded before
            measure, threshold = self.agreement_setting()
            settings.update(round_policy=self.round_policy_name, agreement_measure=measure,
                            agreement_threshold=threshold)
        return settings

    def resume_keys(self):
        """Round 0 learns from the labeled subset only: the relabeling settings may still change (e.g. a typo
        fixed) until a relabeled round has finished."""
        keys = tuple(super().resume_keys())
        finished = (self._recorded_state() or {}).get("finished_rounds", [])
        if any(t > 0 for t in finished):
            keys += tuple(k for k in RELABELING_KEYS if k != "round0_model_folder")
        return keys

    def _save_state(self, state: dict) -> None:
        write_json_atomic(self.pl_folder / "state.json", state)
        self._state = state

    @property
    def round_policy_name(self) -> str:
        return self.run_config.round_policy or self.default_round_policy

    @property
    def loop_rounds(self) -> int:
        """T under the run's round policy."""
        return self.run_config.rounds_for(self.round_policy_name)

    def agreement_setting(self) -> tuple:
        """(agreement measure, threshold) with their defaults filled in."""
        return resolved_agreement(self.run_config.agreement_measure, self.run_config.agreement_threshold)

    @property
    def selection_name(self) -> str:
        return (self.run_config.selection or ROUND_POLICIES[self.round_policy_name].default_selection
                or self.default_selection)

    def selection_strategy(self):
        name = self.selection_name
        if SELECTION_STRATEGIES[name].takes_include_background:
            return get_selection_strategy(name, include_background=self.run_config.include_background)
        return get_selection_strategy(name)

    def _check_selection(self) -> None:
        """At trainer start, not when round 1 begins after round 0 has trained."""
        where = (f"{Path(self.output_folder_base) / RUN_CONFIG_FILE}" if self.run_config.selection else
                 f"{type(self).__name__}.default_selection")
        rc = self.run_config
        check_round_policy(self.round_policy_name, f"{Path(self.output_folder_base) / RUN_CONFIG_FILE}",
                           rc.agreement_measure, rc.agreement_threshold, self.selection_name, rc.retrain,
                           policy_explicit=rc.round_policy is not None)
        cls = check_selection_options(self.selection_name, self.run_config.include_background, where)
        if cls.needs_prior and not self.has_spatial_prior:
            raise StippleInputError(f"{where}: selection {self.selection_name!r} ranks voxels by prior-driven "
                                    f"probabilities, but {type(self).__name__} trains without a spatial prior; use "
                                    f"'max_probability' (or a STIPPLE trainer).")

    # ---- the loop -----------------------------------------------------------------------------------------
    def run_training(self):
        rounds = self.loop_rounds
        unlabeled = self.unlabeled_cases() if rounds > 0 else []
        if rounds == 0 or not unlabeled:
            self.print_to_log_file(f"Pseudo-labeling: {'T = 0' if rounds == 0 else 'no unlabeled cases'}; "
                                   f"plain training on the labeled cases.")
            return super().run_training()
        state = self._load_state()
        self._save_state(state)
        policy = self.round_policy_name
        if ROUND_POLICIES[policy].filters_by_agreement:
            measure, threshold = self.agreement_setting()
            policy += f" ({measure} {AGREEMENT_MEASURES[measure].rule} {threshold:g} from round 2 on)"
        self.print_to_log_file(f"Pseudo-labeling: {len(unlabeled)} unlabeled cases, T = {rounds}, "
                               f"round policy = {policy}, gamma_max = {self.run_config.gamma_max}, "
                               f"selection = {self.selection_name}, retrain = {self.run_config.retrain}")
        if 0 not in state["finished_rounds"] and self.run_config.round0_model_folder:
            self._adopt_round0(self.run_config.round0_model_folder)
            state["finished_rounds"].append(0)
            self._save_state(state)
        for t in range(rounds + 1):
            if t in state["finished_rounds"]:
                continue
            pseudo_ids = self._pseudo_labels_on_rank0(t, unlabeled) if t > 0 else []
            pseudo_ids = self._round_training_ids(t, pseudo_ids)
            self._train_round(t, pseudo_ids, unlabeled)
            state["finished_rounds"].append(t)
            self._save_state(state)
        self._finish_loop(rounds)


    def _adopt_round0(self, model_folder: str) -> None:
        """m0 = a finished training without relabeling of the same fold, data and settings (checked against its
        checkpoint and the stipple_run.json of its model folder), copied to round_0/checkpoint_final.pth."""
        folder = Path(model_folder)
        if not folder.is_absolute():
            folder = Path(self.output_folder_base) / folder
        path = folder / f"fold_{self.fold}" / "checkpoint_final.pth"
        where = f"round0_model_folder of {Path(self.output_folder_base) / RUN_CONFIG_FILE}"
        if not path.is_file():
            raise StippleInputError(f"{where}: {path} does not exist. Train that model first, or remove "
                                    f"round0_model_folder to train round 0 here.")
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        expected = self.round0_trainer
        args = ckpt.get("init_args", {})
        mine = {"trainer": expected, "fold": self.fold, "configuration": self.configuration_name,
                "plans": self.plans_manager.plans_name}
        theirs = {"trainer": ckpt.get("trainer_name"), "fold": args.get("fold"),
                  "configuration": args.get("configuration"), "plans": args.get("plans", {}).get("plans_name")}
        record = path.parent / TRAINED_SETTINGS_FILE   # what m0 was trained with, if recorded
        other = json.loads(record.read_text())["settings"] if record.is_file() else \
            RunConfig.for_output_folder(str(folder)).to_json()
        ours = self.run_config.to_json()
        same = [k for k in ours if k not in RELABELING_KEYS and k != "save_every"]   # what m0 learned from
        mine.update({k: ours[k] for k in same})
        theirs.update({k: other.get(k) for k in same})
        differ = sorted(k for k in mine if mine[k] != theirs.get(k))
        if expected is None or differ:
            raise StippleInputError(
                f"{where}: {path} is not round 0 of this loop: "
                + ("; ".join(f"{k} {theirs.get(k)!r} there, {mine[k]!r} here" for k in differ)
                   if expected else f"{type(self).__name__} does not take a round-0 model")
                + ". Point it at the model folder of the same training without relabeling, or remove it.")
        with atomic_path(self.round_folder(0) / "checkpoint_final.pth") as tmp:
            shutil.copyfile(path, tmp)
        self.print_to_log_file(f"Round 0: m0 is {path} (the same training without relabeling), not retrained")

    def _pseudo_labels_on_rank0(self, t: int, unlabeled: List[UnlabeledCase]) -> List[str]:
        if not self.is_ddp:
            return self.make_pseudo_labels(t, unlabeled)
        from torch import distributed as dist
        if self.local_rank == 0:
            self.make_pseudo_labels(t, unlabeled)
        dist.barrier()
        return [u.case for u in unlabeled]

    def _round_training_ids(self, t: int, pseudo_ids: List[str]) -> List[str]:
        """The pseudo-labeled cases that enter round t's training set: all, or (round policy ``agreement``) those
        ``round_log.json`` (written on rank 0 before the barrier) records as kept."""
        if t < 1 or not ROUND_POLICIES[self.round_policy_name].filters_by_agreement:
            return pseudo_ids
        log = json.loads((self.round_folder(t) / "round_log.json").read_text())
        if "agreement" not in log:
            return pseudo_ids
        cases = log["agreement"]["cases"]
        return [c for c in pseudo_ids if cases[c]["kept"]]

    def _train_round(self, t: int, pseudo_ids: List[str], unlabeled: List[UnlabeledCase]) -> None:
        from nnunetv2.training.logging.nnunet_logger import MetaLogger
        folder = self.round_folder(t)
        folder.mkdir(parents=True, exist_ok=True)
        self.was_initialized = False  # a new network (and optimizer) for every round
        self.initialize()
        if t > 0 and self.run_config.retrain == "finetune":
            self._load_weights(self.round_folder(t - 1) / "checkpoint_final.pth")
        self.output_folder = str(folder)
        self.log_file = str(folder / "training_log.txt")
        self.logger = MetaLogger(str(folder), False)
        self.current_epoch, self._best_ema = 0, None
        by_case = {u.case: u for u in unlabeled}
        pseudo = {c: (by_case[c].data_folder, self._read_pseudo_label(t, c)) for c in pseudo_ids}
        # validation cases go in too: with an ignore label nnU-Net's loader needs their annotated-voxel locations
        labeled = {c: Path(self.preprocessed_dataset_folder) for c in self.labeled_cases() + self.fold_split()[1]}
        self._round_folder = build_round_folder(folder / "nnunet_data", labeled, pseudo, self.label_manager)
        self._round_pseudo_ids = list(pseudo_ids)
        self._round_pseudo_centres(t, pseudo_ids)
        latest = folder / "checkpoint_latest.pth"
        if latest.is_file():
            self.print_to_log_file(f"Round {t}: resuming from {latest}")
            self.load_checkpoint(str(latest))
        self.print_to_log_file(f"Round {t}: training on {len(self.labeled_cases())} labeled + {len(pseudo)} "
                               f"pseudo-labeled cases")
        super().run_training()

    def _round_pseudo_centres(self, t: int, pseudo_ids: List[str]) -> None:
        """Pseudo-labeled cases place the prior where positioning put it (hook for prior trainers)."""

    def _load_weights(self, checkpoint: Path) -> None:
        from nnunet_stipple.priors.prior_module import unwrap_network
        params = torch.load(checkpoint, map_location=self.device, weights_only=False)["network_weights"]
        unwrap_network(self.network).load_state_dict(params)

    def get_tr_and_val_datasets(self):
        if self._round_folder is None:
            return super().get_tr_and_val_datasets()
        _, val = self.fold_split()
        cases = sorted(set(self.labeled_cases()) | set(self._round_pseudo_ids))
        dataset_tr = self.dataset_class(str(self._round_folder), cases)
        dataset_val = self.dataset_class(str(self._round_folder), val)
        return dataset_tr, dataset_val

    def _finish_loop(self, rounds: int) -> None:
        final = self.round_folder(rounds) / "checkpoint_final.pth"
        self.output_folder = str(self.fold_folder)
        self.log_file = self._fold_log_file
        self._round_folder = None
        if self.local_rank == 0:
            with atomic_path(self.fold_folder / "checkpoint_final.pth") as tmp:
                shutil.copyfile(final, tmp)
            for name in ("progress.png", "debug.json"):
                if (final.parent / name).is_file():
                    shutil.copyfile(final.parent / name, self.fold_folder / name)
            self.plot_quality()
        self.load_checkpoint(str(self.fold_folder / "checkpoint_final.pth"))

    # ---- pseudo-labels --------------------------------------------------------------------------------
    def pseudo_label_path(self, t: int, case: str) -> Path:
        return self.round_folder(t) / "pseudo_labels" / f"{case}.npz"

    def _read_pseudo_label(self, t: int, case: str) -> np.ndarray:
        with np.load(self.pseudo_label_path(t, case), allow_pickle=False) as z:
            return z["label"][None].astype(np.int16)

    def make_pseudo_labels(self, t: int, unlabeled: List[UnlabeledCase], part_id: int = 0, num_parts: int = 1
                           ) -> List[str]:
        """Pseudo-labels of round t from m_{t-1}; cases already done (e.g. by other shards) are kept."""
        rounds = self.loop_rounds
        gamma = t / rounds * self.run_config.gamma_max
        mine = unlabeled[part_id::num_parts]
        todo = [u for u in mine if not self.pseudo_label_path(t, u.case).is_file()]
        if todo:
            checkpoint = self.round_folder(t - 1) / "checkpoint_final.pth"
            if not checkpoint.is_file():
                raise StippleInputError(f"{checkpoint} does not exist: round {t - 1} has not finished. Run "
                                        f"nnUNetv2_train ... --c to continue the loop.")
            if not self.was_initialized:
                self.initialize()
            self._load_weights(checkpoint)
            self.set_deep_supervision_enabled(False)
            self.network.eval()
            predictor = self.pseudo_label_predictor()
            strategy = self.selection_strategy()
            self.print_to_log_file(f"Round {t}: predicting {len(todo)} unlabeled cases with m_{t - 1}, gamma_t = {gamma:.3f}")
            for u in tqdm(todo, desc=f"round {t}: pseudo-labels", unit="case"):
                self._pseudo_label_case(t, u, predictor, strategy, gamma)
            self.set_deep_supervision_enabled(True)
        if num_parts > 1:
            return [u.case for u in mine]
        missing = [u.case for u in unlabeled if not self.pseudo_label_path(t, u.case).is_file()]
        if missing:
            raise StippleInputError(f"Round {t}: pseudo-labels missing for {missing[:5]}...")
        self._write_round_log(t, unlabeled, gamma)
        return [u.case for u in unlabeled]

    def pseudo_label_predictor(self):
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunet_stipple.inference.predictor import predictor_for_trainer
        return predictor_for_trainer(self, nnUNetPredictor)

    def predict_for_pseudo_label(self, predictor, data: torch.Tensor, case: str):
        """(visual probabilities, prior-driven probabilities or None, extra info) for one case."""
        visual = predictor.predict_sliding_window_return_logits(data).to("cpu").float()
        return torch.softmax(visual, 0).numpy(), None, {}

    def _pseudo_label_case(self, t: int, u: UnlabeledCase, predictor, strategy, gamma: float) -> None:
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        data, seg, _, _ = infer_dataset_class(str(u.data_folder))(str(u.data_folder), [u.case]).load_case(u.case)
        visual, driven, info = self.predict_for_pseudo_label(predictor, torch.from_numpy(np.asarray(data)), u.case)
        result = strategy.select(visual, driven, gamma, self.ignore_label_value)
        record = {"case": u.case, "hidden": u.hidden, "gamma": gamma,
                  "stats": {str(k): v for k, v in result.stats.items()}, **info}
        if u.hidden:
            gt = np.asarray(seg[0])  # hidden cases keep their preprocessed label: the ground truth
            classes = [int(c) for c in self.label_manager.foreground_labels]
            record["quality"] = {str(k): v for k, v in added_label_quality(
                result.label, np.where(gt < 0, 0, gt), self.ignore_label_value, classes).items()}
        path = self.pseudo_label_path(t, u.case)
        write_json_atomic(path.with_suffix(".json"), record)
        write_npz_atomic(path, label=result.label)  # the .npz marks the case done

    def round_agreement(self, t: int, cases: List[str]) -> Optional[dict]:
        """Round policy ``agreement``, t >= 2: every case's pseudo-label of round t against its pseudo-label of
        round t - 1 (both read from ``pseudo_labels/<case>.npz``; nothing is predicted again), and whether it enters
        round t's training set. None otherwise."""
        if t < 2 or not ROUND_POLICIES[self.round_policy_name].filters_by_agreement:
            return None
        measure, threshold = self.agreement_setting()
        rule = AGREEMENT_MEASURES[measure]
        classes = [int(c) for c in self.label_manager.foreground_labels]
        per_case = {}
        for case in cases:
            previous = self.pseudo_label_path(t - 1, case)
            if not previous.is_file():
                raise StippleInputError(f"Round {t}: {previous} is missing; the agreement filter compares each case's "
                                        f"pseudo-label with round {t - 1}'s. Restore it, or delete {self.pl_folder} to "
                                        f"run the loop again.")
            value = agreement_value(measure, self._read_pseudo_label(t - 1, case)[0],
                                    self._read_pseudo_label(t, case)[0], classes)
            per_case[case] = {"value": value, "kept": bool(rule.keeps(value, threshold))}
        kept = sum(v["kept"] for v in per_case.values())
        return {"measure": measure, "threshold": threshold, "rule": f"{measure} {rule.rule} {threshold:g}",
                "compared_with_round": t - 1, "kept": kept, "dropped": len(per_case) - kept, "cases": per_case}

    def _write_round_log(self, t: int, unlabeled: List[UnlabeledCase], gamma: float) -> None:
        records = [json.loads(self.pseudo_label_path(t, u.case).with_suffix(".json").read_text()) for u in unlabeled]
        agreement = self.round_agreement(t, [r["case"] for r in records])
        if agreement is not None:   # what the round trains on: the kept cases
            records = [r for r in records if agreement["cases"][r["case"]]["kept"]]
        classes = [str(int(c)) for c in self.label_manager.foreground_labels]
        added = {c: int(sum(r["stats"][c]["selected"] for r in records)) for c in classes}
        log = {"round": t, "gamma": gamma, "cases": len(records), "voxels_added_per_class": added,
               "voxels_added": int(sum(added.values()))}
        if agreement is not None:
            log.update(cases_pseudo_labeled=len(unlabeled), agreement=agreement)
        with_gt = [r for r in records if "quality" in r]
        if with_gt:
            per_class = {}
            for c in classes:
                tp = sum(r["quality"][c]["true_positive"] for r in with_gt)
                add = sum(r["quality"][c]["added"] for r in with_gt)
                gtv = sum(r["quality"][c]["gt_voxels"] for r in with_gt)
                per_class[c] = {"added": add, "gt_voxels": gtv, "true_positive": tp,
                                "precision": tp / add if add else None, "recall": tp / gtv if gtv else None}
            log["quality_per_class"] = per_class
            log["quality_pooled"] = pooled_added_label_quality({int(c): v for c, v in per_class.items()})
        write_json_atomic(self.round_folder(t) / "round_log.json", log)
        self.print_to_log_file(f"Round {t}: {len(records)} cases, {log['voxels_added']} voxels added "
                               f"(per class {added})" + (f"; precision/recall (pooled) "
                               f"{log['quality_pooled']}" if with_gt else "")
                               + (f"; agreement with round {t - 1} ({agreement['rule']}): kept {agreement['kept']}, "
                                  f"dropped {agreement['dropped']} of {len(unlabeled)}" if agreement else ""))

    def plot_quality(self) -> Optional[Path]:
        logs = sorted(self.pl_folder.glob("round_*/round_log.json"))
        logs = [json.loads(p.read_text()) for p in logs]
        if not logs:
            return None
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        rounds = [lg["round"] for lg in logs]
        names = {str(v): k for k, v in self.dataset_json["labels"].items() if isinstance(v, int)}
        classes = list(logs[0]["voxels_added_per_class"])
        has_q = all("quality_per_class" in lg for lg in logs)
        fig, axes = plt.subplots(1, 3 if has_q else 1, figsize=(13 if has_q else 5, 3.6), squeeze=False)
        ax = axes[0][0]
        for c in classes:
            ax.plot(rounds, [lg["voxels_added_per_class"][c] for lg in logs], marker="o", label=names.get(c, c))
        ax.set_title("voxels added")
        ax.set_xlabel("round")
        if has_q:
            for j, key in enumerate(("precision", "recall"), start=1):
                for c in classes:
                    vals = [lg["quality_per_class"][c][key] for lg in logs]
                    axes[0][j].plot(rounds, [np.nan if v is None else v for v in vals], marker="o",
                                    label=names.get(c, c))
                axes[0][j].set_title(f"{key} of added voxels")
                axes[0][j].set_ylim(0, 1.02)
                axes[0][j].set_xlabel("round")
        axes[0][-1].legend(fontsize=7, loc="lower left")
        fig.tight_layout()
        out = self.pl_folder / "quality.png"
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=90, format="png")
        plt.close(fig)
        return out
