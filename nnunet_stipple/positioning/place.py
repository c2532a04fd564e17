"""Where to put each class's prior box in a volume (paper section 3.2).

* From a label (training): the organ centres of :mod:`nnunet_stipple.priors.algorithm`.
* From a first prediction (test and unlabeled volumes): a coarse centre per organ, then the translation
  within a radius that minimises the KL divergence between the translated prediction and the reference
  template (:mod:`.kl_search`), searched exhaustively. The coarse centres come either from one joint
  search over a common displacement of all found organs (``coarse_placement="joint"``, the default;
  :mod:`.joint_search`) or, as in the paper, from each organ's largest predicted connected component
  (``coarse_placement="components"``), or from both (``"hybrid"``: an organ's component where the components
  agree with each other, the joint start for the organs whose component does not; :func:`coarse_start_centres`).

The settings are a :class:`~nnunet_stipple.positioning.settings.PositioningSettings`; the whole
procedure around one placement (re-positioning, uniform fallback, report) is :mod:`.procedure`.

The reference is the fold's mean aligned training mask of the class (stored with the prior). Because the
voxel-wise KL to a binary reference is linear in the reference, its cost equals the average of the costs
against every labeled training volume: the paper's single random reference, without the randomness.

Anatomical consistency: a weak first prediction scatters false positives, and the largest component of a
class may sit far from the organ (on BTCV after a short training, 100-300 mm for most organs while the
liver was within 30 mm). Organs keep their relative layout, so the placements must agree on one
displacement of the field of view: for every placed class, its displacement from its mean training
centre is a hypothesis; the hypothesis the most classes agree with (ties: the most predicted voxels)
wins, and a class whose own displacement differs from it by more than ``anatomy_tolerance_mm`` is
rejected and placed like a missing class. The default, 60 mm, comes from the BTCV training labels, not
from predictions: an organ centre predicted from the liver centre alone (mean relative position) is off
by 25-35 mm (median) and 40-70 mm (90th percentile), depending on the organ; rejected placements there
were 100-300 mm off.

A class the first prediction misses (or that was rejected) is placed by the mean displacement of the
accepted classes (organs move together with the field of view); if no class is found at all,
positioning fails and callers fall back to a uniform prior (plain softmax) with a warning.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from nnunet_stipple.positioning.joint_search import JointDisplacement, joint_displacement
from nnunet_stipple.positioning.kl_search import kl_translation_search, mm_to_voxel_radius, prepare_reference
from nnunet_stipple.positioning.settings import PositioningSettings
from nnunet_stipple.priors.algorithm import box_start, class_bounding_boxes, organ_centre
from nnunet_stipple.priors.spatial_prior import SpatialPrior


def centres_from_label(label: np.ndarray, classes: Sequence[int]) -> Dict[int, List[float]]:
    """Organ centres (bounding-box centres) of the classes present in a label volume."""
    return {c: organ_centre(lo, hi).tolist() for c, (lo, hi) in class_bounding_boxes(label, classes).items()}


def box_centre_from_start(start: Sequence[int], box_size: Sequence[int]) -> List[float]:
    """Inverse of :func:`box_start`: a centre whose box starts exactly at ``start``."""
    return [float(s) + (e - 1) / 2 for s, e in zip(start, box_size)]


@dataclass
class ClassPlacement:
    centre: Optional[List[float]]
    method: str                      # "kl", "relative" (from the other organs, also when "kl" was rejected), "none"
    coarse_centre: Optional[List[float]] = None
    offset: Optional[List[int]] = None
    cost: Optional[float] = None
    confidence: float = 0.0
    predicted_voxels: int = 0
    rejected_centre: Optional[List[float]] = None   # own placement, rejected as anatomically inconsistent


@dataclass
class Placement:
    classes: Dict[int, ClassPlacement] = field(default_factory=dict)
    joint: Optional[dict] = None     # the joint search's displacement (joint coarse placement only)
    # the found classes' largest-component centres (first placement, unless the layout guard is off): the
    # layout check's input (:mod:`.layout`)
    components: Dict[int, List[float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return any(p.method == "kl" for p in self.classes.values())

    @property
    def centres(self) -> Dict[int, Optional[List[float]]]:
        return {c: p.centre for c, p in self.classes.items()}

    @property
    def confidence(self) -> float:
        """Mean KL-search confidence over the classes found by the prediction (0 if none)."""
        vals = [p.confidence for p in self.classes.values() if p.method == "kl"]
        return float(np.mean(vals)) if vals else 0.0


COARSE_STRIDE_ABOVE_VOXELS = 2_000_000


def _largest_component_centre(mask: np.ndarray) -> Optional[np.ndarray]:
    """Bounding-box centre of the largest 26-connected component of a (cropped) boolean mask.

    Only a coarse centre is needed (the KL search refines it), so large masks, e.g. the scattered
    voxels of a poor first prediction, are analysed at every second voxel along each axis."""
    import cc3d
    stride = 2 if mask.size > COARSE_STRIDE_ABOVE_VOXELS else 1
    sub = np.ascontiguousarray(mask[::stride, ::stride, ::stride])
    if not sub.any():
        if stride == 1 or not mask.any():
            return None
        stride, sub = 1, mask
    stats = cc3d.statistics(cc3d.connected_components(sub.view(np.uint8), connectivity=26))
    counts = np.asarray(stats["voxel_counts"])
    counts[0] = 0  # background
    box = stats["bounding_boxes"][int(np.argmax(counts))]
    return organ_centre([b.start * stride for b in box], [(b.stop - 1) * stride for b in box])


def _prepared_reference(prior: SpatialPrior, c: int, radius):
    """The reference's FFT depends only on the prior and the radius: computed once per prior."""
    cache = prior.__dict__.setdefault("_prepared_references", {})
    key = (c, tuple(radius))
    if key not in cache:
        cache[key] = prepare_reference(prior.template(c), radius)
    return cache[key]


