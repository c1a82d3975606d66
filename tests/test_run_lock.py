"""The run lock (issue 13, items 14, 16 and the pid-reuse part of 21): an ``flock`` on
``RunDir.lock_file`` held by the training process, what tells a live run from a dead one."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lmforge import TrainingManager
from lmforge.errors import ConfigError, LmforgeError, UsageError
from lmforge.fileio import FileLock, lock_held
from lmforge.observe.reporting import Reporter
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


# ----------------------------------------------------------------------------- the trainer holds it


class _AtStep(Reporter):
    """Runs ``action`` once when the loop reports step ``at``."""

    def __init__(self, at, action):
        self.at, self.action = at, action

    def step(self, stats):
        if stats.step == self.at:
            self.action()


def _interrupted_run(workspace, config):
    """A run stopped at step 6 (a full checkpoint), ready to resume."""
    stopper = _AtStep(6, lambda: manager.request_stop())
    manager = TrainingManager(config, workspace, reporter=stopper)
    assert manager.train().status == "interrupted"
    return workspace / "runs" / config.run


def test_a_second_resume_of_a_live_run_is_refused(train_workspace, tiny_train_config, holder):
    run = _interrupted_run(train_workspace, tiny_train_config(steps=12, run="r", sample_tokens=0))
    assert lock_held(RunDir(run).lock_file) is False  # released when the first trainer ended
    # another trainer has the run, before its run.json says "running" (the race of two resumes)
    metrics_before = RunDir(run).metrics_file.read_text()
    second = TrainingManager(None, train_workspace, resume="r", reporter=Reporter())
    holder(RunDir(run).lock_file)  # taken between the second trainer's set-up and its start
    with pytest.raises(UsageError, match="'r' is already being trained by another process"):
        second.train()
    assert RunDir(run).metrics_file.read_text() == metrics_before  # nothing written twice
    # a held lock is seen before anything is built, too
    with pytest.raises(UsageError, match="'r' is already being trained by another process"):
        TrainingManager(None, train_workspace, resume="r", reporter=Reporter())


def test_the_cli_refuses_a_second_resume_in_one_line(train_workspace, tiny_train_config, holder, cli):
    run = _interrupted_run(train_workspace, tiny_train_config(steps=12, run="r", sample_tokens=0))
    holder(RunDir(run).lock_file)
    r = cli("train", "--resume", "r")
    assert r.exit_code == 2 and "Traceback" not in r.output
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "being trained" in errors[0]


@pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)
@pytest.mark.parametrize("launcher", ["--nproc", "torchrun"])
def test_a_refused_lock_stops_every_rank_of_a_ddp_resume(
    train_workspace, tiny_train_config, holder, launcher
):
    """``--nproc`` refuses before it launches anything (exit 2, one line). Under torchrun each rank
    refuses on its own and the run ends at once: none waits for the others in a collective until
    the process group times out."""
    run = _interrupted_run(train_workspace, tiny_train_config(steps=12, run="r", sample_tokens=0))
    holder(RunDir(run).lock_file)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    args = ["--workspace", str(train_workspace), "train", "--resume", "r", "--device", "cpu"]
    if launcher == "--nproc":
        cmd = [sys.executable, "-m", "lmforge", *args, "--nproc", "2"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "lmforge", *args]
    out = subprocess.run(
        cmd,
        env={**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        capture_output=True,
        text=True,
        timeout=150,  # a hung rank would sit here until the timeout
    )
    if launcher == "--nproc":
        assert out.returncode == 2, out.stderr[-2000:]
        errors = [line for line in out.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "'r' is already being trained by another process" in errors[0]
    else:  # torchrun reports a failed worker with exit 1
        assert out.returncode != 0
        # the first rank to refuse says why; torchrun then stops the others (SIGTERM), so on a
        # loaded machine the slower rank can be stopped before it gets to its own refusal
        assert "'r' is already being trained by another process" in out.stderr, out.stderr[-2000:]


def test_runs_rm_force_on_a_live_run_stops_the_trainer(train_workspace, tiny_train_config):
    """Decision: the trainer notices (``rm`` may run on another host or as another user, where
    it could not stop the process), and stops before it writes anything that would bring the
    directory back."""
    from lmforge.runs.listing import remove_run
    from lmforge.workspace import Workspace

    ws = Workspace.resolve(train_workspace)
    seen = {}

    def remove_it():
        seen["status"] = run_info(ws.run_dir("r")).status
        remove_run(ws, ws.run_dir("r"), force=True)

    manager = TrainingManager(
        tiny_train_config(steps=12, run="r", sample_tokens=0), ws, reporter=_AtStep(3, remove_it)
    )
    with pytest.raises(LmforgeError, match="was removed while the run was training; stopping"):
        manager.train()
    assert seen["status"] == "running"  # the lock said so while it trained
    assert not ws.run_dir("r").exists()  # not recreated by a later write or save
    assert [p.name for p in ws.runs_dir.iterdir()] == []


def test_a_resume_with_an_empty_config_says_so(train_workspace, tiny_train_config, cli):
    run = _interrupted_run(train_workspace, tiny_train_config(steps=12, run="r", sample_tokens=0))
    RunDir(run).config_file.write_text("")  # what a write cut short by a full disk used to leave
    with pytest.raises(ConfigError, match=r"run 'r' cannot be resumed: its .*config.toml is empty") as info:
        TrainingManager(None, train_workspace, resume="r", reporter=Reporter())
    assert "meta.json holds the run's config" in info.value.hint
    r = cli("train", "--resume", "r")
    assert r.exit_code == 2 and "config.toml is empty" in r.stderr and "unknown dataset" not in r.stderr


def test_a_full_disk_on_resume_keeps_config_toml(train_workspace, tiny_train_config, monkeypatch):
    from lmforge import fileio

    run = _interrupted_run(train_workspace, tiny_train_config(steps=12, run="r", sample_tokens=0))
    config_before = RunDir(run).config_file.read_text()
    real_open = open

    def open_on_a_full_disk(path, mode="r", *args, **kwargs):
        if "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, mode, *args, **kwargs)

    resumed = TrainingManager(None, train_workspace, resume="r", reporter=Reporter())
    monkeypatch.setattr(fileio, "open", open_on_a_full_disk, raising=False)
    with pytest.raises(LmforgeError, match="the disk is full: could not write"):
        resumed.train()
    monkeypatch.undo()
    assert RunDir(run).config_file.read_text() == config_before
    assert not [p.name for p in run.iterdir() if p.name.startswith(".tmp-")]
    assert lock_held(RunDir(run).lock_file) is False  # released on the way out


class _Warnings(Reporter):
    def __init__(self):
        self.messages = []

    def warning(self, message):
        self.messages.append(message)


def test_a_replaced_tokenizer_is_warned_about(train_workspace, tiny_train_config):
    """Item 10: the dataset's tokenizer wins over the config's; a tokenizer the user chose
    (not the default) that gives way says so. The default giving way does not."""
    from lmforge.config import with_overrides

    default = _Warnings()
    TrainingManager(
        tiny_train_config(steps=1, run="a", sample_tokens=0), train_workspace, reporter=default
    ).train()
    assert not [m for m in default.messages if "tokenizer" in m]

    chosen = with_overrides(
        tiny_train_config(steps=1, run="b", sample_tokens=0), {("tokenizer",): "gpt2-custom"}
    )
    told = _Warnings()
    manager = TrainingManager(chosen, train_workspace, reporter=told)
    manager.train()
    assert manager.config.tokenizer == "bytes"
    assert [m for m in told.messages if "tokenizer" in m] == [
        "tokenizer 'gpt2-custom' of the config replaced by dataset 'wikitext-2''s 'bytes' "
        "(and the vocabulary 50257 -> 257): a run uses its data's tokenizer"
    ]


def test_run_files_are_written_through_fileio(monkeypatch, tmp_path):
    """Item 10: config.toml and the rewritten metrics.jsonl go through fileio's atomic
    writes (temporary name, fsync, rename)."""
    from lmforge import fileio
    from lmforge.runs.record import truncate_after

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(fileio.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1}\n{"step": 2}\n')
    assert truncate_after(metrics, 1) == 1
    assert metrics.read_text() == '{"step": 1}\n' and synced
