"""What a run leaves behind besides checkpoints: ``metrics.jsonl``, ``samples.jsonl``,
``run.json``, ``config.toml`` (their paths in ``lmforge.workspace.RunDir``), written and
read back.

``metrics.jsonl`` holds one JSON object per line, appended and flushed as it is
made, so ``tail -f`` and ``lmforge runs show`` see a live run::

    {"kind": "train", "step", "loss", "lr", "grad_norm", "tokens_per_sec", "mfu", "tokens", "time"}
    {"kind": "eval", "step", "val_loss", "val_ppl", "tokens", "time"}
    {"kind": "bad_step", "step", "loss", "grad_norm", "consecutive", "tokens", "time"}

``time`` is the Unix time in seconds.
"""

from __future__ import annotations

import json
import math
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError
from lmforge.fileio import write_json_atomic, write_text_atomic
from lmforge.units import is_count, now_iso
from lmforge.workspace import RunDir


def _finite_or_none(value: Any) -> Any:
    # JSON has no NaN/Infinity; a bad step's loss is written as null
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlWriter:
    """Append-only JSON lines, flushed after every record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = None

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the run)
        clean = {k: _finite_or_none(v) for k, v in record.items()}
        self._fh.write(json.dumps(clean, ensure_ascii=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def truncate_after(path: Path, step: int) -> int:
    """Drop the records of steps after ``step`` (a resumed run redoes them); returns how many."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    # read as bytes: a crash may cut a line inside a multi-byte character (ensure_ascii=False)
    for raw in path.read_bytes().splitlines():
        try:
            line = raw.decode("utf-8")
            record = json.loads(line)
        except ValueError:  # bad UTF-8 or JSON: a line cut short by a crash
            dropped += 1
            continue
        record_step = record.get("step", 0) if isinstance(record, dict) else None
        if not is_count(record_step) or record_step > step:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        write_text_atomic(path, "".join(line + "\n" for line in kept))
    return dropped


# run.json's fields that readers use, and the types they may have (null is always allowed)
RUN_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "status": (str,),
    "started_at": (str,),
    "ended_at": (str,),
    "step": (int,),
    "total_steps": (int,),
    "tokens": (int,),
    "best_val_loss": (float, int),
    "best_step": (int,),
    "dataset": (str,),
    "tokenizer": (dict,),
    "wandb_id": (str,),
    "pid": (int,),
    "host": (str,),
    "error": (str,),
    "active_s": (float, int),
    "session_started_at": (str,),
}


def _has_type(value: Any, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and not isinstance(value, bool)


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time from run.json (naive ones are UTC); None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _next_session(previous: dict[str, Any], path: Path) -> dict[str, Any]:
    """The session fields of a run started again (``--resume``) over ``previous``, its
    run.json: ``active_s``, the seconds its earlier sessions ran, and ``session_started_at``,
    now. The idle time between sessions is in neither, so a run's duration is the time it
    trained. An earlier session that recorded no end (killed) ended at run.json's last write."""
    start = parse_time(previous.get("session_started_at")) or parse_time(previous.get("started_at"))
    end = parse_time(previous.get("ended_at"))
    if end is None:
        end = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    earlier = previous.get("active_s")
    active = float(earlier) if isinstance(earlier, int | float) and not isinstance(earlier, bool) else 0.0
    if start is not None and end >= start:
        active += (end - start).total_seconds()
    return {"active_s": active, "session_started_at": now_iso()}


def run_duration(record: dict[str, Any], ended: datetime | None) -> float | None:
    """Seconds a run has trained up to ``ended`` (the end of its current or last session):
    its earlier sessions' ``active_s`` plus this session's, never the idle gap before a resume."""
    start = parse_time(record.get("session_started_at"))
    if start is None:  # one session only (or a run.json from before sessions were recorded)
        start, earlier = parse_time(record.get("started_at")), 0.0
    else:
        earlier = float(record.get("active_s") or 0.0)
    if start is None or ended is None or ended < start:
        return None
    return earlier + (ended - start).total_seconds()


class RunRecord:
    """``run.json``: the run's status, rewritten atomically whenever it changes.

    Made over an existing run.json (a resumed run), it starts a new session: the time the
    earlier sessions ran is carried in ``active_s`` (see ``run_duration``)."""

    def __init__(self, run_dir: Path, initial: dict[str, Any]) -> None:
        self.path = RunDir(run_dir).run_file
        previous = self.read(run_dir) if self.path.is_file() else {}
        self.data: dict[str, Any] = {
            "name": run_dir.name,
            "status": "running",
            "started_at": now_iso(),
            "ended_at": None,
            "step": 0,
            "total_steps": 0,
            "tokens": 0,
            "best_val_loss": None,
            "best_step": None,
            "dataset": None,
            "tokenizer": None,
            "wandb_id": None,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "lmforge_version": None,
            "error": None,
        }
        if previous.get("started_at"):
            self.data.update(_next_session(previous, self.path))
        self.data.update(initial)

    @classmethod
    def read(cls, run_dir: Path, warnings: list[str] | None = None) -> dict[str, Any]:
        """``run.json`` as a dict; ``{}`` when it is missing or unreadable (and why, appended
        to ``warnings`` when given)."""
        warnings = [] if warnings is None else warnings
        path = RunDir(Path(run_dir)).run_file
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            warnings.append(f"{path.name} is missing")
            return {}
        except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
            warnings.append(f"{path.name} is unreadable: {exc}")
            return {}
        if not isinstance(data, dict):
            warnings.append(f"{path.name} is not a JSON object")
            return {}
        for key, types in RUN_FIELDS.items():
            if key in data and data[key] is not None and not _has_type(data[key], types):
                # one hand-edited or damaged field is left out, not the whole record
                warnings.append(f"{path.name}: ignored {key!r} = {data[key]!r} (not {types[0].__name__})")
                del data[key]
        return data

    def update(self, **fields: Any) -> None:
        self.data.update({k: _finite_or_none(v) for k, v in fields.items()})
        write_json_atomic(self.path, self.data)


def read_config(run_dir: Path, warnings: list[str] | None = None) -> dict[str, Any]:
    """The run's ``config.toml`` as a dict; ``{}`` when it is missing or unreadable (the
    reason appended to ``warnings`` when given)."""
    from lmforge.tomlfile import load_toml

    path = RunDir(Path(run_dir)).config_file
    if not path.is_file():
        return {}
    try:
        return load_toml(path)
    except ConfigError as exc:
        if warnings is not None:
            warnings.append(exc.message)
        return {}
