"""Alternative backbones for nnU-Net plans (``network_class_name``): Attention U-Net and U-Transformer.

Both take the arguments of dynamic-network-architectures' ``PlainConvUNet`` plus their own documented extras, so
``nnUNetv2_stipple_backbone_plans`` turns nnU-Net's plans into plans for them by changing the class name and adding
the extras (:mod:`.backbone_plans`)."""
from nnunet_stipple.networks.attention_unet import AttentionUNet
from nnunet_stipple.networks.u_transformer import UTransformer

__all__ = ["AttentionUNet", "UTransformer"]
