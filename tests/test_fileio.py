"""Crash-safe writes: atomic files and staged directories leave the old thing or the new
thing, and no temporary names behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge import fileio


def test_staged_dir_replaces_the_target_on_success(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with fileio.staged_dir(target, replace=True) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(fileio.TMP_PREFIX)
        assert list(tmp.iterdir()) == []
        (tmp / "new.txt").write_text("new")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "deep.txt").write_text("deep")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt", "sub"]
    assert (target / "sub" / "deep.txt").read_text() == "deep"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failure_in_the_staged_block_keeps_the_old_target(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    with pytest.raises(RuntimeError, match="disk full"):
        with fileio.staged_dir(target, replace=True) as tmp:
            (tmp / "half.bin").write_text("x")
            raise RuntimeError("disk full")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary directory left
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert (target / "keep.txt").read_text() == "precious"


def test_staged_dir_creates_a_missing_target_and_its_parents(tmp_path):
    target = tmp_path / "a" / "b" / "out"
    with fileio.staged_dir(target, replace=False) as tmp:
        (tmp / "x.txt").write_text("x")
    assert [p.name for p in target.iterdir()] == ["x.txt"]
    assert [p.name for p in target.parent.iterdir()] == ["out"]


def test_staged_dir_without_replace_refuses_a_target_that_appeared(tmp_path):
    target = tmp_path / "run"
    with pytest.raises(FileExistsError) as info:
        with fileio.staged_dir(target, replace=False) as tmp:
            (tmp / "mine.txt").write_text("mine")
            target.mkdir()  # someone else took the name meanwhile
            (target / "theirs.txt").write_text("theirs")
    assert info.value.filename == str(target)
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert [p.name for p in target.iterdir()] == ["theirs.txt"]


def test_staged_dir_replaces_a_symlink_but_not_what_it_points_to(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "keep.txt").write_text("precious")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    with fileio.staged_dir(link, replace=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert not link.is_symlink() and [p.name for p in link.iterdir()] == ["new.txt"]
    assert (real / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


@pytest.mark.parametrize(
    "write, data, read",
    [
        (fileio.write_text_atomic, "naïve €\n", lambda p: p.read_text(encoding="utf-8")),
        (fileio.write_bytes_atomic, b"\x00\xffbytes", lambda p: p.read_bytes()),
        (fileio.write_json_atomic, {"a": [1, 2]}, lambda p: json.loads(p.read_text())),
    ],
)
def test_atomic_writes_replace_the_file(tmp_path, write, data, read):
    path = tmp_path / "f"
    path.write_text("old")
    write(path, data)
    assert read(path) == data
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


@pytest.mark.parametrize(
    "write, data",
    [
        (fileio.write_text_atomic, "text"),
        (fileio.write_bytes_atomic, b"bytes"),
        (fileio.write_json_atomic, {"a": 1}),
    ],
)
def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch, write, data):
    path = tmp_path / "f"
    path.write_text("old")

    def fail(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", fail)  # after the data is written, before the rename
    with pytest.raises(OSError, match="No space"):
        write(path, data)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_copy_file_atomic(tmp_path, monkeypatch):
    src = tmp_path / "src.bin"
    src.write_bytes(b"ranks\n" * 100)
    target = tmp_path / "dir" / "copy.bin"
    target.parent.mkdir()
    fileio.copy_file_atomic(src, target)
    assert target.read_bytes() == src.read_bytes()

    def half_copy(src, dst):
        Path(dst).write_bytes(b"ra")
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(fileio.shutil, "copyfile", half_copy)
    with pytest.raises(OSError, match="Input/output"):
        fileio.copy_file_atomic(src, target)
    assert target.read_bytes() == src.read_bytes()
    assert [p.name for p in target.parent.iterdir()] == ["copy.bin"]
