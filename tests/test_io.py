import os

import pytest

from course_lib.io import atomic_path


def test_atomic_path_writes_target_with_normal_permissions(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"abc")
        assert not target.exists(), "the target must not appear before the write has finished"
    assert target.read_bytes() == b"abc"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_path_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("writer crashed")
    assert target.read_bytes() == b"old", "a failed write must not touch the existing file"
    assert list(tmp_path.iterdir()) == [target], "no temporary file may be left behind"
