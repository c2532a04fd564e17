"""Axial axis of nnU-Net's preprocessed arrays from the reader's recorded geometry."""
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_stipple.priors.geometry import (
    UnknownGeometryError,
    axial_axis_of_cases,
    original_axial_axis,
    preprocessed_axial_axis,
)


def rotation(axis, degrees):
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def sitk_props(direction):
    return {"sitk_stuff": {"spacing": (1.0, 1.0, 1.0), "origin": (0.0, 0.0, 0.0),
                           "direction": tuple(float(v) for v in np.asarray(direction).ravel())}}


def nib_props(affine3, key="original_affine", extra_key=None, extra_affine3=None):
    aff = np.eye(4)
    aff[:3, :3] = affine3
    stuff = {key: aff}
    if extra_key is not None:
        aff2 = np.eye(4)
        aff2[:3, :3] = extra_affine3
        stuff[extra_key] = aff2
    return {"nibabel_stuff": stuff}


# permutation matrices: column i = world direction of index axis i
P_ZYX = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], float)   # ITK axis 0 runs along z
P_XZY = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0]], float)   # ITK axis 1 runs along z (coronal stack)

SITK_CASES = [
    ("identity", np.eye(3), 0),                                  # ITK axis 2 is z -> numpy axis 0
    ("flipped z", np.diag([1.0, 1.0, -1.0]), 0),
    ("LPS flips", np.diag([-1.0, -1.0, 1.0]), 0),
    ("z along ITK axis 0", P_ZYX, 2),
    ("z along ITK axis 1", P_XZY, 1),
    ("oblique 20 deg about x", rotation(0, 20), 0),
    ("oblique 30 deg about y", rotation(1, 30) @ np.diag([1, 1, -1.0]), 0),
    ("oblique, z along ITK axis 0", rotation(0, 15) @ P_ZYX, 2),
    ("oblique, z along ITK axis 1", rotation(1, -25) @ P_XZY, 1),
]


@pytest.mark.parametrize("name, direction, expected", SITK_CASES, ids=[c[0] for c in SITK_CASES])
def test_sitk_direction(name, direction, expected):
    assert original_axial_axis(sitk_props(direction)) == expected


@pytest.mark.parametrize("name, direction, expected", SITK_CASES, ids=[c[0] for c in SITK_CASES])
def test_sitk_direction_matches_real_image(name, direction, expected):
    """Cross-check against SimpleITK itself: the numpy axis whose index moves the physical point most in z."""
    img = sitk.Image(4, 5, 6, sitk.sitkUInt8)
    img.SetDirection(tuple(float(v) for v in direction.ravel()))
    props = {"sitk_stuff": {"direction": img.GetDirection()}}
    arr_shape = sitk.GetArrayViewFromImage(img).shape  # numpy (z, y, x) order of ITK indices reversed
    assert arr_shape == (6, 5, 4)
    dz = []
    for a in range(3):
        idx = [0, 0, 0]
        idx[2 - a] = 1  # numpy axis a is ITK index axis 2 - a
        dz.append(abs(img.TransformIndexToPhysicalPoint(idx)[2] - img.TransformIndexToPhysicalPoint((0, 0, 0))[2]))
    assert original_axial_axis(props) == int(np.argmax(dz)) == expected


NIB_CASES = [
    ("identity RAS", np.eye(3), 0),                       # voxel axis 2 is z -> numpy axis 0 after (2,1,0)
    ("LAS", np.diag([-1.0, 1.0, 1.0]), 0),
    ("z along voxel axis 0", P_ZYX, 2),
    ("z along voxel axis 1", P_XZY, 1),
    ("scaled oblique", rotation(0, 25) @ np.diag([0.8, 0.8, 3.0]), 0),
    ("scaled oblique, z along voxel 1", rotation(2, 10) @ P_XZY @ np.diag([2.0, 0.7, 0.7]), 1),
]


@pytest.mark.parametrize("name, affine, expected", NIB_CASES, ids=[c[0] for c in NIB_CASES])
def test_nibabel_affine(name, affine, expected):
    assert original_axial_axis(nib_props(affine)) == expected


def test_nibabel_reoriented_affine_takes_precedence():
    # NibabelIOWithReorient: the array is in the reoriented frame
    props = nib_props(P_ZYX, "original_affine", "reoriented_affine", np.eye(3))
    assert original_axial_axis(props) == 0
    props = nib_props(np.eye(3), "original_affine", "reoriented_affine", P_XZY)
    assert original_axial_axis(props) == 1


@pytest.mark.parametrize("direction, transpose_forward, expected", [
    (np.eye(3), [0, 1, 2], 0),
    (np.eye(3), [2, 1, 0], 2),
    (np.eye(3), [1, 0, 2], 1),
    (np.eye(3), [1, 2, 0], 2),
    (P_ZYX, [0, 1, 2], 2),
    (P_ZYX, [2, 0, 1], 0),
    (P_XZY, [1, 0, 2], 0),
    (P_XZY, [0, 2, 1], 2),
])
def test_transpose_forward_applied(direction, transpose_forward, expected):
    props = sitk_props(direction)
    assert preprocessed_axial_axis(props, transpose_forward) == expected
    # preprocessed axis p is original axis transpose_forward[p]
    assert transpose_forward[expected] == original_axial_axis(props)


@pytest.mark.parametrize("transpose_forward", [[0, 1, 2], [2, 0, 1]])
def test_cases_agree(transpose_forward):
    cases = {"a": sitk_props(np.eye(3)), "b": sitk_props(rotation(0, 10)),
             "c": nib_props(np.diag([-1.0, -1.0, 1.0]))}
    assert axial_axis_of_cases(cases, transpose_forward) == transpose_forward.index(0)


def test_cases_disagree():
    cases = {"axial_1": sitk_props(np.eye(3)), "axial_2": sitk_props(np.eye(3)), "coronal": sitk_props(P_XZY)}
    with pytest.raises(UnknownGeometryError, match="disagree") as e:
        axial_axis_of_cases(cases, [0, 1, 2])
    assert "coronal" in str(e.value) and "axial_1" in str(e.value)


def test_override_skips_geometry_and_is_validated():
    cases = {"a": {}, "b": sitk_props(P_XZY)}
    assert axial_axis_of_cases(cases, [0, 1, 2], override=2) == 2
    with pytest.raises(ValueError):
        axial_axis_of_cases(cases, [0, 1, 2], override=3)


@pytest.mark.parametrize("props", [
    {},
    {"sitk_stuff": {"spacing": (1, 1, 1)}},
    {"sitk_stuff": {"direction": None}},
    {"nibabel_stuff": {}},
    {"something_else": 1},
])
def test_unknown_geometry(props):
    with pytest.raises(UnknownGeometryError):
        original_axial_axis(props)
    with pytest.raises(UnknownGeometryError):
        axial_axis_of_cases({"x": props}, [0, 1, 2])


def test_2d_direction_refused():
    with pytest.raises(UnknownGeometryError, match="9"):
        original_axial_axis({"sitk_stuff": {"direction": (1.0, 0.0, 0.0, 1.0)}})
