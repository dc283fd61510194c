"""Atomic writes: all or nothing, and the file mode an ordinary open() would give."""

import os
import stat

import pytest

from xmodal._fs import atomic_write, atomic_write_bytes


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_file_follows_the_umask(tmp_path, umask_027):
    # mkstemp creates 0600 files: an export read by another user (a notebook, a server) failed
    atomic_write_bytes(tmp_path / "out.npz", b"abc")
    assert (tmp_path / "out.npz").read_bytes() == b"abc"
    assert mode(tmp_path / "out.npz") == 0o640


def test_replaced_file_keeps_its_mode(tmp_path, umask_027):
    path = tmp_path / "index.faiss"
    path.write_bytes(b"old")
    os.chmod(path, 0o604)
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and mode(path) == 0o604


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"old")

    def boom(fh):
        fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, boom)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]
