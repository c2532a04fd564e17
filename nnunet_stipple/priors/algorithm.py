"""Algorithm 1 of the STIPPLE paper on plain label arrays: organ boxes, alignment and z-binned histograms.

Conventions shared by building, training and prediction (keep them in one place):

* Arrays are 3D in nnU-Net's preprocessed axis order; ``axial_axis`` names the axis that runs along the
  patient (z). It comes from the image geometry, see :mod:`nnunet_stipple.priors.geometry`.
* The centre of an organ is the centre of its bounding box, ``(lo + hi) / 2`` per axis. With the box size
  equal to the largest extent seen in the fold, every training organ then fits its box (Algorithm 1's
  "such that every example fits into it"); a centre of mass would not guarantee that.
* A box of size ``E`` around a (possibly fractional) centre ``c`` starts at ``floor(c - (E - 1) / 2)``.
* Slice ``s`` of a box of depth ``Ez`` (0-based within the box) falls in bin ``floor(s * B / Ez)``; this is
  the paper's ``B * (s - z_min) / (z_max - z_min)`` without its off-by-one at ``s = z_max``. One function,
  :func:`bin_of_slice`, serves the numpy builder and the torch lookup of training. ``B`` defaults to
  :data:`DEFAULT_NUM_BINS` everywhere (trainers, commands, studies).
* Each bin is normalised by the number of slices it received. Box slices outside the volume are not
  counted (nothing is known there); in-plane box voxels outside the image count as "organ absent".
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Dict, Iterable, Mapping, Sequence, Tuple

import numpy as np
from scipy import ndimage

Box = Tuple[int, int, int]

DEFAULT_NUM_BINS = 5    # B of the paper for every label proportion (B = 1: the 2D prior of the MIDL paper)


def box_start(centre: Sequence[float], box_size: Sequence[int]) -> np.ndarray:
    """First voxel of a box of size ``box_size`` centred on ``centre`` (see module docstring)."""
    centre = np.asarray(centre, dtype=np.float64)
    size = np.asarray(box_size, dtype=np.float64)
    return np.floor(centre - (size - 1) / 2 + 1e-9).astype(np.int64)


def bin_of_slice(slice_in_box, depth: int, num_bins: int):
    """Bin index of slices ``0..depth-1`` of a box squeezed into ``num_bins`` bins (module docstring).

    A torch tensor (training's prior lookup) gives a tensor on its device; anything else a numpy array."""
    torch = sys.modules.get("torch")    # a tensor exists only if torch is imported: no import for numpy users
    if torch is not None and isinstance(slice_in_box, torch.Tensor):
        return (slice_in_box.long() * num_bins) // depth
    return (np.asarray(slice_in_box, dtype=np.int64) * num_bins) // depth


def class_bounding_boxes(label: np.ndarray, classes: Iterable[int]) -> Dict[int, Tuple[np.ndarray, np.ndarray]]:
    """Inclusive bounding box ``(lo, hi)`` of every class present in ``label``; absent classes are left out."""
    classes = [int(c) for c in classes]
    lab = np.asarray(label)
    max_label = max(classes) if classes else 0
    # find_objects handles all labels in one pass; values outside 1..max_label (ignore label, -1) are masked out
    work = np.where((lab >= 1) & (lab <= max_label), lab, 0).astype(np.int32, copy=False)
    slices = ndimage.find_objects(work, max_label=max_label)
    boxes = {}
    for c in classes:
        sl = slices[c - 1] if 0 < c <= len(slices) else None
        if sl is None:
            continue
        lo = np.array([s.start for s in sl], dtype=np.int64)
        hi = np.array([s.stop - 1 for s in sl], dtype=np.int64)
        boxes[c] = (lo, hi)
    return boxes


def organ_centre(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return (np.asarray(lo, dtype=np.float64) + np.asarray(hi, dtype=np.float64)) / 2


@dataclass
class ClassHistogram:
    """Accumulator for one class: sums of aligned organ masks per bin and the number of slices per bin."""
    box_size: Tuple[int, int, int]
    axial_axis: int
    num_bins: int
    sums: np.ndarray = field(init=False)
    slice_counts: np.ndarray = field(init=False)
    num_cases: int = 0

    def __post_init__(self):
        shape = list(self.box_size)
        shape[self.axial_axis] = self.num_bins
        self.sums = np.zeros(shape, dtype=np.float64)
        self.slice_counts = np.zeros(self.num_bins, dtype=np.int64)

    def add(self, mask: np.ndarray, centre: Sequence[float]) -> None:
        """Accumulate the slices of ``mask`` (bool, whole volume) that fall in the box centred on ``centre``."""
        a = self.axial_axis
        size = np.array(self.box_size)
        start = box_start(centre, size)
        crop = _crop_with_zero_padding(mask, start, size).astype(np.float64)
        depth = size[a]
        slice_idx = np.arange(depth)
        inside = (start[a] + slice_idx >= 0) & (start[a] + slice_idx < mask.shape[a])
        bins = bin_of_slice(slice_idx, depth, self.num_bins)
        # add whole slices bin by bin: np.add.at on the axial axis of the crop
        crop_axial_first = np.moveaxis(crop, a, 0)[inside]
        sums_axial_first = np.moveaxis(self.sums, a, 0)
        np.add.at(sums_axial_first, bins[inside], crop_axial_first)
        np.add.at(self.slice_counts, bins[inside], 1)
        self.num_cases += 1

    def normalised(self) -> np.ndarray:
        counts = self.slice_counts.astype(np.float64)
        shape = [1, 1, 1]
        shape[self.axial_axis] = self.num_bins
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(counts.reshape(shape) > 0, self.sums / np.maximum(counts, 1).reshape(shape), 0.0)
        return out.astype(np.float32)


def _crop_with_zero_padding(volume: np.ndarray, start: np.ndarray, size: np.ndarray) -> np.ndarray:
    """``volume[start:start+size]`` where parts outside the volume read as zeros."""
    out = np.zeros(tuple(int(s) for s in size), dtype=volume.dtype)
    src, dst = [], []
    for d in range(volume.ndim):
        lo, hi = int(start[d]), int(start[d] + size[d])
        clo, chi = max(lo, 0), min(hi, volume.shape[d])
        if chi <= clo:
            return out
        src.append(slice(clo, chi))
        dst.append(slice(clo - lo, chi - lo))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def largest_extents(boxes_per_case: Iterable[Mapping[int, Tuple[np.ndarray, np.ndarray]]],
                    classes: Iterable[int]) -> Dict[int, Box]:
    """Largest extent of each class over the cases (classes never present are left out)."""
    extents: Dict[int, np.ndarray] = {}
    for boxes in boxes_per_case:
        for c, (lo, hi) in boxes.items():
            ext = hi - lo + 1
            extents[c] = ext if c not in extents else np.maximum(extents[c], ext)
    return {c: tuple(int(v) for v in extents[c]) for c in classes if c in extents}


def build_histograms(labels: Sequence[np.ndarray], classes: Sequence[int], num_bins: int, axial_axis: int,
                     boxes_per_case: Sequence[Mapping[int, Tuple[np.ndarray, np.ndarray]]] = None
                     ) -> Dict[int, ClassHistogram]:
    """Algorithm 1 for every class over in-memory label volumes (used by tests and small datasets)."""
    if boxes_per_case is None:
        boxes_per_case = [class_bounding_boxes(lab, classes) for lab in labels]
    extents = largest_extents(boxes_per_case, classes)
    hists = {c: ClassHistogram(extents[c], axial_axis, num_bins) for c in extents}
    for lab, boxes in zip(labels, boxes_per_case):
        for c, (lo, hi) in boxes.items():
            hists[c].add(np.asarray(lab) == c, organ_centre(lo, hi))
    return hists
