"""Where a prepare writes before its dataset exists, and what a dead prepare leaves behind.

A prepare writes everything under ``datasets/.tmp-<name>-<pid>-<random>/`` and
renames it to ``datasets/<name>/`` only when every split and ``meta.json`` are
on disk: an interrupted prepare never looks prepared. ``--force`` sets the old
dataset aside as ``datasets/.old-<name>-<pid>-<random>/`` until the new one is
in place. The pid in both names lets ``clean_leftovers`` tell a prepare that is
still running from one that died.

A prepare writes in ``datasets/.partial-<name>/`` (``PartialPrepare``), which outlives an
interrupted prepare on purpose: run again, it resumes at its first missing shard.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

from lmforge.data.store import META_FILE
from lmforge.errors import UsageError
from lmforge.fileio import TMP_PREFIX, fsync_dir, install_dir, pid_alive, write_json_atomic
from lmforge.workspace import Workspace

OLD_PREFIX = ".old-"


def _owned_name(prefix: str, name: str) -> str:
    return f"{prefix}{name}-{os.getpid()}-{secrets.token_hex(4)}"


def staging_dir(workspace: Workspace, name: str) -> Path:
    """A new, empty folder to write dataset ``name`` into, beside its final place."""
    tmp = workspace.ensure(workspace.datasets_dir) / _owned_name(TMP_PREFIX, name)
    tmp.mkdir()
    return tmp


def install(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing ``target`` is set aside under a name that
    ``clean_leftovers`` can restore from, and removed only afterwards."""
    install_dir(tmp, target, aside=target.parent / _owned_name(OLD_PREFIX, target.name))


def clean_leftovers(workspace: Workspace) -> list[Path]:
    """Remove temporary folders of prepares that died (their process is gone); put back a
    dataset whose ``--force`` rebuild died between its two renames."""
    removed = []
    if not workspace.datasets_dir.is_dir():
        return removed
    for entry in sorted(workspace.datasets_dir.iterdir()):
        for prefix in (TMP_PREFIX, OLD_PREFIX):
            if not entry.name.startswith(prefix):
                continue
            parts = entry.name[len(prefix) :].rsplit("-", 2)
            if len(parts) == 3 and parts[1].isdigit() and pid_alive(int(parts[1])):
                continue
            target = workspace.dataset_dir(parts[0])
            if prefix == OLD_PREFIX and not target.exists() and (entry / META_FILE).is_file():
                install_dir(entry, target)
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


# --------------------------------------------------------------------------- resumable prepares

PARTIAL_PREFIX = ".partial-"
PROGRESS_FILE = "progress.json"
LOCK_FILE = ".lock"


def unfinished_prepares(workspace: Workspace) -> list[str]:
    """Names of datasets whose prepare was interrupted (a ``.partial-<name>/`` folder is left)."""
    if not workspace.datasets_dir.is_dir():
        return []
    return sorted(
        p.name[len(PARTIAL_PREFIX) :]
        for p in workspace.datasets_dir.iterdir()
        if p.name.startswith(PARTIAL_PREFIX) and p.is_dir()
    )


class PartialPrepare:
    """``datasets/.partial-<name>/``: where a prepare writes its shards, and
    ``progress.json``, what it has finished: per split the shards on disk (with the source
    position each ends at) or, once the split is complete, its ``meta.json`` entry. The same
    prepare run again (same ``fingerprint``: options, tokenizer, source files) continues
    after the last finished shard; any other prepare of ``name`` starts afresh. A lock keeps
    two prepares of one name apart."""

    def __init__(self, workspace: Workspace, name: str, fingerprint: dict) -> None:
        self.name = name
        self.dir = workspace.ensure(workspace.datasets_dir) / f"{PARTIAL_PREFIX}{name}"
        self.fingerprint = fingerprint
        self.state: dict = {"fingerprint": fingerprint, "splits": {}}
        self.resumed = False
        self._lock = None

    def open(self) -> PartialPrepare:
        self.dir.mkdir(exist_ok=True)
        self._lock = open(self.dir / LOCK_FILE, "a")
        try:
            import fcntl

            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no fcntl (Windows): no lock
            pass
        except OSError:
            self._lock.close()
            raise UsageError(
                f"another prepare of dataset '{self.name}' is running (it holds {self.dir})",
                "wait for it to finish, or prepare under another name with --as NAME",
            ) from None
        try:
            saved = json.loads((self.dir / PROGRESS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            saved = None
        if isinstance(saved, dict) and saved.get("fingerprint") == self.fingerprint:
            self.state = saved
            self.resumed = any(s.get("shards") or s.get("done") for s in saved.get("splits", {}).values())
        else:  # another prepare's leftovers, or none: start afresh
            for entry in self.dir.iterdir():
                if entry.name != LOCK_FILE:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            self.save()
        return self

    def save(self) -> None:
        write_json_atomic(self.dir / PROGRESS_FILE, self.state)

    def done_split(self, split: str) -> dict | None:
        """The ``meta.json`` entry of ``split`` when a previous run finished it and its files are there."""
        entry = self.state["splits"].get(split, {}).get("done")
        if entry and all((self.dir / s["file"]).is_file() for s in entry["shards"]):
            return entry
        return None

    def done_shards(self, split: str, itemsize: int) -> list[dict]:
        """The finished shards of ``split`` that are on disk whole, up to the first that is not
        (the files of that one and of later ones are removed: they are written again)."""
        kept = []
        for shard in self.state["splits"].get(split, {}).get("shards", []):
            files = [shard["file"], shard["doc_starts"], *([shard["text"]] if "text" in shard else [])]
            whole = all((self.dir / f).is_file() for f in files)
            if not whole or (self.dir / shard["file"]).stat().st_size != shard["tokens"] * itemsize:
                break
            kept.append(shard)
        for stale in self.dir.glob(f"{split}-*"):
            if stale.name not in {f for s in kept for f in (s["file"], s["doc_starts"], s.get("text"))}:
                stale.unlink()
        return kept

    def record_shards(self, split: str, shards: list[dict]) -> None:
        self.state["splits"][split] = {"shards": list(shards)}
        self.save()

    def record_split(self, split: str, entry: dict) -> None:
        self.state["splits"][split] = {"done": entry}
        self.save()

    def install(self, target: Path) -> None:
        """Rename the finished dataset into place (see ``install``)."""
        for name in (PROGRESS_FILE, LOCK_FILE):
            (self.dir / name).unlink(missing_ok=True)
        fsync_dir(self.dir)
        install(self.dir, target)
        self.close()

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.close()

    def close(self) -> None:
        if self._lock is not None and not self._lock.closed:
            self._lock.close()
