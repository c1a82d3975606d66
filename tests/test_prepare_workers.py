"""The encode workers of a prepare end with it, even when it is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHILD = r"""
import os, sys, time
from lmforge.data import encode
from lmforge.data.prepare import prepare_dataset
from lmforge.data.shards import SplitShards
from lmforge.workspace import Workspace

encode.PARALLEL_MIN_BYTES = 0
encode.BATCH_BYTES = 100
def write(self, *args, **kwargs):
    pool = ENCODER.pool
    print(" ".join(str(p) for p in pool._processes), flush=True)
    time.sleep(600)  # stand still, workers alive, until the test kills us
real_init = encode.Encoder.__init__
def init(self, *args, **kwargs):
    global ENCODER
    real_init(self, *args, **kwargs)
    ENCODER = self
encode.Encoder.__init__ = init
SplitShards.write = write
prepare_dataset(Workspace.resolve(sys.argv[1]), sys.argv[2], tokenizer="bytes", num_proc=2, force=True)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended: only its exit status is left to collect


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkilled_prepare_leaves_no_worker_behind(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(20):
        (corpus / f"{i:02d}.txt").write_text(f"document {i} " * 50, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "ws"), str(corpus)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in workers if _alive(p)]
    for pid in left:  # do not leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert left == []
