"""Where a prepare writes before its dataset exists, and what a dead prepare leaves behind.

A prepare writes everything under ``datasets/.tmp-<name>-<pid>-<random>/`` and
renames it to ``datasets/<name>/`` only when every split and ``meta.json`` are
on disk: an interrupted prepare never looks prepared. ``--force`` sets the old
dataset aside as ``datasets/.old-<name>-<pid>-<random>/`` until the new one is
in place. The pid in both names lets ``clean_leftovers`` tell a prepare that is
still running from one that died.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from lmforge.data.store import META_FILE
from lmforge.fileio import TMP_PREFIX, install_dir, pid_alive
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
