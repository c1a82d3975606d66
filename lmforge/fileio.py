"""Crash-safe file writing shared by datasets, checkpoints, exports and run records.

The pattern everywhere: write into a temporary name beside the target, fsync,
then rename. A rename within one directory is atomic, so a reader (or a run
that crashed half-way) sees the old complete thing or the new complete thing,
never a half-written one.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"  # directories and files being written; never listed or loaded
# what ``install_dir`` moved out of the way: the last good copy until the new one is in place
SET_ASIDE_PREFIX = f"{TMP_PREFIX}old-"
DELETING_PREFIX = f"{TMP_PREFIX}deleted-"  # what ``remove_dir`` is deleting
# A save that fails with this little space left failed for want of space, whatever the
# exception says (torch.save raises RuntimeError, safetensors SafetensorError, not OSError).
LOW_SPACE_BYTES = 16 * 2**20


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


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (``/proc``); the
    fallback sets and restores it, a moment in which another thread's new file would get 0."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(root: Path) -> None:
    """Give ``root`` and everything under it the modes a plain ``open``/``mkdir`` would
    have (0666/0777 less the umask). ``tempfile.mkdtemp`` makes 0700 directories and
    safetensors writes 0600 files through its own temporary file; renamed into place,
    those modes would hide exports and checkpoints from everyone else on a shared machine."""
    mask = current_umask()
    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask
    if root.is_file():
        os.chmod(root, file_mode)
        return
    os.chmod(root, dir_mode)
    for parent, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(Path(parent, name), dir_mode)
        for name in files:
            os.chmod(Path(parent, name), file_mode)


def write_json(path: Path, data: Any) -> None:
    """Write JSON and fsync it (for files inside a directory that is renamed into place later)."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


