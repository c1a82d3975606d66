"""The run lock (issue 13, items 14, 16 and the pid-reuse part of 21): an ``flock`` on
``RunDir.lock_file`` held by the training process, what tells a live run from a dead one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lmforge.fileio import FileLock, lock_held
from lmforge.runs.listing import run_info
from lmforge.workspace import RunDir

_HOLD = """
import sys, time
from lmforge.fileio import FileLock
lock = FileLock(sys.argv[1])
assert lock.acquire(wait_s=0)
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder():
    """``holder(path)``: another process holding ``FileLock(path)`` until the test ends."""
    children = []

    def start(path: Path) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        cmd = [sys.executable, "-c", textwrap.dedent(_HOLD), str(path)]
        child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
        children.append(child)
        assert child.stdout.readline().strip() == "locked"
        return child

    yield start
    for child in children:
        child.kill()
        child.wait()


def test_the_lock_is_exclusive_and_dies_with_its_holder(tmp_path, holder):
    path = tmp_path / ".lock"
    assert lock_held(path) is None  # no lock file: the caller must judge some other way
    child = holder(path)
    assert lock_held(path) is True
    assert not FileLock(path).acquire(wait_s=0.05)
    child.kill()  # SIGKILL: nothing runs to release it, the kernel does
    child.wait()
    assert lock_held(path) is False
    mine = FileLock(path)
    assert mine.acquire(wait_s=0) and mine.held
    assert lock_held(path) is True  # a probe never takes it from a holder
    assert not mine.file_removed()
    path.unlink()
    assert mine.file_removed()
    mine.release()


def _running_record(run_dir: Path, pid: int) -> None:
    run_dir.mkdir(parents=True)
    record = {"name": run_dir.name, "status": "running", "started_at": "2024-01-01T00:00:00Z", "pid": pid}
    RunDir(run_dir).run_file.write_text(json.dumps(record))


def test_a_reused_pid_does_not_keep_a_dead_run_running(tmp_path):
    run = tmp_path / "runs" / "r"
    _running_record(run, pid=os.getpid())  # the pid is alive: some other process got it
    assert run_info(run).status == "running"  # a run from before the lock: the pid is all there is
    RunDir(run).lock_file.touch()  # the trainer left its lock file; nobody holds it
    assert run_info(run).status == "stale"


def test_a_held_lock_is_a_live_run_whatever_its_pid(tmp_path, holder):
    run = tmp_path / "runs" / "r"
    _running_record(run, pid=2**22 + 7)  # no such process
    holder(RunDir(run).lock_file)
    assert run_info(run).status == "running"
