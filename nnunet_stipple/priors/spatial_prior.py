"""The spatial prior of one fold: data, file format (npz + JSON, no pickle) and per-voxel class probabilities.

File format (``fold_F.npz`` + ``fold_F.json`` side by side, both written atomically, JSON last):

* npz: ``hist_<k>`` (float32, the box with its axial axis squeezed to B bins, values in [0, 1]),
  ``slice_counts_<k>`` (int64, slices accumulated per bin) and ``template_<k>`` (uint8, the mean aligned
  training mask at full axial resolution times 255, used as the positioning reference) per class ``k``.
* JSON: everything else (dataset, plans, configuration, fold, B, axial axis, spacing, classes, box sizes,
  mean centres, per-case organ centres, training cases, version) and the SHA-256 of the npz, so a
  mismatched or half-copied pair is detected on load.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence

import numpy as np

from nnunet_stipple.atomic import write_json_atomic, write_npz_atomic
from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.priors.algorithm import bin_of_slice, box_start
from nnunet_stipple.priors.layout_spread import largest_case_misfit_mm

if TYPE_CHECKING:
    import torch

PRIOR_FORMAT_VERSION = 1
DEFAULT_FLOOR = 1e-3


@dataclass
class SpatialPrior:
    dataset_name: str
    plans_identifier: str
    configuration: str
    fold: str
    num_bins: int
    axial_axis: int
    spacing: List[float]
    labels: Dict[int, str]                      # every foreground class of dataset.json (value -> name)
    histograms: Dict[int, np.ndarray]           # classes seen in the fold's training cases
    slice_counts: Dict[int, np.ndarray]
    templates: Dict[int, np.ndarray]            # uint8, mean aligned mask * 255 at full axial resolution
    num_cases_per_class: Dict[int, int]
    mean_centres: Dict[int, List[float]]
    training_cases: List[str]
    case_centres: Dict[str, Dict[int, List[float]]] = field(default_factory=dict)
    # the largest misfit of a training case's layout to the mean layout (mm, positioning/layout.py): kept where
    # case_centres are not (checkpoints); None in priors written before it was stored
    layout_misfit_mm: Optional[float] = None
    version: int = PRIOR_FORMAT_VERSION

    # ---- derived --------------------------------------------------------------------------------------
    @property
    def classes(self) -> List[int]:
        return sorted(self.labels)

    @property
    def built_classes(self) -> List[int]:
        return sorted(self.histograms)

    @property
    def missing_classes(self) -> List[int]:
        return [c for c in self.classes if c not in self.histograms]

    @property
    def num_outputs(self) -> int:
        """Softmax channels: background plus every foreground class (nnU-Net labels are consecutive)."""
        return max(self.classes) + 1 if self.classes else 1

    def box_size(self, c: int) -> tuple:
        return tuple(int(v) for v in self.templates[c].shape)

    def smallest_depth(self) -> int:
        return min(self.box_size(c)[self.axial_axis] for c in self.built_classes)

    # ---- metadata <-> arrays ----------------------------------------------------------------------------
    def metadata(self) -> dict:
        return {
            "format": "nnunet_stipple.spatial_prior",
            "version": self.version,
            "dataset_name": self.dataset_name,
            "plans_identifier": self.plans_identifier,
            "configuration": self.configuration,
            "fold": self.fold,
            "num_bins": self.num_bins,
            "axial_axis": self.axial_axis,
            "spacing": [float(s) for s in self.spacing],
            "labels": {str(k): v for k, v in sorted(self.labels.items())},
            "built_classes": self.built_classes,
            "missing_classes": self.missing_classes,
            "box_sizes": {str(c): list(self.box_size(c)) for c in self.built_classes},
            "box_sizes_mm": {str(c): [round(b * s, 2) for b, s in zip(self.box_size(c), self.spacing)]
                             for c in self.built_classes},
            "num_cases_per_class": {str(c): int(n) for c, n in sorted(self.num_cases_per_class.items())},
            "mean_centres": {str(c): [float(v) for v in self.mean_centres[c]] for c in self.built_classes},
            "training_cases": list(self.training_cases),
            "case_centres": {case: {str(c): [float(v) for v in cen] for c, cen in sorted(cc.items())}
                             for case, cc in sorted(self.case_centres.items())},
            "layout_misfit_mm": (largest_case_misfit_mm(self.case_centres, self.mean_centres, self.spacing)
                                 if self.case_centres else self.layout_misfit_mm),
        }

    def arrays(self) -> Dict[str, np.ndarray]:
        out = {}
        for c in self.built_classes:
            out[f"hist_{c}"] = np.asarray(self.histograms[c], dtype=np.float32)
            out[f"slice_counts_{c}"] = np.asarray(self.slice_counts[c], dtype=np.int64)
            out[f"template_{c}"] = np.asarray(self.templates[c], dtype=np.uint8)
        return out

    @classmethod
    def from_metadata_and_arrays(cls, meta: dict, arrays: Mapping[str, np.ndarray], source: str = "prior"
                                 ) -> "SpatialPrior":
        try:
            if meta.get("format") != "nnunet_stipple.spatial_prior":
                raise KeyError("format")
            if int(meta["version"]) > PRIOR_FORMAT_VERSION:
                raise StippleInputError(f"{source} was written by a newer nnunet_stipple (format version "
                                        f"{meta['version']}); upgrade nnunet_stipple or rebuild the prior.")
            built = [int(c) for c in meta["built_classes"]]
            axial = int(meta["axial_axis"])
            prior = cls(
                dataset_name=meta["dataset_name"], plans_identifier=meta["plans_identifier"],
                configuration=meta["configuration"], fold=str(meta["fold"]), num_bins=int(meta["num_bins"]),
                axial_axis=axial, spacing=[float(s) for s in meta["spacing"]],
                labels={int(k): v for k, v in meta["labels"].items()},
                histograms={c: np.asarray(arrays[f"hist_{c}"], dtype=np.float32) for c in built},
                slice_counts={c: np.asarray(arrays[f"slice_counts_{c}"]) for c in built},
                templates={c: np.asarray(arrays[f"template_{c}"], dtype=np.uint8) for c in built},
                num_cases_per_class={int(k): int(v) for k, v in meta["num_cases_per_class"].items()},
                mean_centres={int(k): list(v) for k, v in meta["mean_centres"].items()},
                training_cases=list(meta["training_cases"]),
                case_centres={case: {int(c): list(v) for c, v in cc.items()}
                              for case, cc in meta.get("case_centres", {}).items()},
                layout_misfit_mm=None if meta.get("layout_misfit_mm") is None else float(meta["layout_misfit_mm"]),
                version=int(meta["version"]),
            )
        except StippleInputError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise StippleInputError(f"{source} is not a valid STIPPLE prior (missing or bad entry: {e}). "
                                    f"Rebuild it with nnUNetv2_stipple_build_priors.") from e
        prior.validate(source)
        return prior

    def validate(self, source: str = "prior") -> None:
        for c in self.built_classes:
            size = self.box_size(c)
            expected = list(size)
            expected[self.axial_axis] = self.num_bins
            h = self.histograms[c]
            if list(h.shape) != expected or len(self.slice_counts[c]) != self.num_bins:
                raise StippleInputError(
                    f"{source}: class {c} histogram has shape {list(h.shape)}, expected {expected} from its box "
                    f"{list(size)} and B={self.num_bins}. The file is corrupt or mismatched; rebuild it with "
                    f"nnUNetv2_stipple_build_priors.")
            if not np.all(np.isfinite(h)) or h.min() < 0 or h.max() > 1 + 1e-6:
                raise StippleInputError(f"{source}: class {c} histogram has values outside [0, 1]; rebuild it.")

    # ---- files --------------------------------------------------------------------------------------------
    def save(self, npz_path: "str | Path") -> Path:
        npz_path = Path(npz_path)
        write_npz_atomic(npz_path, **self.arrays())
        meta = self.metadata()
        meta["npz_sha256"] = _sha256(npz_path)
        meta["npz_file"] = npz_path.name
        write_json_atomic(npz_path.with_suffix(".json"), meta)
        return npz_path

    @classmethod
    def load(cls, npz_path: "str | Path") -> "SpatialPrior":
        npz_path = Path(npz_path)
        if npz_path.suffix != ".npz":
            raise StippleInputError(f"{npz_path}: give the prior's .npz file ({npz_path.with_suffix('.npz').name}; "
                                    f"its .json with the metadata must lie next to it).")
        json_path = npz_path.with_suffix(".json")
        for p in (npz_path, json_path):
            if not p.is_file():
                raise StippleInputError(f"Prior file {p} does not exist. Build it with nnUNetv2_stipple_build_priors.")
        try:
            meta = json.loads(json_path.read_text())
        except json.JSONDecodeError as e:
            raise StippleInputError(f"{json_path} is not valid JSON ({e}); rebuild the prior.") from e
        if meta.get("npz_sha256") != _sha256(npz_path):
            raise StippleInputError(f"{npz_path} does not match {json_path} (checksum differs): the pair is "
                                    f"corrupt or mixed from two builds. Rebuild the prior.")
        with np.load(npz_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return cls.from_metadata_and_arrays(meta, arrays, source=str(npz_path))

    # ---- probabilities --------------------------------------------------------------------------------
    def expanded_histogram(self, c: int) -> np.ndarray:
        """The class histogram at full box resolution: every box slice takes the value of its bin."""
        size = self.box_size(c)
        bins = bin_of_slice(np.arange(size[self.axial_axis]), size[self.axial_axis], self.num_bins)
        return np.take(self.histograms[c], bins, axis=self.axial_axis)

    def template(self, c: int) -> np.ndarray:
        return self.templates[c].astype(np.float32) / 255.0

    def expanded_histogram_on(self, c: int, device) -> "torch.Tensor":
        """:meth:`expanded_histogram` as a float32 tensor on ``device``, kept with the prior (one copy per device)."""
        import torch
        cache = self.__dict__.setdefault("_expanded_on_device", {})
        key = (c, str(device))
        if key not in cache:
            cache[key] = torch.from_numpy(np.ascontiguousarray(self.expanded_histogram(c), dtype=np.float32)).to(device)
        return cache[key]

    def boxes_on_grid(self, shape: Sequence[int], centres: Mapping[int, Optional[Sequence[float]]]):
        """Per built class with a centre whose box touches the grid: ``(c, src, dst)``, the part of its expanded
        histogram (``src``) that lies on the grid at ``dst``."""
        out = []
        for c in self.built_classes:
            centre = centres.get(c)
            if centre is None:
                continue
            slices = paste_slices(box_start(centre, self.box_size(c)), self.box_size(c), shape)
            if slices is not None:
                out.append((c, *slices))
        return out

    def foreground_on_grid(self, shape: Sequence[int], centres: Mapping[int, Optional[Sequence[float]]],
                           device=None):
        """Unnormalised organ probabilities q_k (num_outputs, *shape); channel 0 is left at zero.

        ``centres[k]`` places class k's box; a class without a centre (absent, or not built) stays 0. A numpy
        array, or with ``device`` a float32 tensor made on that device."""
        import torch
        if device is None or torch.device(device).type == "cpu":
            # numpy's memory on the CPU: it comes in huge pages (see nnunet_stipple.tensors.workspace)
            out = np.zeros((self.num_outputs, *shape), dtype=np.float32)
            for c, src, dst in self.boxes_on_grid(shape, centres):
                out[(c, *dst)] = self.expanded_histogram(c)[src]
            return out if device is None else torch.from_numpy(out)
        out = torch.zeros((self.num_outputs, *shape), dtype=torch.float32, device=device)
        for c, src, dst in self.boxes_on_grid(shape, centres):
            out[(c, *dst)] = self.expanded_histogram_on(c, device)[src]
        return out

    def probabilities_on_grid(self, shape: Sequence[int], centres: Mapping[int, Optional[Sequence[float]]],
                              floor: float = DEFAULT_FLOOR, device=None):
        """Per-voxel class probabilities p (num_outputs, *shape): p > 0 everywhere and sum_k p_k = 1 (a numpy
        array, or with ``device`` a tensor made on that device)."""
        return combine_class_probabilities(self.foreground_on_grid(shape, centres, device), floor, in_place=True)

    def floored_background_on_grid(self, shape: Sequence[int], centres: Mapping[int, Optional[Sequence[float]]],
                                   floor: float, device):
        """The parts of :meth:`probabilities_on_grid` before normalisation, as float32 tensors on ``device``:
        per box on the grid ``(c, dst, histogram)`` (its histogram's part at grid slices ``dst``; organ ``c`` is
        ``floor`` elsewhere) and the background ``max(clip(1 - sum_k q_k, 0, 1), floor)`` (one channel)."""
        import torch

        from nnunet_stipple.tensors import workspace
        check_floor(floor)
        shape = tuple(int(n) for n in shape)
        boxes = [(c, dst, self.expanded_histogram_on(c, device)[src]) for c, src, dst in self.boxes_on_grid(shape, centres)]
        organs = workspace(shape, torch.float32, device, zeros=True)
        for _, dst, histogram in boxes:
            organs[dst] += histogram
        return boxes, organs.neg_().add_(1.0).clamp_(0.0, 1.0).clamp_(min=floor)

    def log_probabilities_on_grid(self, shape: Sequence[int], centres: Mapping[int, Optional[Sequence[float]]],
                                  floor: float = DEFAULT_FLOOR, device="cpu") -> "torch.Tensor":
        """``ln p`` of :meth:`probabilities_on_grid` (float32, on ``device``), computed as
        ``ln max(q_k, floor) - ln sum_c max(q_c, floor)``: outside the boxes every organ channel is ``ln floor``,
        so the class channels are written twice in all (fill, subtract) and the sums are one channel."""
        import torch

        from nnunet_stipple.tensors import workspace
        boxes, background = self.floored_background_on_grid(shape, centres, floor, device)
        total = background + floor * (self.num_outputs - 1)
        for _, dst, histogram in boxes:
            total[dst] += histogram.clamp(min=floor) - floor
        log_total = total.log_()
        out = workspace((self.num_outputs, *background.shape), torch.float32, device)
        out[1:].fill_(math.log(floor))
        for c, dst, histogram in boxes:
            out[(c, *dst)] = histogram.clamp(min=floor).log_()
        out[1:] -= log_total
        torch.sub(background.log_(), log_total, out=out[0])
        return out


def paste_slices(start: Sequence[int], size: Sequence[int], shape: Sequence[int]):
    """Where a box of ``size`` starting at ``start`` meets a grid of ``shape``: ``(src, dst)`` slices of the box
    and of the grid, or None when the box lies wholly outside."""
    src, dst = [], []
    for a, n, m in zip(start, size, shape):
        lo, hi = int(a), int(a) + int(n)
        clo, chi = max(lo, 0), min(hi, int(m))
        if chi <= clo:
            return None
        src.append(slice(clo - lo, chi - lo))
        dst.append(slice(clo, chi))
    return tuple(src), tuple(dst)


def combine_class_probabilities(q, floor: float = DEFAULT_FLOOR, channel_dim: int = 0, in_place: bool = False):
    """Turn organ probabilities q_1..q_K (channel 0 ignored) into a distribution over classes.

    Background is what the organs leave, ``q_0 = max(0, 1 - sum_k q_k)``; every class is then floored at
    ``floor`` (so ln p is finite and a badly placed prior cannot veto a class outright) and the vector is
    renormalised to sum to one. Accepts numpy arrays (returns numpy) and torch tensors (returns torch, on
    the same device): one implementation serves prediction and training. ``in_place`` reuses the memory
    of a float32 input (large volumes)."""
    import torch
    check_floor(floor)
    as_numpy = isinstance(q, np.ndarray)
    t = torch.from_numpy(np.asarray(q, dtype=np.float32)) if as_numpy else q.float()
    if not in_place:
        t = t.clone()
    organs = t.narrow(channel_dim, 1, t.shape[channel_dim] - 1)
    t.narrow(channel_dim, 0, 1).copy_((1.0 - organs.sum(channel_dim, keepdim=True)).clamp(0.0, 1.0))
    t.clamp_(min=floor)
    t /= t.sum(channel_dim, keepdim=True)
    return t.numpy() if as_numpy else t


def check_floor(floor: float) -> None:
    if not (0 < floor < 0.5):
        raise StippleInputError(f"prior floor must be in (0, 0.5), got {floor}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
