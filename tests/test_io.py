"""The one atomic-write helper: content, umask, no temporary left on error, clear messages."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from internimage.io import atomic_path, atomic_write, remove_stale_temporaries


def test_atomic_write_bytes_text_and_callable(tmp_path: Path) -> None:
    atomic_write(tmp_path / "a.bin", b"\x00\x01")
    atomic_write(tmp_path / "sub" / "b.txt", "héllo")
    atomic_write(tmp_path / "c.txt", lambda p: p.write_text("cb"))
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "sub" / "b.txt").read_text(encoding="utf-8") == "héllo"
    assert (tmp_path / "c.txt").read_text() == "cb"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "c.txt", "sub"]


def test_atomic_write_honours_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        path = atomic_write(tmp_path / "w.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_error_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "keep.txt"
    target.write_text("old")

    def boom(p: Path) -> None:
        p.write_text("half")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        atomic_write(target, boom)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_no_space_left_names_the_path(tmp_path: Path) -> None:
    target = tmp_path / "full.bin"

    def full(p: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=r"no space left on device while writing .*full\.bin") as info:
        atomic_write(target, full)
    assert list(tmp_path.iterdir()) == []
    assert info.value.errno == errno.ENOSPC and str(info.value).startswith("no space left")  # no "[Errno 28]"


def test_a_file_where_a_folder_should_be_is_named(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("keep")
    target = tmp_path / "a_file" / "sub" / "x.npy"
    with pytest.raises(OSError) as info:
        atomic_write(target, b"data")
    assert str(info.value) == f"cannot write {target}: {tmp_path / 'a_file'} is a file, not a folder"
    assert (tmp_path / "a_file").read_text() == "keep"


def test_directory_destination_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match="is a directory"), atomic_path(tmp_path):
        pass


def test_remove_stale_temporaries(tmp_path: Path) -> None:
    (tmp_path / ".ckpt.pth.abc123.tmp").write_bytes(b"partial")
    (tmp_path / "ckpt.pth").write_bytes(b"good")
    removed = remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [".ckpt.pth.abc123.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]
