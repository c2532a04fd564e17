"""The files of a study folder that the study's steps hand each other: study.json (the study's settings and
planned runs), each run's run.json and nnU-Net model folder, the report folder and cost.json."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from nnunet_stipple.errors import StippleInputError

STUDY_FILE = "study.json"
RUN_FILE = "run.json"
RUNS_FOLDER = "runs"
REPORT_FOLDER = "report"
COST_FILE = "cost.json"


def model_folder(run_root: Path, dataset_name: str, trainer: str, plans: str, configuration: str) -> Path:
    return Path(run_root) / dataset_name / f"{trainer}__{plans}__{configuration}"


def fold_finished(model_dir: Path, fold: int) -> bool:
    return (Path(model_dir) / f"fold_{fold}" / "validation" / "summary.json").is_file()


def read_run_json(run_root: Path) -> dict:
    """A run's run.json ({} if missing or unreadable: a run interrupted before its first write)."""
    f = Path(run_root) / RUN_FILE
    if f.is_file():
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError:
            pass
    return {}


def load_study(study_dir: Path) -> Optional[dict]:
    f = Path(study_dir) / STUDY_FILE
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise StippleInputError(f"{f} is not valid JSON ({e}); repair or remove it.") from e


def merge_studies(existing: Optional[dict], recorded: dict) -> dict:
    """study.json of a study folder extended by a record's (its runs, folds, alphas, methods, bins)."""
    if existing is None:
        return json.loads(json.dumps(recorded))
    out = dict(existing)
    out["folds"] = sorted(set(existing.get("folds", [])) | set(recorded.get("folds", [])))
    out["alphas"] = sorted(set(existing.get("alphas", [])) | set(recorded.get("alphas", [])), reverse=True)
    for key in ("methods", "bins", "bins_methods"):
        out[key] = list(dict.fromkeys(list(existing.get(key, [])) + list(recorded.get(key, []))))
    runs = {k: dict(v) for k, v in existing.get("runs", {}).items()}
    for run_id, entry in recorded.get("runs", {}).items():
        mine = runs.setdefault(run_id, dict(entry))
        mine["folds"] = sorted(set(mine.get("folds", [])) | set(entry.get("folds", [])))
    out["runs"] = runs
    return out


def check_same_study(existing: dict, dataset_name: str, configuration: str, plans: str, profile: str,
                     study_dir: Path, schedule_scale: Optional[float] = None) -> None:
    mine = {"dataset": dataset_name, "configuration": configuration, "plans": plans, "profile": profile}
    if schedule_scale is not None:
        mine["schedule_scale"] = schedule_scale
    have = {"schedule_scale": 1, **existing}     # study folders from before the option ran at scale 1
    diff = {k: (have.get(k), v) for k, v in mine.items() if have.get(k) != v}
    if diff:
        what = "; ".join(f"{k}: study has {a!r}, asked {b!r}" for k, (a, b) in diff.items())
        raise StippleInputError(f"{Path(study_dir) / STUDY_FILE} is a study folder from another configuration "
                                f"({what}). Use another --study-dir, or the study's own settings to extend it "
                                f"(more alphas, methods, bins or folds are fine).")
