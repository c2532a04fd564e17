"""Unlabeled patches through nnU-Net's own data loader and training augmentation, labels never read.

The unlabeled cases (:func:`nnunet_stipple.pseudo_labeling.unlabeled.collect_unlabeled_cases`: the fold's hidden
training cases and the preprocessed ``imagesUnlabeled/``) live in up to two preprocessed folders.
:class:`UnlabeledImages` serves them to :class:`UnlabeledDataLoader`, nnU-Net's ``nnUNetDataLoader`` unchanged
except for what could leak a label:

* the segmentation handed to the augmentation is a blank array of zeros (a broadcast view: no memory, nothing
  read from the ``_seg`` file, which nnU-Net's dataset opens lazily and is dropped unread). Hidden cases keep their
  label files, and those must never be used;
* the properties lose ``class_locations`` (computed from the label at preprocessing), and every patch is drawn
  uniformly (no foreground oversampling, no "annotated voxel" sampling even with an ignore label).

The patches then go through the trainer's training transforms (spatial, intensity, mirroring) like labeled ones.
One consequence: with ``use_mask_for_norm`` nnU-Net re-masks an augmented labeled image with its transformed
``-1`` region; unlabeled patches keep the zeros preprocessing already wrote outside the mask instead.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

from nnunet_stipple.pseudo_labeling.unlabeled import UnlabeledCase


def unlabeled_batch_size(labeled_batch_size: int, ratio: float) -> int:
    """Unlabeled patches per iteration next to nnU-Net's ``labeled_batch_size`` labeled ones: ``round(ratio * B)``,
    at least 1 (the labeled batch stays nnU-Net's, so its loss is exactly nnU-Net's)."""
    return max(1, int(round(ratio * labeled_batch_size)))


class UnlabeledImages:
    """``load_case`` of nnU-Net's datasets over cases from several preprocessed folders, image only."""

    def __init__(self, cases: Sequence[UnlabeledCase]):
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        by_folder: Dict[str, List[str]] = {}
        for c in cases:
            by_folder.setdefault(str(c.data_folder), []).append(c.case)
        self._datasets = {folder: infer_dataset_class(folder)(folder, list(ids)) for folder, ids in by_folder.items()}
        self._folder_of = {c.case: str(c.data_folder) for c in cases}
        self.identifiers = sorted(self._folder_of)

    def load_case(self, identifier: str):
        data, _label_never_read, _, properties = self._datasets[self._folder_of[identifier]].load_case(identifier)
        # int8, not nnU-Net's int16: the loader's crop casts it to int16, which copies, so the patch it hands to the
        # augmentation is a writable array of its own and not a view of this zero-stride one
        blank = np.broadcast_to(np.zeros((1,) * len(data.shape), dtype=np.int8), (1, *data.shape[1:]))
        properties = {k: v for k, v in properties.items() if k != "class_locations"}
        properties["class_locations"] = None
        return data, blank, None, properties

    def __getitem__(self, identifier: str):
        return self.load_case(identifier)


class UnlabeledDataLoader(nnUNetDataLoader):
    """nnU-Net's loader over :class:`UnlabeledImages`: patches at uniformly random positions."""

    def __init__(self, data: UnlabeledImages, batch_size: int, patch_size, final_patch_size, label_manager,
                 transforms=None):
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager,
                         oversample_foreground_percent=0.0, transforms=transforms)
        # nnU-Net draws patches around annotated voxels when the dataset has an ignore label: there are none here
        self.has_ignore = False

    def get_bbox(self, data_shape, force_fg, class_locations, overwrite_class=None, verbose=False):
        return super().get_bbox(data_shape, False, None)
