"""nnUNetv2_stipple_backbone_plans on a preprocessed-dataset folder: nnU-Net's PlansManager loads the new plans,
get_network_from_plans builds the backbone, the source plans stay byte for byte, bad input gets a clear error."""
from __future__ import annotations

import json

import pytest

from nnunet_stipple.commands.backbone_plans import main
from nnunet_stipple.errors import StippleInputError
from nnunet_stipple.networks.backbone_plans import (BACKBONES, PLAIN_UNET_CLASS, cross_attention_levels,
                                                    write_backbone_plans)
from tests.conftest import run_refused

DATASET = "Dataset997_BackbonePlans"


def architecture(dims: int) -> dict:
    """PlainConvUNet arch_kwargs as nnU-Net 2.8 writes them (small features so the built networks are cheap)."""
    conv = "Conv3d" if dims == 3 else "Conv2d"
    norm = "InstanceNorm3d" if dims == 3 else "InstanceNorm2d"
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]] if dims == 3 else [[1, 1], [2, 2], [2, 2], [2, 2]]
    return {"network_class_name": PLAIN_UNET_CLASS,
            "arch_kwargs": {"n_stages": 4, "features_per_stage": [8, 16, 32, 64],
                            "conv_op": f"torch.nn.modules.conv.{conv}", "kernel_sizes": [[3] * dims] * 4,
                            "strides": strides, "n_conv_per_stage": [2, 2, 2, 2], "n_conv_per_stage_decoder": [2, 2, 2],
                            "conv_bias": True, "norm_op": f"torch.nn.modules.instancenorm.{norm}",
                            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def configuration(dims: int, identifier: str, patch) -> dict:
    return {"data_identifier": identifier, "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
            "patch_size": patch, "median_image_size_in_voxels": patch, "spacing": [1.0] * dims,
            "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
            "batch_dice": False, "architecture": architecture(dims)}


@pytest.fixture
def preprocessed(tmp_path, monkeypatch):
    """nnUNet_preprocessed/Dataset997 with nnU-Net's plans (2d, 3d_fullres, 3d_lowres inheriting from
    3d_fullres, a cascade stage), dataset.json and one preprocessed case per data_identifier."""
    base = tmp_path / "nnUNet_preprocessed" / DATASET
    base.mkdir(parents=True)
    for var in ("nnUNet_raw", "nnUNet_results"):
        (tmp_path / var).mkdir()
        monkeypatch.setenv(var, str(tmp_path / var))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "nnUNet_preprocessed"))
    plans = {"dataset_name": DATASET, "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [1, 1, 1],
             "original_median_shape_after_transp": [16, 32, 32], "image_reader_writer": "SimpleITKIO",
             "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "configurations": {
                 "2d": configuration(2, "nnUNetPlans_2d", [32, 32]),
                 "3d_fullres": configuration(3, "nnUNetPlans_3d_fullres", [16, 32, 32]),
                 "3d_lowres": {"inherits_from": "3d_fullres", "data_identifier": "nnUNetPlans_3d_lowres",
                               "spacing": [2.0, 2.0, 2.0], "next_stage": "3d_cascade_fullres"},
                 "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}},
             "experiment_planner_used": "ExperimentPlanner",
             "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {}}
    (base / "nnUNetPlans.json").write_text(json.dumps(plans, indent=4))
    (base / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1,
                                                   "b": 2}, "numTraining": 1, "file_ending": ".nii.gz"}))
    for identifier in ("nnUNetPlans_2d", "nnUNetPlans_3d_fullres", "nnUNetPlans_3d_lowres"):
        (base / identifier).mkdir()
        (base / identifier / "case_000.b2nd").write_bytes(b"")
    return base


def _network(plans_file, config):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    manager = PlansManager(str(plans_file))
    cm = manager.get_configuration(config)
    return cm, get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                      cm.network_arch_init_kwargs_req_import, 1, 3, deep_supervision=True)


@pytest.mark.parametrize("backbone, class_name", [("attention_unet", "AttentionUNet"),
                                                  ("u_transformer", "UTransformer")])
@pytest.mark.parametrize("configs", [["3d_fullres"], ["2d", "3d_lowres"]])
def test_plans_round_trip_through_nnunet(preprocessed, backbone, class_name, configs, capsys):
    import torch
    source = preprocessed / "nnUNetPlans.json"
    before = source.read_bytes()
    assert main(["-d", "997", "-c", *configs, "--backbone", backbone]) == 0
    target = preprocessed / f"nnUNetPlans_{backbone}.json"
    assert "written" in capsys.readouterr().out and source.read_bytes() == before
    plans = json.loads(target.read_text())
    assert plans["plans_name"] == f"nnUNetPlans_{backbone}" and sorted(plans["configurations"]) == sorted(configs)
    original = json.loads(before)["configurations"]
    for config in configs:
        cm, net = _network(target, config)
        assert type(net).__name__ == class_name and cm.network_arch_class_name == BACKBONES[backbone].network_class_name
        # the data nnU-Net preprocessed is reused: same identifier (3d_lowres' own, resolved from its parent)
        assert cm.data_identifier == original[config]["data_identifier"]
        assert "inherits_from" not in plans["configurations"][config]
        with torch.no_grad():
            outputs = net(torch.zeros(1, 1, *cm.patch_size))
        assert tuple(outputs[0].shape) == (1, 3, *cm.patch_size)
    # running it again finds the same file and leaves it alone
    stamp = target.stat().st_mtime_ns
    assert main(["-d", DATASET, "-c", *configs, "--backbone", backbone]) == 0
    assert "up to date" in capsys.readouterr().out and target.stat().st_mtime_ns == stamp


