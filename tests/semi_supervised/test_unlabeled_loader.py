"""Unlabeled patches come from nnU-Net's data loader over the phantom's preprocessed cases, labels never handed
out (nnunet_stipple.semi_supervised.unlabeled_loader)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nnunet_stipple.nnunet_folders import all_case_ids, dataset_class_for, open_preprocessed
from nnunet_stipple.pseudo_labeling.unlabeled import UnlabeledCase
from nnunet_stipple.semi_supervised.unlabeled_loader import UnlabeledDataLoader, UnlabeledImages


def _images(ds, n=3):
    cases = all_case_ids(ds)[:n]
    return cases, UnlabeledImages([UnlabeledCase(c, ds.data_folder, True) for c in cases])


def test_hidden_cases_are_handed_out_without_their_labels(nnunet_env):
    ds = open_preprocessed(nnunet_env["dataset_id"], "3d_fullres")
    cases, images = _images(ds)
    assert images.identifiers == sorted(cases)
    data, seg, prev, props = images.load_case(cases[0])
    real_data, real_seg, _, real_props = dataset_class_for(ds)(str(ds.data_folder), [cases[0]]).load_case(cases[0])
    assert (np.asarray(real_seg) > 0).any() and real_props["class_locations"]     # the case has a label ...
    assert seg.shape == (1, *data.shape[1:]) and not seg.any()                    # ... that is not handed out
    assert props["class_locations"] is None and prev is None
    assert np.array_equal(np.asarray(data), np.asarray(real_data))                 # the image is


@pytest.mark.filterwarnings("error:The given NumPy array is not writable")
def test_loader_draws_patches_anywhere_even_with_an_ignore_label(nnunet_env):
    """nnU-Net's loader picks patches around annotated voxels (from the label) when the dataset has an ignore
    label, or around foreground when oversampling: neither happens for unlabeled patches."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    ds = open_preprocessed(nnunet_env["dataset_id"], "2d")
    labels = dict(ds.dataset_json["labels"])
    labels["ignore"] = max(v for v in labels.values() if isinstance(v, int)) + 1
    lm = PlansManager(ds.plans).get_label_manager({**ds.dataset_json, "labels": labels})
    assert lm.has_ignore_label
    patch = ds.configuration_manager.patch_size
    _, images = _images(ds)
    loader = UnlabeledDataLoader(images, 3, patch, patch, lm)
    assert not loader.has_ignore and loader.oversample_foreground_percent == 0
    batch = loader.generate_train_batch()
    assert tuple(batch["data"].shape) == (3, 1, *patch) and not batch["target"].any()
    assert batch["target"].dtype == torch.int16                 # as nnU-Net's, a tensor of its own
    # asked for foreground, without class locations: still a random box of the patch size inside the padding
    shape = (24, 32, 32)
    lo, hi = loader.get_bbox(shape, True, None)
    assert [h - low for low, h in zip(lo, hi)] == list(loader.patch_size)
