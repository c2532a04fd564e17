"""The folder nnU-Net's ``nnUNet_extTrainer`` points at.

nnU-Net imports every top-level module of that folder and drops them from ``sys.modules`` afterwards, so
this module only re-exports classes defined in the installed package: their ``__module__`` stays
``nnunet_stipple.trainers...``, which worker processes can import again.
"""
from nnunet_stipple.trainers import *  # noqa: F401,F403
from nnunet_stipple.trainers import __all__  # noqa: F401
