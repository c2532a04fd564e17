"""Build the spatial prior of a fold from nnU-Net's preprocessed data (the prior-building plug-in).

The prior lives in the voxel space of the configuration's preprocessed data (the space the network sees)
and is built from the fold's training cases only (``splits_final.json``, created exactly as nnU-Net's
trainer would if it does not exist yet). Nothing under ``nnUNet_raw`` is written.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm import tqdm

from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.nnunet_folders import (PreprocessedDataset, dataset_class_for, open_preprocessed, parse_fold,
                                           spacing_3d, training_cases_of_fold)
from nnunet_stipple.priors.algorithm import DEFAULT_NUM_BINS, ClassHistogram, class_bounding_boxes, largest_extents, \
    organ_centre
from nnunet_stipple.priors.geometry import UnknownGeometryError, axial_axis_of_cases
from nnunet_stipple.priors.spatial_prior import SpatialPrior

PRIORS_FOLDER_NAME = "stipple_priors"


def prior_path(ds: PreprocessedDataset, fold: Union[int, str], num_bins: int) -> Path:
    return (ds.base / PRIORS_FOLDER_NAME / f"{ds.plans_identifier}__{ds.configuration}" / f"B{num_bins}"
            / f"fold_{fold}.npz")


def _allowed_values(ds: PreprocessedDataset) -> set:
    lm = ds.label_manager
    allowed = set(int(v) for v in lm.all_labels) | {-1}   # -1: outside nnU-Net's nonzero mask
    if lm.ignore_label is not None:
        allowed.add(int(lm.ignore_label))
    return allowed


def read_case_boxes(ds: PreprocessedDataset, case_ids: Sequence[str], desc: str = "reading labels"
                    ) -> Tuple[Dict[str, dict], Dict[str, dict], Dict[str, tuple]]:
    """Per case: class bounding boxes, reader properties and array shape. Checks label values."""
    dataset = dataset_class_for(ds)(str(ds.data_folder), list(case_ids))
    classes = list(ds.foreground_labels)
    allowed = _allowed_values(ds)
    boxes, props, shapes = {}, {}, {}
    for case in tqdm(case_ids, desc=desc, unit="case", disable=len(case_ids) < 2):
        try:
            _, seg, _, properties = dataset.load_case(case)
            seg = np.asarray(seg[0])
        except Exception as e:   # blosc2, pickle, numpy and OS errors alike: a damaged or truncated file
            files = ", ".join(sorted(p.name for p in ds.data_folder.glob(f"{case}[._]*")))
            raise StippleInputError(
                f"Cannot read the preprocessed case {case} in {ds.data_folder} ({files or 'no files'}): "
                f"{type(e).__name__}: {e}. The files are damaged or incomplete; re-run "
                f"`nnUNetv2_preprocess -d {ds.name} -c {ds.configuration} -plans_name {ds.plans_identifier}`.") from e
        values = set(np.unique(seg).tolist())
        bad = sorted(values - allowed)
        if bad:
            raise StippleInputError(
                f"Case {case} ({ds.data_folder / case}*) has label values {bad} that dataset.json does not "
                f"define (labels: {sorted(allowed - {-1})}). Fix labelsTr/{case} in nnUNet_raw/{ds.name} and "
                f"re-run nnUNetv2_plan_and_preprocess.")
        boxes[case] = class_bounding_boxes(seg, classes)
        props[case] = properties
        shapes[case] = seg.shape
    return boxes, props, shapes


def build_fold_prior(ds: PreprocessedDataset, fold: Union[int, str], num_bins: int = DEFAULT_NUM_BINS,
                     training_cases: Optional[Sequence[str]] = None, axial_axis: Optional[int] = None,
                     centre_cases: Optional[Sequence[str]] = None) -> SpatialPrior:
    """Algorithm 1 for every foreground class over the fold's training cases.

    ``training_cases`` overrides the split (e.g. only the labeled cases of a label-proportion run);
    ``centre_cases`` lists further cases whose organ centres are recorded (not used for the histograms)."""
    if num_bins < 1:
        raise StippleInputError(f"B (number of bins) must be >= 1, got {num_bins}.")
    if training_cases is None:
        training_cases, val_cases = training_cases_of_fold(ds, fold)
        centre_cases = val_cases if centre_cases is None else centre_cases
    training_cases = sorted(training_cases)
    if not training_cases:
        raise StippleInputError(f"Fold {fold} of {ds.name} has no training cases; cannot build a prior.")
    labels = ds.foreground_labels
    classes = sorted(labels)
    extra = sorted(set(centre_cases or []) - set(training_cases))
    boxes, props, _ = read_case_boxes(ds, training_cases + extra, desc=f"fold {fold}: organ boxes")
    try:
        axis = axial_axis_of_cases({c: props[c] for c in training_cases}, ds.transpose_forward, axial_axis)
    except UnknownGeometryError as e:
        raise StippleInputError(f"Cannot tell the axial axis of {ds.data_folder}: {e}. Pass --axial-axis.") from e

    train_boxes = [boxes[c] for c in training_cases]
    extents = largest_extents(train_boxes, classes)
    missing = [c for c in classes if c not in extents]
    if missing:
        msg = (f"Fold {fold} of {ds.name}: class(es) {', '.join(f'{c} ({labels[c]})' for c in missing)} appear "
               f"in no training case; their prior is left out (they get the floor probability). Building the rest.")
        warnings.warn(msg)
        print("WARNING:", msg)
    if not extents:
        raise StippleInputError(f"No foreground class appears in the training cases of fold {fold} of {ds.name}.")
    depths = {c: e[axis] for c, e in extents.items()}
    shallowest = min(depths, key=depths.get)
    if num_bins > depths[shallowest]:
        raise StippleInputError(
            f"B={num_bins} is larger than the depth of class {shallowest} ({labels[shallowest]}): its largest "
            f"extent is {depths[shallowest]} slices at this configuration's spacing, so some bins would get no "
            f"slice. Use B <= {depths[shallowest]}.")

    hists = {c: ClassHistogram(extents[c], axis, num_bins) for c in extents}
    templates = {c: ClassHistogram(extents[c], axis, extents[c][axis]) for c in extents}
    dataset = dataset_class_for(ds)(str(ds.data_folder), list(training_cases))
    centres_sum = {c: np.zeros(3) for c in extents}
    for case in tqdm(training_cases, desc=f"fold {fold}: accumulating B={num_bins}", unit="case",
                     disable=len(training_cases) < 2):
        seg = np.asarray(dataset.load_case(case)[1][0])
        for c, (lo, hi) in boxes[case].items():
            mask = seg == c
            centre = organ_centre(lo, hi)
            hists[c].add(mask, centre)
            templates[c].add(mask, centre)
            centres_sum[c] += centre

    case_centres = {case: {c: organ_centre(lo, hi).tolist() for c, (lo, hi) in b.items()}
                    for case, b in boxes.items()}
    spacing = spacing_3d(ds)
    return SpatialPrior(
        dataset_name=ds.name, plans_identifier=ds.plans_identifier, configuration=ds.configuration,
        fold=str(fold), num_bins=num_bins, axial_axis=axis, spacing=spacing, labels=labels,
        histograms={c: h.normalised() for c, h in hists.items()},
        slice_counts={c: h.slice_counts.copy() for c, h in hists.items()},
        templates={c: np.round(t.normalised() * 255).astype(np.uint8) for c, t in templates.items()},
        num_cases_per_class={c: h.num_cases for c, h in hists.items()},
        mean_centres={c: (centres_sum[c] / hists[c].num_cases).tolist() for c in hists},
        training_cases=list(training_cases), case_centres=case_centres)


def prior_matches(prior: SpatialPrior, ds: PreprocessedDataset, fold, num_bins: int,
                  training_cases: Sequence[str]) -> List[str]:
    """Reasons why an existing prior cannot be reused (empty list: it matches)."""
    reasons = []
    for what, have, want in [("dataset", prior.dataset_name, ds.name),
                             ("plans", prior.plans_identifier, ds.plans_identifier),
                             ("configuration", prior.configuration, ds.configuration),
                             ("fold", prior.fold, str(fold)), ("B", prior.num_bins, num_bins),
                             ("classes", prior.labels, ds.foreground_labels),
                             ("training cases", sorted(prior.training_cases), sorted(training_cases)),
                             ("spacing", [round(s, 6) for s in prior.spacing],
                              [round(s, 6) for s in spacing_3d(ds)])]:
        if have != want:
            reasons.append(f"{what} differs")
    return reasons


def load_or_build(ds: PreprocessedDataset, fold, num_bins: int = DEFAULT_NUM_BINS,
                  training_cases: Optional[Sequence[str]] = None, centre_cases: Optional[Sequence[str]] = None,
                  overwrite: bool = False, figures: bool = True, axial_axis: Optional[int] = None,
                  path: Optional[Path] = None, log=print) -> Tuple[SpatialPrior, Path]:
    """Reuse a matching prior file, else build it and save it atomically (with its PNG figures).

    Used by the build command and by the trainers at the start of training. ``training_cases`` defaults
    to the fold's training split and ``centre_cases`` to its validation cases."""
    if training_cases is None:
        training_cases, val_cases = training_cases_of_fold(ds, fold)
        centre_cases = val_cases if centre_cases is None else centre_cases
    training_cases = sorted(training_cases)
    centre_cases = sorted(centre_cases or [])
    path = Path(path) if path is not None else prior_path(ds, fold, num_bins)
    if not overwrite and path.is_file() and path.with_suffix(".json").is_file():
        try:
            prior = SpatialPrior.load(path)
            reasons = prior_matches(prior, ds, fold, num_bins, training_cases)
            if set(centre_cases) - set(prior.case_centres):
                reasons.append("organ centres missing for some cases")
            if axial_axis is not None and prior.axial_axis != axial_axis:
                reasons.append("axial axis differs")
            if not reasons:
                log(f"STIPPLE: reusing the matching prior {path} (nnUNetv2_stipple_build_priors --overwrite rebuilds it)")
                return prior, path
            log(f"STIPPLE: rebuilding {path} ({', '.join(reasons)})")
        except StippleInputError as e:
            log(f"STIPPLE: the existing prior is unusable ({e}); rebuilding it")
    prior = build_fold_prior(ds, fold, num_bins, training_cases=training_cases, axial_axis=axial_axis,
                             centre_cases=centre_cases)
    prior.save(path)
    if figures:
        from nnunet_stipple.priors.figures import save_prior_figures
        save_prior_figures(prior, path.parent / f"{path.stem}_figures")
    log(f"STIPPLE: wrote prior {path}")
    return prior, path


