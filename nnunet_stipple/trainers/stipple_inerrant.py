"""STIPPLETrainer_INERRANT: STIPPLE's prior-driven sigmoid on INERRANT's per-class outputs (issue 17, item 5).

Per-class sigmoids behind a fixed background logit (:mod:`nnunet_stipple.partial_labels.network`) trained with the
ambiguity maps of ``partial_labels.json`` (:class:`~nnunet_stipple.trainers.inerrant.PartialLabelsMixin`), with
STIPPLE's spatial prior added as Eq. 3's offset ln p_k - ln(1 - p_k) to class k's logit (0 on the background
channel, so nnU-Net's argmax stays INERRANT's prediction rule).

The prior of a class that a case does not annotate: Algorithm 1 only sees the label files, where such a class has
no voxel (the declaration check guarantees it), so the class's histogram is built from the cases that annotate it
and the case gets no organ box for it. STIPPLETrainer would then give that class the floor in that case, a strong
"not here" exactly where the organ may well be. This trainer gives it no prior there instead (offset 0: p = 1/2,
uninformative), as for prior dropout. Placing the box from the annotated organs' layout would be the stronger
choice; it is not done (README, 'Partially labeled datasets').

Prediction: ``nnUNetv2_stipple_predict`` (the stored settings say ``class_sigmoid``, and the predictor adds the
sigmoid offsets); plain ``nnUNetv2_predict`` is refused as for every STIPPLE model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nnunet_stipple.activation.prior_driven import class_sigmoid_offsets
from nnunet_stipple.inference.predictor import CLASS_SIGMOID_KEY
from nnunet_stipple.partial_labels.network import fix_background_logit
from nnunet_stipple.trainers.inerrant import PARTIAL_LABELS_RECORD, PartialLabelsMixin
from nnunet_stipple.trainers.stipple_trainer import STIPPLETrainer
from nnunet_stipple.atomic import write_json_atomic


class STIPPLETrainer_INERRANT(PartialLabelsMixin, STIPPLETrainer):

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        # the background hook is installed first, so the prior hook (initialize) adds to the fixed 0 logit's
        # channel only its own 0 offset
        return fix_background_logit(STIPPLETrainer.build_network_architecture(
            plans_manager, configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision))

    def stipple_settings(self) -> dict:
        return {**super().stipple_settings(), CLASS_SIGMOID_KEY: True}

    def output_offset(self, pt: torch.Tensor, uniform: torch.Tensor, size, batch: dict) -> torch.Tensor:
        off = class_sigmoid_offsets(pt, self.stipple_floor)
        u = uniform.float().unsqueeze(1)
        u = u if tuple(u.shape[2:]) == size else F.interpolate(u, size=size, mode='area')
        ann = torch.from_numpy(self.partial_labels.annotation_mask([str(k) for k in batch['keys']])).to(off.device)
        ann = torch.cat([torch.ones_like(ann[:, :1]), ann], 1).view(ann.shape[0], -1, *([1] * len(size)))
        # uniform samples and classes the case does not annotate: no prior (offset 0)
        return off * (u < 0.5) * ann

    def on_train_start(self):
        super().on_train_start()
        self._report_partial_labels()
        if self.local_rank == 0:
            write_json_atomic(self.fold_folder_path / PARTIAL_LABELS_RECORD,
                              {**self.partial_labels.to_json(), "warnings": list(self.partial_labels.warnings)})
