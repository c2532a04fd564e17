"""The class probabilities a placement reads, as torch tensors on one device.

A placement (:mod:`.device_place`) needs, of a volume's class probabilities: how many voxels each class
wins (the argmax; the predicted voxels of the report), each class's bounding box and winning voxels (coarse
centres), whole channels (the joint search's block means) and the probabilities of one class inside one
search region (the KL searches). Two sources give them:

* :class:`ClassProbabilities`: a prediction's probabilities over the whole volume (the first prediction, or
  a prior-driven prediction given as a whole, as models with nnU-Net regions do);
* :class:`PriorDrivenProbabilities`: the prior-driven softmax of a first prediction with the prior's boxes at
  given centres (paper Eq. 2), for the re-positioning steps, without building it: a KL search reads only
  its class inside its search region, and only that is computed. The prior is the same everywhere outside
  its boxes, so the rest follows from three maps of the first prediction made once per case (the largest
  organ probability, its class, the organs' total):

      driven_k = a_k first_k / Z,   a_k = max(q_k, floor)  (q_0 = clip(1 - sum_k q_k, 0, 1), q_k = 0 outside
      box k),   Z = sum_k a_k first_k = a_0 first_0 + floor sum_{k>0} first_k + sum_{boxes} (a_k - floor) first_k

  (the prior's normalisation cancels). The argmax needs no Z: outside its box every organ weighs ``floor``,
  so the best organ is the first prediction's best organ unless a box covering the voxel beats it.
"""
from __future__ import annotations

from functools import cached_property
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from nnunet_stipple.tensors import workspace
from nnunet_stipple.priors.spatial_prior import SpatialPrior

Box = Tuple[List[int], List[int]]   # inclusive (lo, hi) per axis


def class_counts(labels: torch.Tensor, num_classes: int) -> List[int]:
    """Voxels of each class ``0..num_classes-1`` in a label map (the only thing of it that leaves the device)."""
    return torch.bincount(labels.reshape(-1), minlength=num_classes)[:num_classes].tolist()


def class_box(labels: torch.Tensor, c: int) -> Optional[Box]:
    """The bounding box of class ``c`` in a label map (as ``scipy.ndimage.find_objects``), None if absent."""
    mask = labels == c
    spans = []
    for axis in range(3):
        present = torch.nonzero(mask.any(dim=[a for a in range(3) if a != axis])).reshape(-1)
        if present.numel() == 0:
            return None
        spans.append((int(present[0]), int(present[-1])))
    return [lo for lo, _ in spans], [hi for _, hi in spans]


