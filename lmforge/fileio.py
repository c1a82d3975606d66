"""Crash-safe file writing shared by datasets, checkpoints, exports and run records.

The pattern everywhere: write into a temporary name beside the target, fsync,
then rename. A rename within one directory is atomic, so a reader (or a run
that crashed half-way) sees the old complete thing or the new complete thing,
never a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"  # directories and files being written; never listed or loaded


def fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    """Persist a directory's entries (the renames in it); a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> None:
    """Write JSON and fsync it (for files inside a directory that is renamed into place later)."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace ``path`` through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        write_json(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) through a temporary file, fsync and a rename."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def install_dir(tmp: Path, target: Path, aside: Path | None = None) -> None:
    """Rename the finished directory ``tmp`` to ``target``.

    A directory cannot be renamed over a non-empty one, so an existing ``target`` is
    first moved to ``aside`` (put back if the rename fails), then deleted.
    """
    old = None
    if target.exists():
        old = aside or target.parent / f"{TMP_PREFIX}old-{target.name}-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def pid_alive(pid: int | None) -> bool:
    """True when a process with this pid exists on this host (or may: no permission to signal it)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    return True
