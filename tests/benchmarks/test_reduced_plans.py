"""Reduced plans derived from nnU-Net's own (nnunet_stipple.benchmarks.reduced_plans)."""
from __future__ import annotations

import json

import pytest

from nnunet_stipple.benchmarks.reduced_plans import (NetworkReduction, derive_reduced_plans, describe_changes,
                                                     ensure_reduced_plans)
from nnunet_stipple.errors import StippleInputError

CPU2D = NetworkReduction(batch_size=8, n_stages=5, base_features=16, max_features=256)


def _plans(n_stages=6, patch=(128, 128)):
    """The 2d configuration nnU-Net 2.8.1 planned for Dataset102_BTCVLowres (6 stages, 32-512 features)."""
    return {"dataset_name": "Dataset102_BTCVLowres", "plans_name": "nnUNetPlans",
            "configurations": {
                "2d": {"data_identifier": "nnUNetPlans_2d", "batch_size": 179, "patch_size": list(patch),
                       "spacing": [2.7, 2.7],
                       "architecture": {
                           "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                           "arch_kwargs": {"n_stages": n_stages,
                                           "features_per_stage": [min(32 * 2 ** i, 512) for i in range(n_stages)],
                                           "kernel_sizes": [[3, 3]] * n_stages,
                                           "strides": [[1, 1]] + [[2, 2]] * (n_stages - 1),
                                           "n_conv_per_stage": [2] * n_stages,
                                           "n_conv_per_stage_decoder": [2] * (n_stages - 1), "conv_bias": True},
                           "_kw_requires_import": []}},
                "3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres"},
                "3d_lowres": {"inherits_from": "3d_fullres"}}}


def test_cpu2d_reduction_of_btcv_lowres_plans():
    original = _plans()
    reduced = derive_reduced_plans(original, "2d", CPU2D, "nnUNetPlans_cpu2d")
    assert reduced["plans_name"] == "nnUNetPlans_cpu2d" and list(reduced["configurations"]) == ["2d"]
    c = reduced["configurations"]["2d"]
    arch = c["architecture"]["arch_kwargs"]
    assert c["batch_size"] == 8 and c["patch_size"] == [128, 128] and c["data_identifier"] == "nnUNetPlans_2d"
    assert arch["n_stages"] == 5 and arch["features_per_stage"] == [16, 32, 64, 128, 256]
    assert arch["strides"] == [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]] and len(arch["kernel_sizes"]) == 5
    assert arch["n_conv_per_stage"] == [2] * 5 and arch["n_conv_per_stage_decoder"] == [2] * 4
    assert original["configurations"]["2d"]["batch_size"] == 179          # the source is not modified
    changed = describe_changes(original, reduced, "2d")
    assert changed["batch_size"] == {"nnunet": 179, "used": 8}
    assert changed["features_per_stage"]["used"] == [16, 32, 64, 128, 256]
    assert set(changed) == {"batch_size", "n_stages", "features_per_stage", "kernel_sizes", "strides",
                            "n_conv_per_stage", "n_conv_per_stage_decoder", "data_identifier"}


def test_smaller_network_keeps_its_stages():
    reduced = derive_reduced_plans(_plans(n_stages=4, patch=(32, 32)), "2d", CPU2D, "p")
    arch = reduced["configurations"]["2d"]["architecture"]["arch_kwargs"]
    assert arch["n_stages"] == 4 and arch["features_per_stage"] == [16, 32, 64, 128]


@pytest.mark.parametrize("configuration, reduction, match", [
    ("3d_cascade", CPU2D, "not in nnUNetPlans.json"),
    ("3d_lowres", CPU2D, "inherits from another one"),
    ("2d", NetworkReduction(8, 1, 16, 256), "at least 2 stages"),
    ("2d", NetworkReduction(0, 5, 16, 256), "invalid reduction"),
    ("2d", NetworkReduction(8, 5, 32, 16), "invalid reduction"),
])
def test_bad_reductions(configuration, reduction, match):
    with pytest.raises(StippleInputError, match=match):
        derive_reduced_plans(_plans(), configuration, reduction, "p")


def test_patch_not_divisible_by_strides():
    with pytest.raises(StippleInputError, match="not divisible"):
        derive_reduced_plans(_plans(patch=(120, 128)), "2d", CPU2D, "p")


def test_ensure_writes_once_and_refuses_foreign_file(tmp_path):
    base = tmp_path / "Dataset102_BTCVLowres"
    (base / "nnUNetPlans_2d").mkdir(parents=True)
    (base / "nnUNetPlans_2d" / "BTCV_0001.b2nd").write_bytes(b"")
    (base / "nnUNetPlans.json").write_text(json.dumps(_plans()))
    calls = []
    info = ensure_reduced_plans("Dataset102_BTCVLowres", "2d", "nnUNetPlans_cpu2d", CPU2D, tmp_path,
                                lambda: calls.append(1), log=lambda m: None)
    assert calls == [] and info["changed"]["batch_size"]["used"] == 8
    written = json.loads((base / "nnUNetPlans_cpu2d.json").read_text())
    assert written["configurations"]["2d"]["batch_size"] == 8
    ensure_reduced_plans("Dataset102_BTCVLowres", "2d", "nnUNetPlans_cpu2d", CPU2D, tmp_path, lambda: None,
                         log=lambda m: None)                                 # same content: fine
    written["configurations"]["2d"]["batch_size"] = 4
    (base / "nnUNetPlans_cpu2d.json").write_text(json.dumps(written))
    with pytest.raises(StippleInputError, match="exists with other content"):
        ensure_reduced_plans("Dataset102_BTCVLowres", "2d", "nnUNetPlans_cpu2d", CPU2D, tmp_path, lambda: None,
                             log=lambda m: None)


def test_ensure_plans_first_when_not_preprocessed(tmp_path):
    base = tmp_path / "Dataset102_BTCVLowres"
    calls = []

    def plan():
        calls.append(1)
        (base / "nnUNetPlans_2d").mkdir(parents=True)
        (base / "nnUNetPlans_2d" / "x.b2nd").write_bytes(b"")
        (base / "nnUNetPlans.json").write_text(json.dumps(_plans()))
    ensure_reduced_plans("Dataset102_BTCVLowres", "2d", "nnUNetPlans_cpu2d", CPU2D, tmp_path, plan,
                         log=lambda m: None)
    assert calls == [1] and (base / "nnUNetPlans_cpu2d.json").is_file()
    with pytest.raises(StippleInputError, match="still missing after planning"):
        ensure_reduced_plans("Dataset999_Nothing", "2d", "p", CPU2D, tmp_path, lambda: None, log=lambda m: None)
