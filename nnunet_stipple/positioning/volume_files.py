"""Reading one volume for positioning: a label map or class probabilities, from an image SimpleITK reads, an .npy
or an .npz (the formats nnUNetv2_stipple_position accepts)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from nnunet_stipple.errors import StippleInputError


def _read_npz(path: Path, keys: Sequence[str], what: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            for k in keys:
                if k in names:
                    return z[k]
            if len(names) == 1 and what == "label":
                return z[names[0]]
    except (OSError, ValueError) as e:
        raise StippleInputError(f"Cannot read {path} as an .npz file ({e}).") from e
    raise StippleInputError(f"{path} holds no array named {' or '.join(repr(k) for k in keys)} (it has: "
                            f"{', '.join(names) or 'nothing'}).")


def read_volume(path: "str | Path", what: str) -> Tuple[np.ndarray, Optional[list]]:
    """The array of ``path`` and, for images, its spacing in array order (z, y, x)."""
    path = Path(path)
    if not path.is_file():
        raise StippleInputError(f"The {what} file {path} does not exist.")
    name = path.name.lower()
    if name.endswith(".npy"):
        try:
            return np.load(path, allow_pickle=False), None
        except (OSError, ValueError) as e:
            raise StippleInputError(f"Cannot read {path} as an .npy file ({e}).") from e
    if name.endswith(".npz"):
        keys = ("probabilities",) if what == "probabilities" else ("seg", "label")
        return _read_npz(path, keys, what), None
    if what == "probabilities":
        raise StippleInputError(f"{path}: give the probabilities as an .npz holding 'probabilities' (K, X, Y, Z) "
                                f"or as an .npy.")
    import SimpleITK as sitk
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise StippleInputError(f"SimpleITK cannot read the {what} {path}: {str(e).strip().splitlines()[-1]}") from e
    return sitk.GetArrayFromImage(image), [float(s) for s in reversed(image.GetSpacing())]