def position_from_probabilities(prior: SpatialPrior, probabilities: np.ndarray,
                                settings: PositioningSettings = PositioningSettings(),
                                start_centres: Optional[Dict[int, Optional[Sequence[float]]]] = None,
                                eps: float = 1e-4) -> Placement:
    """One placement of every class of ``prior`` in a volume from class probabilities (num_outputs, *S).

    ``settings.coarse_placement`` chooses the starting centres of the per-class KL searches (radius
    ``settings.search_radius_mm``): ``"joint"`` (the found classes at their mean training centres plus the
    common displacement of :mod:`.joint_search`) or ``"components"`` (each class's largest predicted
    component). ``start_centres`` (optional) replaces both, e.g. the previous placement when re-positioning
    from prior-driven probabilities. ``settings.anatomy_tolerance_mm`` (0 switches the check off) rejects
    placements that disagree with the displacement most classes agree on (module docstring). The
    re-positioning steps are the caller's: :func:`nnunet_stipple.positioning.procedure.place_prior`."""
    probs = np.asarray(probabilities, dtype=np.float32)
    if probs.ndim != 4 or probs.shape[0] < prior.num_outputs:
        raise ValueError(f"probabilities must be (>= {prior.num_outputs}, X, Y, Z), got {probs.shape}")
    radius = mm_to_voxel_radius(settings.search_radius_mm, prior.spacing)
    argmax = probs.argmax(0).astype(np.int32)
    # one pass for every class's bounding box; connected components then only run inside each box
    boxes = ndimage.find_objects(argmax, max_label=prior.num_outputs - 1)
    counts = {c: int((argmax[boxes[c - 1]] == c).sum()) if c - 1 < len(boxes) and boxes[c - 1] is not None else 0
              for c in prior.built_classes}
    placement = Placement()
    if start_centres is None:
        found = [c for c in prior.built_classes if counts[c]]
        component_centre = memoized(
            lambda c: _largest_component_centre(argmax[boxes[c - 1]] == c) + np.array([s.start for s in boxes[c - 1]]))
        placement.joint, start_centres = coarse_start_centres(
            prior, settings, found, lambda: joint_displacement(prior, probs, found), component_centre, counts)
        placement.components = layout_input(settings, found, component_centre)
    for c in prior.built_classes:
        n = counts[c]
        if start_centres.get(c) is None:
            placement.classes[c] = ClassPlacement(centre=None, method="none", predicted_voxels=n)
            continue
        centre0 = np.asarray(start_centres[c], dtype=np.float64)
        size = prior.box_size(c)
        start0 = box_start(centre0, size)
        # a shift beyond the volume plus the box puts the box wholly outside: a huge radius is a search of the
        # whole volume, not an FFT of exabytes
        r = tuple(min(int(ri), int(si) + int(bi)) for ri, si, bi in zip(radius, probs.shape[1:], size))
        res = kl_translation_search(probs[c], _prepared_reference(prior, c, r), tuple(int(v) for v in start0),
                                    r, eps=eps)
        placement.classes[c] = searched_class_placement(res, size, centre0, n)
    return checked_and_completed(prior, placement, settings)


