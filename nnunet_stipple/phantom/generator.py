"""Seeded synthetic "abdomen-like phantom" dataset in nnU-Net v2 raw format.

The phantom is built so that STIPPLE's spatial prior matters on it:

* organs have overlapping appearance (liver and spleen share one intensity distribution, every organ is within
  about one noise sigma of the surrounding soft tissue), so appearance alone is ambiguous;
* organ position varies a lot along z (a per-case shift of the field of view, as when scans start at different
  heights) and only a little in-plane, so where an organ lies is informative once the case has been positioned;
* an organ is occasionally absent (like a removed gallbladder) and organs near the volume's ends are sometimes cut.

Everything is deterministic: case ``index`` of ``seed`` is drawn from ``np.random.default_rng([seed, index])``, so a
case never depends on how many other cases are generated. Unlabeled cases use indices from
``UNLABELED_INDEX_OFFSET`` upwards, a range disjoint from the labeled cases'.

Arrays are (z, y, x); ``spacing`` is given in the same (z, y, x) order and reversed for SimpleITK, which wants (x, y, z).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np
from scipy import ndimage

from nnunet_stipple.atomic import make_temp_dir
from nnunet_stipple.errors import StippleInputError

GENERATOR_VERSION = 1

PHANTOM_LABELS: Dict[str, int] = {
    "background": 0,
    "liver": 1,
    "spleen": 2,
    "right_kidney": 3,
    "left_kidney": 4,
    "pancreas": 5,
}

#: Standard deviation (HU) of the additive image noise (spatially correlated, rescaled to exactly this std).
NOISE_SIGMA_HU = 18.0

#: Mean intensities (HU) before noise. Liver and spleen share one distribution on purpose.
TISSUE_HU = {
    "air": -1000.0,
    "fat": -100.0,
    "soft_tissue": 40.0,
    "bowel": 50.0,
    "bone": 350.0,
    "liver": 60.0,
    "spleen": 60.0,
    "right_kidney": 70.0,
    "left_kidney": 70.0,
    "pancreas": 50.0,
}

#: Nominal organ ellipsoids as fractions of the volume shape: centre (z, y, x) and radii (z, y, x).
#: x = 0 is the image's left edge (the patient's right in radiological display); y grows towards posterior.
ORGAN_SPECS = {
    "liver": {"centre": (0.58, 0.42, 0.30), "radii": (0.22, 0.19, 0.18)},
    "spleen": {"centre": (0.62, 0.55, 0.76), "radii": (0.15, 0.11, 0.075)},
    "right_kidney": {"centre": (0.40, 0.68, 0.31), "radii": (0.14, 0.08, 0.065)},
    "left_kidney": {"centre": (0.40, 0.68, 0.69), "radii": (0.14, 0.08, 0.065)},
    "pancreas": {"centre": (0.50, 0.53, 0.52), "radii": (0.07, 0.05, 0.16)},
}

#: Painting priority: earlier organs keep their voxels, later ones only fill voxels that are still free.
#: Small organs go first so that they stay whole; the large liver yields where it would touch them.
PAINT_ORDER = ("right_kidney", "left_kidney", "pancreas", "spleen", "liver")

#: Position variability (fractions of the shape along each axis, voxels in-plane).
Z_GLOBAL_SHIFT_FRACTION = 0.22   # per-case field-of-view shift, uniform in +-this fraction of the slice count
Z_ORGAN_SHIFT_SD_FRACTION = 0.025  # extra per-organ z shift (normal sd, fraction of the slice count)
INPLANE_GLOBAL_SHIFT_VOXELS = 2.0  # per-case in-plane shift, uniform in +-this many voxels (scaled to 64 voxels)
INPLANE_ORGAN_SHIFT_SD_VOXELS = 0.5
RADIUS_JITTER = 0.15               # radii drawn uniformly in (1 +- this) x nominal
DEFORMATION_AMPLITUDE = 0.3        # amplitude of smooth noise added to the implicit function
ABSENT_ORGAN_PROBABILITY = 0.1     # chance that one (random) organ is missing from a case

UNLABELED_INDEX_OFFSET = 1_000_000
LABELED_PREFIX = "phantom"
UNLABELED_PREFIX = "phantomU"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def labeled_case_id(i: int) -> str:
    return f"{LABELED_PREFIX}_{i:03d}"


def unlabeled_case_id(i: int) -> str:
    return f"{UNLABELED_PREFIX}_{i:03d}"


def _check_geometry(shape, spacing) -> Tuple[Tuple[int, int, int], Tuple[float, float, float]]:
    try:
        shape_t = tuple(int(s) for s in shape)
        spacing_t = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise StippleInputError(f"shape and spacing must be three numbers each (z y x); got shape={shape!r}, "
                                f"spacing={spacing!r}") from None
    if len(shape_t) != 3 or any(s < 16 for s in shape_t):
        raise StippleInputError(f"shape must be three integers (z y x), each at least 16; got {shape!r}")
    if len(spacing_t) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing_t):
        raise StippleInputError(f"spacing must be three positive numbers (z y x) in mm; got {spacing!r}")
    return shape_t, spacing_t


def _smooth_field(rng: np.random.Generator, shape: Tuple[int, int, int], max_freq=(2, 3, 3)) -> np.ndarray:
    """Low-frequency random field with unit RMS: a random sum of separable cosines (a few half-waves per axis).

    A tensor product of small per-axis bases, so it costs a few milliseconds even for large volumes.
    """
    bases = []
    for n, k in zip(shape, max_freq):
        t = (np.arange(n, dtype=np.float64) + 0.5) / n
        freqs = np.arange(1, k + 1, dtype=np.float64)
        bases.append(np.concatenate([np.cos(np.pi * t[:, None] * freqs), np.sin(np.pi * t[:, None] * freqs)], 1))
    coeffs = rng.standard_normal(tuple(b.shape[1] for b in bases))
    field = np.einsum("ai,bj,ck,ijk->abc", *bases, coeffs, optimize=True)
    return (field / max(float(field.std()), 1e-12)).astype(np.float32)


def _ellipsoid(coords, centre, radii, deformation: np.ndarray | None = None) -> np.ndarray:
    zz, yy, xx = coords
    f = ((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 + ((xx - centre[2]) / radii[2]) ** 2
    if deformation is not None:
        f = f + deformation
    return f < 1.0


def make_phantom_case(index: int, shape=(40, 64, 64), spacing=(4.0, 2.0, 2.0), seed: int = 0
                      ) -> Tuple[np.ndarray, np.ndarray]:
    """One phantom case: ``(image_zyx int16 HU, label_zyx uint8)``, deterministic in ``(index, shape, seed)``.

    ``spacing`` is accepted for symmetry with :func:`make_phantom_dataset` and validated, but the anatomy is laid out
    in fractions of the volume so it does not change the arrays.
    """
    shape, spacing = _check_geometry(shape, spacing)
    rng = np.random.default_rng([int(seed), int(index)])
    nz, ny, nx = shape
    coords = np.meshgrid(np.arange(nz, dtype=np.float32), np.arange(ny, dtype=np.float32),
                         np.arange(nx, dtype=np.float32), indexing="ij", sparse=True)
    _, yy, xx = coords
    inplane_scale = np.array([ny / 64.0, nx / 64.0])

    # --- per-case global pose: large z shift (field of view), small in-plane shift -------------------------
    z_shift = rng.uniform(-Z_GLOBAL_SHIFT_FRACTION, Z_GLOBAL_SHIFT_FRACTION) * nz
    yx_shift = rng.uniform(-INPLANE_GLOBAL_SHIFT_VOXELS, INPLANE_GLOBAL_SHIFT_VOXELS, size=2) * inplane_scale

    # --- body: elliptical cylinder, fat rim, spine --------------------------------------------------------
    body_c = np.array([0.5 * ny, 0.5 * nx]) + yx_shift
    body_r = np.array([0.34 * ny, 0.44 * nx]) * rng.uniform(0.95, 1.05, size=2)
    rim = rng.uniform(0.10, 0.15)
    body_f = ((yy - body_c[0]) / body_r[0]) ** 2 + ((xx - body_c[1]) / body_r[1]) ** 2
    body = np.broadcast_to(body_f < 1.0, shape)
    inner = np.broadcast_to(body_f < (1.0 - rim) ** 2, shape)
    spine_c = body_c + np.array([0.26 * ny, 0.0])
    spine_r = 0.06 * min(ny, nx)
    spine = np.broadcast_to(((yy - spine_c[0]) ** 2 + (xx - spine_c[1]) ** 2) < spine_r ** 2, shape)

    # --- organs -------------------------------------------------------------------------------------------
    organ_names = list(ORGAN_SPECS)
    absent = None
    if rng.uniform() < ABSENT_ORGAN_PROBABILITY:
        absent = organ_names[int(rng.integers(len(organ_names)))]
    free = inner & ~spine
    label = np.zeros(shape, dtype=np.uint8)
    masks = {}
    for name in organ_names:  # draw in a fixed order so the random stream does not depend on PAINT_ORDER
        spec = ORGAN_SPECS[name]
        c = np.array(spec["centre"]) * np.array(shape, dtype=float)
        c[0] += z_shift + rng.normal(0.0, Z_ORGAN_SHIFT_SD_FRACTION) * nz
        c[1:] += yx_shift + rng.normal(0.0, INPLANE_ORGAN_SHIFT_SD_VOXELS, size=2) * inplane_scale
        r = np.array(spec["radii"]) * np.array(shape, dtype=float) * rng.uniform(1 - RADIUS_JITTER, 1 + RADIUS_JITTER, 3)
        deformation = DEFORMATION_AMPLITUDE * _smooth_field(rng, shape)
        masks[name] = _ellipsoid(coords, c, r, deformation)
    for name in PAINT_ORDER:
        if name == absent:
            continue
        m = masks[name] & free & (label == 0)
        label[m] = PHANTOM_LABELS[name]

    # --- distractors: bowel-like blobs of soft tissue, unlabeled ------------------------------------------
    bowel = np.zeros(shape, dtype=bool)
    for _ in range(3):
        c = np.array([rng.uniform(0.1, 0.9) * nz, body_c[0] - rng.uniform(0.0, 0.2) * ny,
                      body_c[1] + rng.uniform(-0.2, 0.2) * nx])
        r = np.array([rng.uniform(0.08, 0.15) * nz, rng.uniform(0.05, 0.09) * ny, rng.uniform(0.05, 0.09) * nx])
        bowel |= _ellipsoid(coords, c, r, 0.3 * _smooth_field(rng, shape))
    bowel &= free & (label == 0)

    # --- intensities --------------------------------------------------------------------------------------
    contrast = rng.normal(0.0, 8.0)  # per-case enhancement offset, shared by all organs
    img = np.full(shape, TISSUE_HU["air"], dtype=np.float32)
    img[body] = TISSUE_HU["fat"]
    img[inner] = TISSUE_HU["soft_tissue"] + 0.5 * contrast  # enhancement also lifts the surrounding tissue a bit
    img[spine] = TISSUE_HU["bone"]
    img[bowel] = TISSUE_HU["bowel"] + 0.5 * contrast
    for name in organ_names:
        img[label == PHANTOM_LABELS[name]] = TISSUE_HU[name] + contrast + rng.normal(0.0, 3.0)
    img = ndimage.gaussian_filter(img, sigma=0.7)  # partial-volume blur
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=0.5)
    noise *= NOISE_SIGMA_HU / float(noise.std())
    img = img + noise * body  # no noise in the air outside the body, it only wastes compression
    image = np.clip(np.rint(img), -1024, 3071).astype(np.int16)
    return image, label


def _write_nifti(arr: np.ndarray, spacing_zyx: Sequence[float], path: Path) -> None:
    import SimpleITK as sitk

    itk = sitk.GetImageFromArray(arr)
    itk.SetSpacing(tuple(float(s) for s in reversed(tuple(spacing_zyx))))
    itk.SetOrigin((0.0, 0.0, 0.0))
    itk.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(itk, str(path), True)


def _dataset_json(name: str, num_labeled: int, num_unlabeled: int, shape, spacing, seed: int) -> dict:
    return {
        "channel_names": {"0": "CT"},
        "labels": dict(PHANTOM_LABELS),
        "numTraining": int(num_labeled),
        "file_ending": ".nii.gz",
        "name": name,
        "description": (
            "Synthetic abdomen-like phantom generated by nnunet_stipple (nnUNetv2_stipple_make_phantom). "
            "Liver and spleen share one intensity distribution and organ positions vary strongly along z, "
            "so position disambiguates appearance. Unlabeled images are in imagesUnlabeled/."),
        "stipple_phantom": {
            "seed": int(seed),
            "shape": list(shape),
            "spacing": list(spacing),
            "generator_version": GENERATOR_VERSION,
            "num_labeled": int(num_labeled),
            "num_unlabeled": int(num_unlabeled),
            "unlabeled_folder": "imagesUnlabeled",
        },
    }


def make_phantom_dataset(raw_root, dataset_id: int = 990, name: str = "STIPPLEPhantom",
                         num_labeled: int = 16, num_unlabeled: int = 4,
                         shape=(40, 64, 64), spacing=(4.0, 2.0, 2.0), seed: int = 0,
                         overwrite: bool = False) -> Path:
    """Write ``{raw_root}/Dataset{dataset_id:03d}_{name}/`` (imagesTr, labelsTr, imagesUnlabeled, dataset.json).

    The folder is built in a hidden temporary sibling and renamed into place, so it appears complete or not at all.
    Raises :class:`StippleInputError` if the folder exists (unless ``overwrite``), if another dataset in ``raw_root``
    already uses ``dataset_id`` under a different name, or for impossible arguments.
    """
    shape, spacing = _check_geometry(shape, spacing)
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, (int, np.integer)) or not 1 <= dataset_id <= 999:
        raise StippleInputError(f"dataset id must be an integer from 1 to 999; got {dataset_id!r}")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise StippleInputError(f"dataset name must be letters, digits, '_' or '-' (no spaces); got {name!r}")
    if int(num_labeled) < 1:
        raise StippleInputError(f"num_labeled must be at least 1; got {num_labeled!r}")
    if int(num_unlabeled) < 0:
        raise StippleInputError(f"num_unlabeled must be 0 or more; got {num_unlabeled!r}")
    num_labeled, num_unlabeled, dataset_id = int(num_labeled), int(num_unlabeled), int(dataset_id)

    raw_root = Path(raw_root)
    folder_name = f"Dataset{dataset_id:03d}_{name}"
    target = raw_root / folder_name
    if raw_root.is_dir():
        clashes = sorted(p.name for p in raw_root.glob(f"Dataset{dataset_id:03d}_*") if p.name != folder_name)
        if clashes:
            raise StippleInputError(
                f"{raw_root} already holds {', '.join(clashes)} with dataset id {dataset_id} under another name; "
                f"nnU-Net identifies datasets by id, so choose another id (-d) or remove that folder.")
    elif raw_root.exists():
        raise StippleInputError(f"nnU-Net raw folder {raw_root} exists but is not a folder; pass another --raw.")
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise StippleInputError(f"{target} already exists; pass --overwrite to replace it (or choose another "
                                f"dataset id with -d).")

    raw_root.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(f".{folder_name}.tmp-", raw_root)
    try:
        # no imagesUnlabeled/ without unlabeled images: an empty folder is an input error for the trainers
        for sub in ("imagesTr", "labelsTr") + (("imagesUnlabeled",) if num_unlabeled else ()):
            (tmp / sub).mkdir()
        for i in range(num_labeled):
            image, label = make_phantom_case(i, shape, spacing, seed)
            _write_nifti(image, spacing, tmp / "imagesTr" / f"{labeled_case_id(i)}_0000.nii.gz")
            _write_nifti(label, spacing, tmp / "labelsTr" / f"{labeled_case_id(i)}.nii.gz")
        for i in range(num_unlabeled):
            image, _ = make_phantom_case(UNLABELED_INDEX_OFFSET + i, shape, spacing, seed)
            _write_nifti(image, spacing, tmp / "imagesUnlabeled" / f"{unlabeled_case_id(i)}_0000.nii.gz")
        (tmp / "dataset.json").write_text(
            json.dumps(_dataset_json(name, num_labeled, num_unlabeled, shape, spacing, seed), indent=2))

        old = None
        if target.exists() or target.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{folder_name}.old-", dir=raw_root))
            os.replace(target, old / "previous")
        try:
            os.replace(tmp, target)
        except OSError:
            if old is not None:  # put the previous dataset back rather than leave nothing
                os.replace(old / "previous", target)
                shutil.rmtree(old, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