@contextmanager
def _replaced_through_temp(path: Path) -> Iterator[Path]:
    """Yield a temporary name beside ``path``; the file written there replaces ``path`` in
    one rename when the block ends, and is deleted when it raises."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace ``path`` through a temporary file and a rename, so readers never see half a file."""
    with _replaced_through_temp(path) as tmp:
        write_json(tmp, data)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` through a temporary file, fsync and a rename."""
    with _replaced_through_temp(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) through a temporary file, fsync and a rename."""
    write_bytes_atomic(path, text.encode("utf-8"))


def copy_file_atomic(src: Path, path: Path) -> None:
    """Replace ``path`` with a copy of the file ``src`` through a temporary file, fsync and a rename."""
    with _replaced_through_temp(path) as tmp:
        shutil.copyfile(src, tmp)
        fsync_file(tmp)


def install_dir(tmp: Path, target: Path, aside: Path | None = None) -> None:
    """Rename the finished directory ``tmp`` to ``target``.

    A directory cannot be renamed over a non-empty one, so an existing ``target`` (or a
    symlink of that name) is first moved to ``aside`` (put back if the rename fails), then
    deleted; a symlink is removed, never the directory it points to.
    """
    old = None
    if target.exists() or target.is_symlink():
        old = aside or target.parent / f"{SET_ASIDE_PREFIX}{target.name}-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    fsync_dir(target.parent)
    if old is not None:
        if old.is_symlink():
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)


def _rename_into_new(tmp: Path, target: Path) -> None:
    """Rename the directory ``tmp`` to ``target``, which must not exist or be an empty
    directory: ``FileExistsError`` otherwise, decided by the rename itself (atomic)."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise FileExistsError(errno.EEXIST, "already exists", str(target))
    try:
        os.rename(tmp, target)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise FileExistsError(errno.EEXIST, "already exists", str(target)) from None
        raise
    fsync_dir(target.parent)


@contextmanager
def staged_dir(target: Path, *, replace: bool) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``target`` to fill; when the block ends,
    its files are fsynced and it becomes ``target`` through ``install_dir``. When the
    block (or the install) raises, the temporary directory is removed and ``target`` is
    left as it was.

    ``replace``: an existing ``target`` is replaced; without it, ``FileExistsError`` when
    ``target`` exists by the time the block ends, unless it is an empty directory. Without
    ``replace`` the final step is one ``rename``, which the kernel refuses over a non-empty
    directory: of two writers racing to the same new ``target``, one wins whole and the
    other gets ``FileExistsError`` (nothing is set aside that another writer just installed).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{target.name}-", dir=target.parent))
    try:
        yield tmp
        for root, _, files in os.walk(tmp):
            for name in files:
                fsync_file(Path(root, name))
            fsync_dir(Path(root))
        apply_umask(tmp)
        if replace:
            install_dir(tmp, target)
        else:
            _rename_into_new(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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


_SET_ASIDE = re.compile(rf"^{re.escape(SET_ASIDE_PREFIX)}(?P<name>.+)-[0-9a-f]{{8}}$")


def restore_set_aside(parent: Path, is_complete: Callable[[Path], bool]) -> list[Path]:
    """Put back what an ``install_dir`` that died between its two renames left aside: a
    ``.tmp-old-<name>-<random>`` directory whose ``<name>`` no longer exists and that
    ``is_complete`` accepts becomes ``<name>`` again (the newest, when several). Returns the
    restored paths. Call only while holding whatever writes in ``parent``."""
    candidates: dict[str, list[Path]] = {}
    for entry in parent.iterdir() if parent.is_dir() else []:
        m = _SET_ASIDE.match(entry.name)
        if m and entry.is_dir() and not entry.is_symlink():
            candidates.setdefault(m["name"], []).append(entry)
    restored = []
    for name, entries in sorted(candidates.items()):
        target = parent / name
        if target.exists() or target.is_symlink():
            continue  # the replace finished; the old copy is garbage
        good = [e for e in entries if is_complete(e)]
        if good:
            os.rename(max(good, key=lambda e: e.stat().st_mtime), target)
            fsync_dir(parent)
            restored.append(target)
    return restored


def set_aside_target(path: Path) -> str | None:
    """The name ``path`` was set aside from by ``install_dir`` (``.tmp-old-<name>-<random>``)."""
    m = _SET_ASIDE.match(path.name)
    return m["name"] if m else None


def remove_dir(path: Path) -> None:
    """Delete the directory ``path`` so that no reader ever sees part of it: it is renamed to
    a ``.tmp-deleted-*`` name first (one atomic step; nothing lists or loads ``.tmp-`` names),
    then deleted. Killed part-way, it leaves a temporary name, never a damaged ``path``."""
    doomed = path.parent / f"{DELETING_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}"
    os.rename(path, doomed)
    fsync_dir(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def is_disk_full(exc: BaseException, where: Path) -> bool:
    """Whether a failed write under ``where`` failed for want of space: an ``ENOSPC``/``EDQUOT``
    anywhere in the exception's chain, or the filesystem nearly full right after the failure
    (call before cleaning up). ``torch.save`` reports a full disk as ``RuntimeError ...
    unexpected pos``, safetensors as ``SafetensorError``: neither is an ``OSError``."""
    seen: BaseException | None = exc
    for _ in range(10):  # the chain of causes, bounded
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    probe = Path(where)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free < LOW_SPACE_BYTES
    except OSError:
        return False


class FileLock:
    """An exclusive ``flock`` on the file ``path`` (created if missing), held until
    ``release()`` or the end of the process: the kernel drops it when the process dies,
    however it dies, so a lock never outlives its holder (unlike a pid, which is reused).

    Where ``fcntl`` is missing (Windows) the lock is a no-op and ``acquire`` succeeds."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait_s: float = 1.0) -> bool:
        """Take the lock; False when another process holds it. Retries for ``wait_s``: a
        reader probing with ``lock_held`` holds it for microseconds."""
        import time

        try:
            import fcntl
        except ImportError:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.02)
                continue
            self._fd = fd
            return True

    def file_removed(self) -> bool:
        """True when the locked file was deleted (or its directory removed) since ``acquire``."""
        if self._fd is None:
            return False
        try:
            if os.fstat(self._fd).st_nlink == 0:
                return True
            return os.stat(self.path).st_ino != os.fstat(self._fd).st_ino
        except OSError:
            return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def lock_held(path: Path) -> bool | None:
    """Whether a live process holds ``FileLock(path)``; None when there is no lock file (or no
    ``fcntl``), so the caller must judge some other way (e.g. ``pid_alive``)."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # also drops the shared lock just taken
    return False
