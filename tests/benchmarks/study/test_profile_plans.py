"""The plans a profile trains with (nnunet_stipple.benchmarks.study.profile_plans)."""
from __future__ import annotations

from nnunet_stipple.benchmarks.study.profile_plans import coarse_target_spacing


def test_coarse_target_spacing():
    assert coarse_target_spacing([3.0, 2.7, 2.7]) == [8.0, 12.0, 12.0]     # floors
    assert coarse_target_spacing([9.0, 6.5, 6.5]) == [9.0, 13.0, 13.0]     # x2 in-plane, z kept
    assert coarse_target_spacing([1.0, 1.0, 1.0]) == [8.0, 12.0, 12.0]     # ties: the first axis is z
    assert coarse_target_spacing([0.7, 0.7, 2.5]) == [12.0, 12.0, 8.0]
    assert coarse_target_spacing([3.0, 0.8, 0.8], inplane_factor=3, min_inplane_mm=0, min_axial_mm=4) == \
        [4.0, 2.4, 2.4]
