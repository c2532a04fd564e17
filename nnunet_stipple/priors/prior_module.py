"""The prior inside the network's state dict, so checkpoints (and exported zips) carry it.

``STIPPLETrainer.build_network_architecture`` attaches a :class:`PriorModule` as ``network.stipple_prior``.
Its buffers (histograms, templates, and the metadata as UTF-8 JSON bytes) are saved by nnU-Net's own
``save_checkpoint`` inside ``network_weights`` and restored by ``load_state_dict`` in nnU-Net's trainer and
predictor, one prior per fold. The module takes no part in ``forward``.

The same builder also installs a forward pre-hook that refuses to run: a plain ``nnUNetPredictor`` (e.g.
``nnUNetv2_predict -tr STIPPLETrainer``) would otherwise silently produce prior-free results. The STIPPLE
trainer and predictor remove that hook with :func:`allow_prior_free_forward`.
"""
from __future__ import annotations

import json
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn

from nnunet_stipple.priors.algorithm import bin_of_slice
from nnunet_stipple.priors.spatial_prior import SpatialPrior

PRIOR_ATTRIBUTE = "stipple_prior"
METADATA_BUFFER = "meta_json"
_REFUSAL_HANDLE = "_stipple_refusal_hook"


class PriorRequiredError(RuntimeError):
    pass


class PriorModule(nn.Module):
    """Holds one fold's :class:`SpatialPrior` as buffers plus the STIPPLE settings needed at inference."""

    def __init__(self):
        super().__init__()
        self._cache = None

    # ---- content ----------------------------------------------------------------------------------------
    @property
    def is_set(self) -> bool:
        return METADATA_BUFFER in self._buffers

    def set_prior(self, prior: SpatialPrior, settings: Optional[dict] = None) -> None:
        device = next(iter(self._buffers.values())).device if self._buffers else torch.device("cpu")
        for k in list(self._buffers):
            del self._buffers[k]
        meta = prior.metadata()
        meta["case_centres"] = {}  # per-case centres are training data, not needed at inference
        meta["stipple_settings"] = dict(settings or {})
        self.register_buffer(METADATA_BUFFER, torch.frombuffer(bytearray(json.dumps(meta).encode()), dtype=torch.uint8)
                             .clone().to(device))
        for name, arr in prior.arrays().items():
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(arr)).to(device))
        self._cache = None

    def metadata(self) -> dict:
        if not self.is_set:
            raise PriorRequiredError("This network holds no STIPPLE prior.")
        return _decode_metadata(self.meta_json)

    @property
    def settings(self) -> dict:
        """The trainer's settings stored with the prior (``STIPPLETrainer.stipple_settings``)."""
        return self.metadata().get("stipple_settings", {})

    def spatial_prior(self) -> SpatialPrior:
        return prior_of_buffers(self._buffers, "the network's STIPPLE prior")[0]

    # ---- state dict with shapes that depend on the prior ------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        mine = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not mine:
            return  # a checkpoint without prior: the predictor reports it with a clear message
        for k in list(self._buffers):
            del self._buffers[k]
        device = torch.device("cpu")
        for name, value in mine.items():
            if "." in name:
                unexpected_keys.append(prefix + name)
                continue
            self.register_buffer(name, value.detach().clone().to(device))
        self._cache = None

    # ---- training: prior at augmented voxel coordinates ----------------------------------------------------
    def _lookup_tables(self, device):
        cache = getattr(self, "_cache", None)
        if cache is not None and cache["device"] == device:
            return cache
        meta = self.metadata()
        classes = [int(c) for c in meta["built_classes"]]
        shapes = {c: tuple(getattr(self, f"hist_{c}").shape) for c in classes}
        # every class histogram flattened into one table, followed by one zero: lookups outside a box land there
        sizes = [int(np.prod(shapes[c])) for c in classes]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        table = torch.cat([getattr(self, f"hist_{c}").to(device).float().flatten() for c in classes]
                          + [torch.zeros(1, device=device)])
        tables = {
            "device": device,
            "axial_axis": int(meta["axial_axis"]),
            "num_bins": int(meta["num_bins"]),
            "num_outputs": max(int(k) for k in meta["labels"]) + 1,
            "classes": classes,
            "hist_shape": shapes,
            "hist_offset": {c: int(o) for c, o in zip(classes, offsets[:-1])},
            "outside": int(offsets[-1]),          # index of the zero
            "table": table,
            "box": {c: [int(v) for v in meta["box_sizes"][str(c)]] for c in classes},
        }
        self._cache = tables
        return tables

    def organ_probabilities_at(self, coords: torch.Tensor, starts: Dict[int, torch.Tensor],
                               present: Dict[int, torch.Tensor]) -> torch.Tensor:
        """q_k at voxel coordinates.

        coords: (N, 3, *S) float voxel coordinates in each case's preprocessed array (nearest voxel is used);
        starts[k]: (N, 3) long box start of class k per sample; present[k]: (N,) bool.
        Returns (N, num_outputs, *S) with channel 0 zero.

        Why it is separable: whether a voxel lies in class k's box, and the histogram index it reads, are
        sums of per-axis terms. Per sample, small per-axis tables (coordinate range x classes) hold
        ``stride * bin`` (or a value past the end when outside the box); three gathers and two additions
        give every class's flat index at once, and one gather reads the histograms. That is a few passes
        over the patch instead of a dozen per class (the lookup ran every training step)."""
        t = self._lookup_tables(coords.device)
        device = coords.device
        n, spatial = coords.shape[0], tuple(coords.shape[2:])
        out = torch.zeros((n, t["num_outputs"], *spatial), device=device, dtype=torch.float32)
        idx = torch.floor(coords + 0.5).to(torch.int64).reshape(n, 3, -1)
        a, nb, outside = t["axial_axis"], t["num_bins"], t["outside"]
        # three per-axis terms, each at most `outside`, are summed: int32 unless that could overflow
        index_dtype = torch.int32 if 3 * outside < 2 ** 31 else torch.int64
        for i in range(n):
            classes = [c for c in t["classes"] if c in starts and bool(present[c][i])]
            if not classes:
                continue
            lo = idx[i].amin(dim=1)
            hi = idx[i].amax(dim=1)
            flat = None
            for d in range(3):
                v = torch.arange(int(lo[d]), int(hi[d]) + 1, device=device)            # coordinate range, axis d
                terms = []
                for c in classes:
                    box, hs = t["box"][c], t["hist_shape"][c]
                    rel = v - int(starts[c][i, d])
                    inside = (rel >= 0) & (rel < box[d])
                    r = rel.clamp(0, box[d] - 1)
                    if d == a:
                        r = bin_of_slice(r, box[d], nb)
                    stride = int(np.prod(hs[d + 1:]))
                    term = r * stride + (t["hist_offset"][c] if d == 0 else 0)
                    terms.append(torch.where(inside, term, torch.full_like(term, outside)))
                table_d = torch.stack(terms, dim=1).to(index_dtype)                      # (range, classes)
                gathered = table_d.index_select(0, idx[i, d] - lo[d])                   # (voxels, classes)
                flat = gathered if flat is None else flat.add_(gathered)
            values = t["table"][flat.clamp_max_(outside)]                              # (voxels, classes)
            out[i, classes] = values.t().reshape(len(classes), *spatial)
        return out


