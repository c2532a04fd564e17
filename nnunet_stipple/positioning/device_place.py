"""One placement of a prior on the device of the probabilities: what STIPPLE prediction and
``nnUNetv2_stipple_position`` run (through :func:`nnunet_stipple.positioning.procedure.place_prior`).

The method is that of :func:`nnunet_stipple.positioning.place.position_from_probabilities` (its module
docstring: coarse centres from the joint search or from components, each class's KL search, the anatomical
consistency check, missing classes placed from the others), which stays as the numpy oracle. Here the
probabilities stay where they are (:mod:`.device_volumes`), the searches run in torch
(:mod:`.device_search`) and only their results, a few numbers per class, come to the host; the consistency
check and the placement of missing classes work on those numbers and are shared with the oracle.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch

from nnunet_stipple.positioning.device_search import Spectrum, block_mean, joint_costs, reference_spectrum, \
    region_slices, select_best, translation_search
from nnunet_stipple.positioning.joint_search import DEFAULT_COARSE_MM, JOINT_EPS, JointDisplacement, _full_range, \
    coarse_factors
from nnunet_stipple.positioning.kl_search import mm_to_voxel_radius
from nnunet_stipple.positioning.place import ClassPlacement, Placement, _largest_component_centre, \
    checked_and_completed, coarse_start_centres, layout_input, memoized, \
    searched_class_placement
from nnunet_stipple.positioning.settings import PositioningSettings
from nnunet_stipple.priors.algorithm import box_start
from nnunet_stipple.priors.spatial_prior import SpatialPrior


def template_on(prior: SpatialPrior, c: int, device, factors: Sequence[int] = (1, 1, 1)) -> torch.Tensor:
    """Class ``c``'s reference template on ``device``, as block means of ``factors`` voxels."""
    template = torch.from_numpy(prior.template(c)).to(device)
    return block_mean(template, factors)


def joint_displacement_on_device(prior: SpatialPrior, source, classes: Sequence[int],
                                 coarse_mm: float = DEFAULT_COARSE_MM, eps: float = JOINT_EPS) -> JointDisplacement:
    """:func:`nnunet_stipple.positioning.joint_search.joint_displacement` on the device of ``source``."""
    if not classes:
        raise ValueError("joint_displacement needs at least one class")
    device = source.device
    factors = tuple(coarse_factors(prior.spacing, coarse_mm))
    f = np.asarray(factors)
    starts = {c: box_start(prior.mean_centres[c], prior.box_size(c)) for c in classes}
    coarse = {c: (block_mean(source.channel(c), factors), template_on(prior, c, device, factors),
                  np.floor(starts[c] / f + 0.5).astype(int)) for c in classes}
    radius = _full_range(coarse)
    # the coarse pass's radius follows the volume's shape: its spectra (on the small grid) are not kept
    inputs = [(q, Spectrum.of(r, radius), start) for q, r, start in coarse.values()]
    offset, cost = select_best(joint_costs(inputs, (0, 0, 0), radius, eps), radius)
    del inputs, coarse
    disp = [int(t * k) for t, k in zip(offset, factors)]
    if any(k > 1 for k in factors):
        fine = [(source.channel(c), reference_spectrum(prior, ("joint", c, str(device)),
                                                       lambda c=c: template_on(prior, c, device), factors), starts[c])
                for c in classes]
        offset, cost = select_best(joint_costs(fine, disp, factors, eps), factors)
        disp = [d + t for d, t in zip(disp, offset)]
    return JointDisplacement(displacement=disp, displacement_mm=[float(d * s) for d, s in zip(disp, prior.spacing)],
                             cost=float(cost), classes=[int(c) for c in classes], factors=list(factors))


def position_on_device(prior: SpatialPrior, source, settings: PositioningSettings = PositioningSettings(),
                       start_centres: Optional[Dict[int, Optional[Sequence[float]]]] = None,
                       eps: float = 1e-4) -> Placement:
    """One placement of every class of ``prior`` from ``source`` (a :mod:`.device_volumes` source), on its
    device; arguments and result as :func:`nnunet_stipple.positioning.place.position_from_probabilities`."""
    radius = mm_to_voxel_radius(settings.search_radius_mm, prior.spacing)
    counts = source.counts()
    device, shape = source.device, source.shape
    placement = Placement()

    @memoized
    def component_centre(c: int) -> np.ndarray:
        box = source.box(c)
        return _largest_component_centre(source.winning_voxels(c, box)) + np.asarray(box[0])

    if start_centres is None:
        found = [c for c in prior.built_classes if c < len(counts) and counts[c] > 0]
        placement.joint, start_centres = coarse_start_centres(
            prior, settings, found, lambda: joint_displacement_on_device(prior, source, found), component_centre,
            {c: counts[c] for c in found})
        placement.components = layout_input(settings, found, component_centre)
    for c in prior.built_classes:
        n = counts[c] if c < len(counts) else 0
        if start_centres.get(c) is None:
            placement.classes[c] = ClassPlacement(centre=None, method="none", predicted_voxels=n)
            continue
        centre0 = np.asarray(start_centres[c], dtype=np.float64)
        size = prior.box_size(c)
        start0 = tuple(int(v) for v in box_start(centre0, size))
        # a shift beyond the volume plus the box puts the box wholly outside: a huge radius is a search of the
        # whole volume, not an FFT of exabytes
        r = tuple(min(int(ri), int(si) + int(bi)) for ri, si, bi in zip(radius, shape, size))
        spectrum = reference_spectrum(prior, ("kl", c, str(device)), lambda c=c: template_on(prior, c, device), r)
        slices = region_slices(shape, [s - k for s, k in zip(start0, r)], [b + 2 * k for b, k in zip(size, r)])
        crop, dst = (None, None) if slices is None else (source.crop(c, slices[0]), slices[1])
        res = translation_search(crop, dst, shape, start0, spectrum, eps)
        placement.classes[c] = searched_class_placement(res, size, centre0, n)
    return checked_and_completed(prior, placement, settings)
