"""nnU-Net's data loader, plus the voxel coordinates of every patch voxel as a ``regression_target``.

Why coordinates and not the prior itself: batchgeneratorsv2 carries ``regression_target`` through
nnU-Net's spatial transform (same grid, linear interpolation), mirroring and the pseudo-2D reshapes, and
leaves it alone in intensity and segmentation-only transforms. Coordinates are affine in space, so linear
interpolation moves them exactly with the image; the trainer then looks the prior up at the transformed
coordinates (a few gathers on the GPU). That keeps the prior aligned with the augmented image and label
at the cost of 4 channels instead of one per class.

Channel 3 is a validity channel of ones: the spatial transform pads with 0, so a voxel whose validity
came back below 1 was (partly) sampled from outside the patch; coordinates are divided by it and voxels
with validity < 0.5 get a uniform prior.

``generate_train_batch`` is re-implemented because nnU-Net keeps the crop box internal to it; apart from
the coordinates it does what nnunetv2 2.8.1's does.
"""
from __future__ import annotations


import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from threadpoolctl import threadpool_limits

COORDINATE_CHANNELS = 4
BATCH_KEY = "stipple_coordinates"


def patch_coordinates(bbox) -> torch.Tensor:
    """(4, *patch) float32: the voxel index of every patch voxel along each axis, and a channel of ones."""
    axes = [torch.arange(lo, hi, dtype=torch.float32) for lo, hi in bbox]
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([*grids, torch.ones_like(grids[0])])


class STIPPLEDataLoader(nnUNetDataLoader):
    def generate_train_batch(self):
        selected_keys = self.get_indices()
        data_all = seg_all = coords_all = None
        with torch.no_grad():
            with threadpool_limits(limits=1, user_api=None):
                for j, i in enumerate(selected_keys):
                    force_fg = self.get_do_oversample(j)
                    data, seg, seg_prev, properties = self._data.load_case(i)
                    shape = data.shape[1:]
                    bbox_lbs, bbox_ubs = self.get_bbox(shape, force_fg, properties['class_locations'])
                    bbox = [[a, b] for a, b in zip(bbox_lbs, bbox_ubs)]

                    data_cropped = torch.from_numpy(crop_and_pad_nd(data, bbox, 0)).float()
                    seg_cropped = torch.from_numpy(crop_and_pad_nd(seg, bbox, -1, cast_cropped_to=np.int16)).to(torch.int16)
                    if seg_prev is not None:
                        seg_prev_cropped = torch.from_numpy(
                            crop_and_pad_nd(seg_prev, bbox, -1, cast_cropped_to=np.int16)).to(torch.int16)
                        seg_cropped = torch.cat((seg_cropped, seg_prev_cropped[None]), dim=0)
                    coords = patch_coordinates(bbox)

                    if self.patch_size_was_2d:
                        data_cropped = data_cropped[:, 0]
                        seg_cropped = seg_cropped[:, 0]
                        coords = coords[:, 0]

                    if self.transforms is not None:
                        transformed = self.transforms(**{'image': data_cropped, 'segmentation': seg_cropped,
                                                         'regression_target': coords})
                        data_sample = transformed['image']
                        seg_sample = transformed['segmentation']
                        coords_sample = transformed['regression_target']
                    else:
                        data_sample, seg_sample, coords_sample = data_cropped, seg_cropped, coords

                    if data_all is None:
                        data_all = torch.empty((self.batch_size, *data_sample.shape), dtype=torch.float32)
                        coords_all = torch.empty((self.batch_size, *coords_sample.shape), dtype=torch.float32)
                    data_all[j] = data_sample
                    coords_all[j] = coords_sample

                    if isinstance(seg_sample, list):
                        if seg_all is None:
                            seg_all = [torch.empty((self.batch_size, *s.shape), dtype=s.dtype) for s in seg_sample]
                        for s_idx, s in enumerate(seg_sample):
                            seg_all[s_idx][j] = s
                    else:
                        if seg_all is None:
                            seg_all = torch.empty((self.batch_size, *seg_sample.shape), dtype=seg_sample.dtype)
                        seg_all[j] = seg_sample
        return {'data': data_all, 'target': seg_all, 'keys': selected_keys, BATCH_KEY: coords_all}


def nnunet_transforms(trainer, deep_supervision: bool = True, validation: bool = False):
    """The training (or validation) transforms ``nnUNetTrainer.get_dataloaders`` builds (nnunetv2 2.8.1) and the
    patch size the loader must crop for them; ``deep_supervision`` False leaves out the targets' downsampling."""
    patch_size = trainer.configuration_manager.patch_size
    scales = trainer._get_deep_supervision_scales() if deep_supervision else None
    rotation_for_DA, do_dummy_2d_data_aug, initial_patch_size, mirror_axes = \
        trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    lm = trainer.label_manager
    labels = dict(is_cascaded=trainer.is_cascaded, foreground_labels=lm.foreground_labels,
                  regions=lm.foreground_regions if lm.has_regions else None, ignore_label=lm.ignore_label)
    if validation:
        return trainer.get_validation_transforms(scales, **labels), patch_size
    return trainer.get_training_transforms(patch_size, rotation_for_DA, scales, mirror_axes, do_dummy_2d_data_aug,
                                           use_mask_for_norm=trainer.configuration_manager.use_mask_for_norm,
                                           **labels), initial_patch_size


def nnunet_augmenter(trainer, loader, validation: bool = False):
    """``loader`` in the background workers nnU-Net 2.8.1 gives its training (or validation) loader, none when
    nnU-Net is told to use none; the first batch drawn as nnU-Net does."""
    n = get_allowed_n_proc_DA()
    if n == 0:
        gen = SingleThreadedAugmenter(loader, None)
    else:
        processes, cached = (max(1, n // 2), max(3, n // 4)) if validation else (n, max(6, n // 2))
        gen = NonDetMultiThreadedAugmenter(loader, None, processes, cached, None,
                                           pin_memory=trainer.device.type == 'cuda', wait_time=0.002)
    next(gen)
    return gen
