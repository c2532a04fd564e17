"""Our artefacts are written atomically with the permissions of a plainly written file (issue 12, item 4):
tempfile's owner-only modes must not leak into priors, reports or round folders on a shared cluster."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from nnunet_stipple.atomic import atomic_path, current_umask, make_temp_dir, write_json_atomic, write_npz_atomic


@pytest.fixture
def umask():
    def set_umask(mask):
        os.umask(mask)
    old = os.umask(0o022)
    yield set_umask
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_current_umask_reads_without_changing(umask):
    umask(0o027)
    assert current_umask() == 0o027
    assert current_umask() == 0o027


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775),
                                                       (0o077, 0o600, 0o700)])
def test_written_files_and_folders_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    write_npz_atomic(tmp_path / "b.npz", x=np.zeros(2))
    with atomic_path(tmp_path / "c.bin") as tmp:
        tmp.write_bytes(b"1")
    plain = tmp_path / "plain.txt"
    plain.write_text("reference")
    for name in ("a.json", "b.npz", "c.bin"):
        assert _mode(tmp_path / name) == file_mode == _mode(plain)
    folder = make_temp_dir(".round.", tmp_path)
    assert _mode(folder) == dir_mode


def test_failed_block_leaves_neither_target_nor_temporary(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "x.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
