"""Metrics of the study (nnunet_stipple.benchmarks.study.metrics): NSD by hand, paired tests against scipy."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import ttest_rel

from .fake_study import SHAPE, write_seg
from nnunet_stipple.benchmarks.study.metrics import case_nsd, paired_ttest, surface_dice


def test_nsd_hand_checkable(tmp_path):
    a = np.zeros(SHAPE, bool)
    a[3:8, 4:10, 5:11] = True
    sp = [2.0, 1.0, 1.0]
    assert surface_dice(a, a, sp, 0.0) == pytest.approx(1.0)
    far_a, far_b = np.zeros_like(a), np.zeros_like(a)
    far_a[0:2, 0:2, 14:16] = True
    far_b[9:12, 12:16, 0:3] = True
    assert surface_dice(far_a, far_b, sp, 2.0) == 0.0
    assert surface_dice(np.zeros_like(a), a, sp, 2.0) == 0.0
    assert math.isnan(surface_dice(np.zeros_like(a), np.zeros_like(a), sp, 2.0))
    # one voxel shift: 2 mm along z (axis 0), 1 mm along x; the spacing must come from the file, in array order
    write_seg(a.astype(np.uint8), tmp_path / "gt.nii.gz")
    write_seg(np.roll(a, 1, axis=0).astype(np.uint8), tmp_path / "z.nii.gz")
    write_seg(np.roll(a, 1, axis=2).astype(np.uint8), tmp_path / "x.nii.gz")
    assert case_nsd(tmp_path / "x.nii.gz", tmp_path / "gt.nii.gz", ["1"], 1.5)["1"] == pytest.approx(1.0)
    assert case_nsd(tmp_path / "z.nii.gz", tmp_path / "gt.nii.gz", ["1"], 1.5)["1"] < 0.9
    assert case_nsd(tmp_path / "z.nii.gz", tmp_path / "gt.nii.gz", ["1"], 2.0)["1"] == pytest.approx(1.0)


def test_paired_tests_match_scipy():
    from scipy.stats import wilcoxon
    a = {(0, "a"): 0.5, (0, "b"): 0.7, (1, "c"): 0.6, (1, "d"): float("nan"), (1, "e"): 0.9}
    b = {(0, "a"): 0.4, (0, "b"): 0.75, (1, "c"): 0.3, (1, "d"): 0.2, (1, "e"): 0.5}
    t = paired_ttest(a, b)
    keys = [(0, "a"), (0, "b"), (1, "c"), (1, "e")]
    x, y = [a[k] for k in keys], [b[k] for k in keys]
    assert t["n"] == 4 and t["p"] == pytest.approx(ttest_rel(x, y).pvalue)
    assert t["p_wilcoxon"] == pytest.approx(wilcoxon(x, y).pvalue) and t["w"] == pytest.approx(wilcoxon(x, y).statistic)
    same = paired_ttest({(0, "a"): 0.5, (0, "b"): 0.5}, {(0, "a"): 0.5, (0, "b"): 0.5})
    assert same["p_wilcoxon"] is None
