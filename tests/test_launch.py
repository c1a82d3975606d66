"""``lmforge train --nproc``: what the ranks import, and how they end.

The ranks must import the package the launcher runs, never a ``lmforge/`` folder in the working
directory; a signal to one rank ends the launch with that rank's exit code and one line, not
torchrun's traceback. The 2-process runs are real (gloo, one thread per process).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed

from lmforge.launch import _failure_exit, _package_path, torchrun_command

REPO = Path(__file__).resolve().parents[1]
needs_gloo = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def test_ranks_run_without_the_working_directory_on_sys_path():
    cmd = torchrun_command(2, ["train", "--run", "x"])
    assert cmd[:2] == [sys.executable, "-P"]  # torchrun's interpreter
    worker = cmd[cmd.index("--no-python") + 2 :]
    assert cmd[cmd.index("--no-python") + 1] == "--"  # torchrun drops it; --run stays lmforge's
    assert worker == [sys.executable, "-P", "-u", "-m", "lmforge", "train", "--run", "x"]


def test_the_launchers_package_comes_first_on_pythonpath(monkeypatch):
    path = _package_path({"PYTHONPATH": "/elsewhere"}).split(os.pathsep)
    assert path == [str(REPO), "/elsewhere"]  # this checkout (tests run it from PYTHONPATH)
    assert _package_path({}) == str(REPO)


class _Failure:
    def __init__(self, exitcode: int, timestamp: int = 0) -> None:
        self.exitcode, self.timestamp = exitcode, timestamp


def test_failure_exit_codes_and_lines():
    assert _failure_exit({1: _Failure(143)}) == (143, "lmforge: rank 1 exited with code 143")
    code, line = _failure_exit({1: _Failure(-9)})
    assert code == 137 and line == "lmforge: rank 1 was killed by signal SIGKILL"
    code, line = _failure_exit({0: _Failure(1, timestamp=5), 1: _Failure(-9, timestamp=3)})
    assert code == 137 and line == "lmforge: rank 1 was killed by signal SIGKILL (then rank 0 stopped)"
    # found in the same second: the killed rank, not the one the agent then stopped with SIGTERM
    code, line = _failure_exit({0: _Failure(-15, timestamp=3), 1: _Failure(-9, timestamp=3)})
    assert code == 137 and line.startswith("lmforge: rank 1 was killed by signal SIGKILL")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _rank_pid(launcher: int, rank: int, timeout: float = 60) -> int:
    """The pid of ``rank`` under the launcher -> torchrun -> ranks tree (from /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for torchrun in _children(launcher):
            for pid in _children(torchrun):
                try:
                    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                if f"RANK={rank}".encode() in environ:
                    return pid
        time.sleep(0.05)
    raise AssertionError(f"rank {rank} did not start")


def _launch(tmp_path: Path, workspace: Path, flags: list[str], run: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lmforge", "--workspace", str(workspace), "train", *flags]
    return subprocess.Popen(
        [*cmd, "--run", run, "--nproc", "2"],
        env=_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_training(proc: subprocess.Popen, metrics: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and '"train"' in metrics.read_text():
            return
        time.sleep(0.02)
    out, err = proc.communicate(timeout=5) if proc.poll() is not None else ("", "")
    raise AssertionError(f"no training step: {err[-3000:]}")


@needs_gloo
@pytest.mark.slow
def test_nproc_from_a_folder_holding_a_fake_lmforge(tmp_path, train_workspace, train_flags):
    """A ``lmforge/`` folder in the cwd (a clone, an old copy) is not what the ranks import."""
    fake = tmp_path / "lmforge"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('the fake lmforge was imported')\n")
    (fake / "__main__.py").write_text("raise SystemExit('the fake lmforge ran')\n")
    cmd = [sys.executable, "-m", "lmforge", "--workspace", str(train_workspace), "train"]
    # the launcher itself runs with -P too, as the `lmforge` console script does
    out = subprocess.run(
        [
            sys.executable,
            "-P",
            *cmd[1:],
            *train_flags(steps=2, eval_interval=2),
            "--run",
            "f",
            "--nproc",
            "2",
        ],
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "fake" not in out.stderr
    record = json.loads((train_workspace / "runs" / "f" / "run.json").read_text())
    assert record["status"] == "finished"


@needs_gloo
@pytest.mark.slow
def test_sigterm_to_one_rank_exits_143_without_a_traceback(tmp_path, train_workspace, train_flags):
    proc = _launch(tmp_path, train_workspace, train_flags(steps=2000, eval_interval=1000), "t")
    try:
        _wait_for_training(proc, train_workspace / "runs" / "t" / "metrics.jsonl")
        os.kill(_rank_pid(proc.pid, 1), signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err and "ChildFailedError" not in err, err[-3000:]
    assert json.loads((train_workspace / "runs" / "t" / "run.json").read_text())["status"] == "interrupted"


@needs_gloo
@pytest.mark.slow
def test_sigkill_of_one_rank_is_one_line(tmp_path, train_workspace, train_flags):
    proc = _launch(tmp_path, train_workspace, train_flags(steps=2000, eval_interval=1000), "k")
    try:
        _wait_for_training(proc, train_workspace / "runs" / "k" / "metrics.jsonl")
        os.kill(_rank_pid(proc.pid, 1), signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 137, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "lmforge: rank 1 was killed by signal SIGKILL" in err
    assert "rank 0: another process of this run stopped" in err  # rank 0's one line (and its hint)