def coarse_start_centres(prior: SpatialPrior, settings: PositioningSettings, found: Sequence[int],
                         joint_search: Callable[[], JointDisplacement], component_centre: Callable[[int], np.ndarray],
                         counts: Optional[Dict[int, int]] = None) -> Tuple[Optional[dict], Dict[int, list]]:
    """Where the KL search of each class the first prediction ``found`` starts, by ``settings.coarse_placement``
    (module docstring), and the joint search's report (None if it did not run). ``joint_search()`` runs the
    joint search, ``component_centre(c)`` gives the centre of class c's largest predicted component, ``counts``
    the predicted voxels per class (the tie-break of the vote below).

    ``"hybrid"``: each organ's component, where the components agree with each other (the anatomical
    consistency vote of :func:`agreeing_classes` on the components, ``settings.anatomy_tolerance_mm``); an
    organ whose component disagrees starts from the joint layout instead (the joint search runs only then). A
    good first prediction places each organ where it is (organs move by 25-35 mm relative to each other
    between scans, more than one common displacement of the mean layout can follow); a weak one's stray
    components (100-300 mm off) are replaced by the layout of all organs."""
    coarse = settings.coarse_placement
    if coarse == "joint":
        return joint_start(prior, found, joint_search)
    starts = {c: np.asarray(component_centre(c), dtype=np.float64).tolist() for c in found}
    if coarse == "components" or not settings.anatomy_tolerance_mm or len(found) < 2:
        return None, starts
    spacing = np.asarray(prior.spacing, dtype=np.float64)
    displacements = {c: (np.asarray(starts[c]) - prior.mean_centres[c]) * spacing for c in found}
    accepted = agreeing_classes(displacements, counts or {}, settings.anatomy_tolerance_mm)
    rejected = [c for c in found if c not in accepted]
    if not rejected:
        return None, starts
    joint, joint_starts = joint_start(prior, found, joint_search)
    starts.update({c: joint_starts[c] for c in rejected})
    return joint, starts


def agreeing_classes(displacements: Dict[int, np.ndarray], weights: Dict[int, int], tolerance_mm: float) -> set:
    """The classes agreeing with the displacement (mm) most classes agree with: every class's own displacement is
    a hypothesis; the one within ``tolerance_mm`` of the most classes wins (ties: the largest summed
    ``weights``, predicted voxels)."""
    classes = list(displacements)

    def agreeing(hypothesis):
        return [c for c in classes if np.linalg.norm(displacements[c] - hypothesis) <= tolerance_mm]

    def support(anchor):
        agree = agreeing(displacements[anchor])
        return len(agree), sum(weights.get(c, 0) for c in agree)

    anchor = max(classes, key=support)
    return set(agreeing(displacements[anchor]))   # holds the anchor itself


def memoized(component_centre: Callable[[int], np.ndarray]) -> Callable[[int], np.ndarray]:
    """``component_centre`` computed once per class (the coarse start and the layout check both read it)."""
    known: Dict[int, np.ndarray] = {}

    def centre(c: int) -> np.ndarray:
        if c not in known:
            known[c] = np.asarray(component_centre(c), dtype=np.float64)
        return known[c]
    return centre


def layout_input(settings: PositioningSettings, found: Sequence[int],
                 component_centre: Callable[[int], np.ndarray]) -> Dict[int, List[float]]:
    """The found classes' component centres for the layout check (none when the guard is off)."""
    if settings.layout_guard == "off":
        return {}
    return {c: component_centre(c).tolist() for c in found}


def joint_start(prior: SpatialPrior, found: Sequence[int], joint_search):
    """The joint search's displacement for the report (None when no class was found) and the classes' starting
    centres: their mean training centres moved by it. ``joint_search()`` runs the search."""
    if not found:
        return None, {}
    joint = joint_search()
    return joint.__dict__, {c: (np.asarray(prior.mean_centres[c]) + joint.displacement).tolist() for c in found}


def searched_class_placement(search, box_size, coarse_centre, predicted_voxels: int) -> ClassPlacement:
    """A class placed by its KL search (``search``: a translation search result of the numpy or torch search)."""
    return ClassPlacement(
        centre=box_centre_from_start(search.start, box_size), method="kl",
        coarse_centre=[float(v) for v in coarse_centre], offset=[int(v) for v in search.offset],
        cost=float(search.cost), confidence=float(search.confidence), predicted_voxels=predicted_voxels)


def checked_and_completed(prior: SpatialPrior, placement: Placement, settings: PositioningSettings) -> Placement:
    """The anatomical consistency check (unless ``settings`` switch it off), then the classes without a
    placement moved with the accepted ones."""
    if settings.anatomy_tolerance_mm:
        _reject_inconsistent(prior, placement, settings.anatomy_tolerance_mm)
    _place_missing_relative(prior, placement)
    return placement


def _reject_inconsistent(prior: SpatialPrior, placement: Placement, tolerance_mm: float) -> None:
    placed = [c for c, p in placement.classes.items() if p.method == "kl"]
    if len(placed) < 2:
        return
    spacing = np.asarray(prior.spacing, dtype=np.float64)
    disp = {c: (np.asarray(placement.classes[c].centre) - prior.mean_centres[c]) * spacing for c in placed}
    accepted = agreeing_classes(disp, {c: placement.classes[c].predicted_voxels for c in placed}, tolerance_mm)
    for c in placed:
        if c not in accepted:
            p = placement.classes[c]
            p.rejected_centre, p.centre, p.method = p.centre, None, "none"


def _place_missing_relative(prior: SpatialPrior, placement: Placement) -> None:
    found = [c for c, p in placement.classes.items() if p.method == "kl"]
    if not found:
        return
    shift = np.mean([np.asarray(placement.classes[c].centre) - np.asarray(prior.mean_centres[c]) for c in found], 0)
    for c, p in placement.classes.items():
        if p.method == "none":
            p.centre = (np.asarray(prior.mean_centres[c]) + shift).tolist()
            p.method = "relative"