def _decode_metadata(meta_json: torch.Tensor) -> dict:
    return json.loads(bytes(meta_json.detach().cpu().numpy().tobytes()).decode())


def prior_of_buffers(buffers: Mapping[str, torch.Tensor], source: str) -> Tuple[SpatialPrior, dict]:
    """The prior held by a :class:`PriorModule`'s buffers (name -> tensor) and the trainer settings stored
    with it; ``source`` names them in errors."""
    meta = _decode_metadata(buffers[METADATA_BUFFER])
    arrays = {k: v.detach().cpu().numpy() for k, v in buffers.items() if k != METADATA_BUFFER}
    return SpatialPrior.from_metadata_and_arrays(meta, arrays, source=source), meta.get("stipple_settings", {})


def prior_of_state_dict(state_dict: Mapping[str, torch.Tensor], source: str) -> Tuple[SpatialPrior, dict]:
    """The prior in a STIPPLE network's state dict (e.g. one fold's parameters in a predictor) and the
    trainer settings stored with it; ``source`` (the checkpoint) names them in errors."""
    prefix = PRIOR_ATTRIBUTE + "."
    return prior_of_buffers({k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)},
                            f"the STIPPLE prior in {source}")


def attach_prior_module(network: nn.Module) -> nn.Module:
    setattr(network, PRIOR_ATTRIBUTE, PriorModule())

    def _refuse(module, args):
        raise PriorRequiredError(
            "This model was trained with STIPPLE: its raw logits are not the model's prediction, the fold's "
            "spatial prior must be positioned and added. Predict with `nnUNetv2_stipple_predict` (same arguments "
            "as nnUNetv2_predict) or nnunet_stipple.inference.STIPPLEPredictor.")

    setattr(network, _REFUSAL_HANDLE, network.register_forward_pre_hook(_refuse))
    return network


def allow_prior_free_forward(network: nn.Module) -> None:
    handle = getattr(network, _REFUSAL_HANDLE, None)
    if handle is not None:
        handle.remove()
        setattr(network, _REFUSAL_HANDLE, None)


def unwrap_network(network: nn.Module) -> nn.Module:
    """The module that owns the weights, under DDP and torch.compile wrappers."""
    from torch._dynamo import OptimizedModule
    from torch.nn.parallel import DistributedDataParallel
    if isinstance(network, DistributedDataParallel):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


def prior_module_of(network: nn.Module) -> PriorModule:
    mod = getattr(unwrap_network(network), PRIOR_ATTRIBUTE, None)
    if mod is None:
        raise PriorRequiredError("This network has no STIPPLE prior module (was it built by a STIPPLE trainer?).")
    return mod