class ClassProbabilities:
    """Class probabilities (K >= num_outputs, X, Y, Z) of a whole volume, on their device."""

    def __init__(self, probabilities: torch.Tensor, num_outputs: int):
        if probabilities.ndim != 4 or probabilities.shape[0] < num_outputs:
            raise ValueError(f"probabilities must be (>= {num_outputs}, X, Y, Z), got {tuple(probabilities.shape)}")
        self.probabilities = probabilities if probabilities.dtype == torch.float32 else probabilities.float()
        self.num_outputs = num_outputs
        self.shape = tuple(int(n) for n in probabilities.shape[1:])
        self.device = probabilities.device

    @cached_property
    def _best_organ(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The largest organ probability (channels 1..num_outputs-1) and its class (the lowest on ties)."""
        if self.num_outputs < 2:
            return torch.full(self.shape, -1.0, device=self.device), torch.ones(self.shape, dtype=torch.long,
                                                                                device=self.device)
        best, arg = torch.max(self.probabilities[1:self.num_outputs], dim=0)
        return best, arg.add_(1)

    @cached_property
    def labels(self) -> torch.Tensor:
        """The argmax over all channels (the lowest class on ties, like numpy's)."""
        best, arg = self._best_organ
        p = self.probabilities
        arg = arg.masked_fill(p[0] >= best, 0)
        if p.shape[0] > self.num_outputs:   # channels past the prior's classes still win voxels
            best = torch.maximum(best, p[0])
            for k in range(self.num_outputs, p.shape[0]):
                arg.masked_fill_(p[k] > best, k)
                torch.maximum(best, p[k], out=best)
        return arg

    @cached_property
    def _counts(self) -> List[int]:
        return class_counts(self.labels, max(self.num_outputs, self.probabilities.shape[0]))

    def counts(self) -> List[int]:
        return self._counts[: self.num_outputs]

    def box(self, c: int) -> Optional[Box]:
        return class_box(self.labels, c)

    def winning_voxels(self, c: int, box: Box) -> np.ndarray:
        """Where class ``c`` wins inside its box, on the host (a boolean crop: connected components run there)."""
        crop = tuple(slice(lo, hi + 1) for lo, hi in zip(*box))
        return (self.labels[crop] == c).cpu().numpy()

    def channel(self, c: int) -> torch.Tensor:
        return self.probabilities[c]

    def crop(self, c: int, src) -> torch.Tensor:
        return self.probabilities[(c, *src)]

    @cached_property
    def organ_total(self) -> torch.Tensor:
        return self.probabilities[1:self.num_outputs].sum(0)


class PriorDrivenProbabilities:
    """The prior-driven softmax of ``first`` with ``prior`` at ``centres`` floored at ``floor`` (module
    docstring): counts over the whole volume, class probabilities only where they are read."""

    def __init__(self, first: ClassProbabilities, prior: SpatialPrior, centres: Mapping[int, Optional[Sequence[float]]],
                 floor: float):
        self.first, self.floor = first, float(floor)
        self.num_outputs, self.shape, self.device = first.num_outputs, first.shape, first.device
        p = first.probabilities
        self.boxes, background = prior.floored_background_on_grid(self.shape, centres, floor, self.device)
        self.background = background.mul_(p[0])
        self.total = torch.mul(first.organ_total, self.floor, out=workspace(self.shape, torch.float32, self.device))
        self.total.add_(self.background)
        for c, dst, histogram in self.boxes:
            self.total[dst] += p[c][dst] * (histogram.clamp(min=self.floor) - self.floor)

    def counts(self) -> List[int]:
        best, arg = self.first._best_organ
        best, arg = best * self.floor, arg.clone()
        for c, dst, histogram in self.boxes:
            weighed = self.first.probabilities[c][dst] * histogram.clamp(min=self.floor)
            wins = (weighed > best[dst]) | ((weighed == best[dst]) & (arg[dst] > c))
            best[dst] = torch.where(wins, weighed, best[dst])
            arg[dst] = arg[dst].masked_fill(wins, c)
        labels = arg.masked_fill_(self.background >= best, 0)
        return class_counts(labels, self.num_outputs)

    def box(self, c: int) -> Optional[Box]:
        raise NotImplementedError("re-positioning starts from the last placement: no coarse centres are needed")

    def crop(self, c: int, src) -> torch.Tensor:
        weighed = self.first.crop(c, src) * self.floor
        for k, box_dst, histogram in self.boxes:
            if k != c:
                continue
            overlap = _overlap(src, box_dst)
            if overlap is not None:
                inside_crop, inside_box = overlap
                weighed[inside_crop] = self.first.crop(c, tuple(
                    slice(s.start + i.start, s.start + i.stop) for s, i in zip(src, inside_crop))) * \
                    histogram[inside_box].clamp(min=self.floor)
        # a voxel without any probability (possible in a user's probabilities file) stays without
        return weighed / self.total[src].clamp(min=torch.finfo(torch.float32).tiny)


def _overlap(crop, box):
    """Where a box (grid slices) meets a crop (grid slices): the slices relative to the crop and to the box."""
    in_crop, in_box = [], []
    for a, b in zip(crop, box):
        lo, hi = max(a.start, b.start), min(a.stop, b.stop)
        if hi <= lo:
            return None
        in_crop.append(slice(lo - a.start, hi - a.start))
        in_box.append(slice(lo - b.start, hi - b.start))
    return tuple(in_crop), tuple(in_box)
