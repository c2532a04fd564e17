"""Prediction input checks that run before a model is loaded (issue 12): output folders that cannot be written,
truncated checkpoints, 4-D and 2-D images."""
from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.inference.input_checks import check_checkpoint_readable, check_image_geometry, \
    check_output_folder, model_expects_volumes


def _file(path, text="x"):
    path.write_text(text)
    return path


@pytest.mark.parametrize("make, says", [
    (lambda t: _file(t / "out"), "is a file"),
    (lambda t: _file(t / "f") / "sub" / "out", "f is a file, not a folder"),
])
def test_output_folder_in_the_way(tmp_path, make, says):
    with pytest.raises(StippleInputError, match=says):
        check_output_folder(make(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
@pytest.mark.parametrize("sub", ["", "new/deeper"])
def test_output_folder_not_writable(tmp_path, sub):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(StippleInputError, match="not writable"):
            check_output_folder(locked / sub if sub else locked)
    finally:
        locked.chmod(0o700)


def test_not_writable_is_reported_even_for_root(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(StippleInputError, match="would be created in .* which is not writable"):
        check_output_folder(tmp_path / "a" / "b")


@pytest.mark.parametrize("target", ["existing", "new", "new/deeper"])
def test_writable_output_folders_pass(tmp_path, target):
    (tmp_path / "existing").mkdir()
    assert check_output_folder(tmp_path / target) == tmp_path / target


def test_truncated_checkpoint_is_named(tmp_path):
    import torch
    good = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {"w": torch.ones(100)}}, good)
    check_checkpoint_readable(good)
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(StippleInputError, match="truncated.pth is not a readable torch checkpoint"):
        check_checkpoint_readable(bad)
    assert zipfile.is_zipfile(good) and not zipfile.is_zipfile(bad)


def _image(path, shape):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(shape, np.float32), isVector=False), str(path))
    return path


@pytest.mark.parametrize("shape, volumes, says", [
    ((2, 5, 6, 7), True, "4-D image of size (7, 6, 5, 2)"),
    ((6, 7), True, "a 2-D image of size (7, 6)"),
    ((1, 6, 7), True, "a 2-D image of size (7, 6, 1)"),
    ((5, 6, 7), True, None),
    ((1, 6, 7), False, None),        # a model of 2-D images: one slice is what it expects
    ((6, 7), False, None),
])
def test_image_geometry(tmp_path, shape, volumes, says):
    files = [_image(tmp_path / "case_0000.nii.gz", shape)]
    if says is None:
        check_image_geometry(files, volumes)
    else:
        with pytest.raises(StippleInputError) as e:
            check_image_geometry(files, volumes)
        assert says in str(e.value) and "case_0000.nii.gz" in str(e.value)


def test_other_formats_are_left_to_nnunet(tmp_path):
    check_image_geometry([_file(tmp_path / "case_0000.png", "not read here")])


@pytest.mark.parametrize("shape, volumes", [([120, 256, 256], True), ([1, 512, 512], False), ([], False)])
def test_model_expects_volumes(shape, volumes):
    assert model_expects_volumes({"original_median_shape_after_transp": shape}) == volumes