def test_u_transformer_levels_follow_the_token_budget(preprocessed):
    """3d_fullres, patch 16x32x32: levels 1..3 hold 16*16*16, 8*8*8, 4*4*4 voxels."""
    assert cross_attention_levels([16, 32, 32], architecture(3)["arch_kwargs"]["strides"], 4096) == [0, 1, 2]
    assert cross_attention_levels([16, 32, 32], architecture(3)["arch_kwargs"]["strides"], 512) == [1, 2]
    target = write_backbone_plans(997, ["3d_fullres"], "u_transformer", plans_name="small", max_attention_tokens=64,
                                  log=lambda _: None)
    arch = json.loads(target.read_text())["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert arch["cross_attention_levels"] == [2] and arch["num_heads"] == 8 and arch["positional_encoding"] is True
    _, net = _network(target, "3d_fullres")
    assert net.cross_attention_levels == [2]


def test_existing_plans_with_other_content_are_refused_unless_overwrite(preprocessed, capsys):
    target = preprocessed / "mine.json"
    target.write_text("{}")
    code, captured = run_refused(main, ["-d", "997", "-c", "2d", "--backbone", "attention_unet", "--name", "mine"],
                                 capsys)
    assert code == 2 and str(target) in captured.err and "--overwrite" in captured.err
    assert target.read_text() == "{}"
    assert main(["-d", "997", "-c", "2d", "--backbone", "attention_unet", "--name", "mine", "--overwrite"]) == 0
    assert "AttentionUNet" in target.read_text()


@pytest.mark.parametrize("argv, expected", [
    (["-d", "996", "-c", "2d", "--backbone", "attention_unet"], "Dataset 996 not found"),
    (["-d", "997", "-c", "2d", "-p", "nnUNetResEncUNetMPlans", "--backbone", "attention_unet"],
     "nnUNetResEncUNetMPlans.json does not exist"),
    (["-d", "997", "-c", "3d_highres", "--backbone", "u_transformer"], "Configuration '3d_highres' is not in"),
    (["-d", "997", "-c", "3d_cascade_fullres", "--backbone", "u_transformer"], "cascade"),
    (["-d", "997", "-c", "2d", "--backbone", "u_transformer", "--name", "nnUNetPlans"], "must differ"),
    (["-d", "997", "-c", "2d", "--backbone", "u_transformer", "--max-attention-tokens", "0"], "must be >= 1"),
])
def test_bad_input_is_named(preprocessed, capsys, argv, expected):
    before = (preprocessed / "nnUNetPlans.json").read_bytes()
    code, captured = run_refused(main, argv, capsys)
    assert code == 2 and expected in captured.err, captured.err
    assert (preprocessed / "nnUNetPlans.json").read_bytes() == before
    assert sorted(p.name for p in preprocessed.glob("*.json")) == ["dataset.json", "nnUNetPlans.json"]


def test_unknown_backbone_is_a_usage_error(preprocessed, capsys):
    code, captured = run_refused(main, ["-d", "997", "-c", "2d", "--backbone", "swin_unetr"], capsys)
    assert code == 2 and "invalid choice: 'swin_unetr'" in captured.err
    with pytest.raises(StippleInputError, match="Unknown backbone 'swin_unetr'"):
        write_backbone_plans(997, ["2d"], "swin_unetr")


def test_plans_of_another_network_are_refused(preprocessed, capsys):
    source = preprocessed / "nnUNetPlans.json"
    plans = json.loads(source.read_text())
    plans["configurations"]["2d"]["architecture"]["network_class_name"] = \
        "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    (preprocessed / "resenc.json").write_text(json.dumps(plans))
    code, captured = run_refused(main, ["-d", "997", "-c", "2d", "-p", "resenc", "--backbone", "u_transformer"],
                                 capsys)
    assert code == 2 and "resenc.json (2d)" in captured.err and "ResidualEncoderUNet" in captured.err


def test_missing_preprocessed_data_is_named(preprocessed, capsys):
    (preprocessed / "nnUNetPlans_2d" / "case_000.b2nd").unlink()
    code, captured = run_refused(main, ["-d", "997", "-c", "2d", "--backbone", "attention_unet"], capsys)
    assert code == 2 and "nnUNetPlans_2d holds no preprocessed cases" in captured.err
