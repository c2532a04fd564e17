"""The record of a study: the small files a report is made from, kept (e.g. committed under docs/results/) when
the models and the machine are gone.

A record folder has the layout of the study folder, restricted to the files matched by :data:`RECORD_FILES`
(relative to the study folder): study.json, each run's run.json, its cached per-case NSD and positioning rows,
nnU-Net's stipple_run.json, dataset.json, plans.json, and per finished fold the validation summary.json, the
training logs, progress.png and the pseudo-labeling round logs; plus the report. No checkpoint, no image.

* :func:`export_run` copies a run's record files into the record folder (folds that are not finished are left
  out), :func:`export_report` the report, study.json and cost.json;
* :func:`import_record` copies record files that the study folder lacks into it, so that a study started on a
  new machine treats the recorded runs as finished and trains only the missing ones. Nothing existing is
  overwritten in either direction except the record's own copy of a file that changed in the study folder.

``nnUNetv2_stipple_study report --study-dir RECORD`` rebuilds the report from the record alone.
"""
from __future__ import annotations

import fnmatch
import re
import shutil
from pathlib import Path
from typing import Callable, Iterable, List, Optional

from nnunet_stipple.atomic import atomic_path

# glob patterns relative to the study folder (fnmatch: '*' also matches '/')
RECORD_FILES = (
    "study.json",
    "cost.json",
    "runs/*/*/run.json",
    "runs/*/*/nsd_fold*_tol*mm.json",
    "runs/*/*/positioning_fold*.json",
    "runs/*/*/*/*/stipple_run.json",
    "runs/*/*/*/*/dataset.json",
    "runs/*/*/*/*/plans.json",
    "runs/*/*/*/*/fold_*/validation/summary.json",
    "runs/*/*/*/*/fold_*/progress.png",
    "runs/*/*/*/*/fold_*/training_log_*.txt",
    "runs/*/*/*/*/fold_*/stipple.json",
    "runs/*/*/*/*/fold_*/pseudo_labeling/state.json",
    "runs/*/*/*/*/fold_*/pseudo_labeling/quality.png",
    "runs/*/*/*/*/fold_*/pseudo_labeling/round_*/round_log.json",
    "runs/*/*/*/*/fold_*/pseudo_labeling/round_*/training_log_*.txt",
    "report/*.csv", "report/*.json", "report/*.md", "report/*.png",
)
_FOLD_DIR = re.compile(r"(^|/)fold_(\d+)(/|$)")
_FOLD_FILE = re.compile(r"_fold(\d+)[_.]")


def is_record_file(relative: str) -> bool:
    return any(fnmatch.fnmatch(relative, p) for p in RECORD_FILES)


def record_files(folder: Path, under: str = "") -> List[str]:
    """Record files present in ``folder`` (relative POSIX paths), optionally only below ``under``."""
    folder = Path(folder)
    start = folder / under if under else folder
    if not start.is_dir():
        return []
    out = []
    for p in sorted(start.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            rel = p.relative_to(folder).as_posix()
            if is_record_file(rel):
                out.append(rel)
    return out


def fold_of(relative: str) -> Optional[int]:
    """The fold a record file belongs to (``fold_<f>/`` in its path or ``_fold<f>`` in its name), else None."""
    m = _FOLD_DIR.search(relative) or _FOLD_FILE.search(Path(relative).name)
    return int(m.group(2) if m.re is _FOLD_DIR else m.group(1)) if m else None


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _same(a: Path, b: Path) -> bool:
    return b.is_file() and a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


def export_files(study_dir: Path, record_dir: Path, relatives: Iterable[str]) -> List[str]:
    """Copy these files of the study folder into the record folder where missing or different."""
    written = []
    for rel in relatives:
        src, dst = Path(study_dir) / rel, Path(record_dir) / rel
        if src.is_file() and not _same(src, dst):
            _copy(src, dst)
            written.append(rel)
    return written


def export_run(study_dir: Path, record_dir: Path, run_folder: str, finished_folds: Iterable[int]) -> List[str]:
    """Record files of one run (``runs/<alpha>/<name>``) of its finished folds into the record folder."""
    finished = set(int(f) for f in finished_folds)
    files = [rel for rel in record_files(study_dir, run_folder) if fold_of(rel) is None or fold_of(rel) in finished]
    return export_files(study_dir, record_dir, files)


def export_report(study_dir: Path, record_dir: Path) -> List[str]:
    """study.json, cost.json and the report folder into the record folder."""
    files = [rel for rel in record_files(study_dir) if rel in ("study.json", "cost.json") or rel.startswith("report/")]
    return export_files(study_dir, record_dir, files)


def import_record(record_dir: Path, study_dir: Path, log: Callable[[str], None] = print) -> List[str]:
    """Copy the record's files that the study folder lacks into it (never overwriting); returns them."""
    record_dir, study_dir = Path(record_dir), Path(study_dir)
    copied = []
    for rel in record_files(record_dir):
        if rel.startswith("report/"):
            continue
        dst = study_dir / rel
        if not dst.exists():
            _copy(record_dir / rel, dst)
            copied.append(rel)
    if copied:
        log(f"imported {len(copied)} record files from {record_dir} into {study_dir}")
    return copied