def figures_folder(npz_path: "str | Path") -> Path:
    """Where :func:`load_or_build` writes the PNG figures of the prior ``npz_path``."""
    npz_path = Path(npz_path)
    return npz_path.parent / f"{npz_path.stem}_figures"


def build_priors(dataset: Union[int, str], configuration: str, folds: Sequence[Union[int, str]],
                 num_bins: int = DEFAULT_NUM_BINS, plans_identifier: str = "nnUNetPlans", overwrite: bool = False,
                 figures: bool = True, axial_axis: Optional[int] = None, log=print) -> List[Path]:
    """Build (or reuse) the spatial prior of every fold in ``folds``; returns the ``fold_F.npz`` paths.

    What ``nnUNetv2_stipple_build_priors`` runs. Each fold goes through :func:`load_or_build` (a matching
    existing prior is reused unless ``overwrite``). Every fold is checked against ``splits_final.json``
    before anything is built, so a bad fold number fails without writing anything. With ``figures``, the
    PNG figures of a reused prior are (re)drawn when its figures folder is missing. ``log`` receives one
    line per fold with the path, the figures folder and the time taken."""
    import time
    folds = [parse_fold(f) for f in folds]
    if not folds:
        raise StippleInputError("No fold given; pass fold numbers (0 1 ...) and/or 'all'.")
    if axial_axis is not None and axial_axis not in (0, 1, 2):
        raise StippleInputError(f"The axial axis must be 0, 1 or 2, got {axial_axis}.")
    if num_bins < 1:
        raise StippleInputError(f"B (number of bins) must be >= 1, got {num_bins}.")
    folds = list(dict.fromkeys(folds))   # unique, in the given order
    ds = open_preprocessed(dataset, configuration, plans_identifier)
    for f in folds:
        training_cases_of_fold(ds, f)    # raises for a fold splits_final.json does not have
    paths = []
    for f in folds:
        start = time.perf_counter()
        _, path = load_or_build(ds, f, num_bins, overwrite=overwrite, figures=figures, axial_axis=axial_axis,
                                log=log)
        figs = figures_folder(path)
        if figures and not figs.is_dir():
            from nnunet_stipple.priors.figures import save_prior_figures
            save_prior_figures(SpatialPrior.load(path), figs)
        elapsed = time.perf_counter() - start
        log(f"fold {f}: prior {path}")
        log(f"fold {f}: figures {figs if figs.is_dir() else '(none; --no-figures)'}")
        log(f"fold {f}: done in {elapsed:.1f} s")
        paths.append(path)
    return paths
