"""nnunet_stipple: STIPPLE spatial priors and prior-guided pseudo-labels for nnU-Net v2."""
__version__ = "0.1.0"
