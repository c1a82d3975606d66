"""The W&B logger against a real offline W&B run: what it writes is read back from the
run's ``.wandb`` file, so a point W&B drops is a point the test misses."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2 as pb  # noqa: E402

from lmforge.observe.wandb_logger import STEP_METRIC, WandbLogger, make_logger  # noqa: E402

BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks, 7-byte record headers


def read_records(path: Path) -> list[pb.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, part = [], 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (length == 0 and kind == 0):
            pos += left  # block padding
            continue
        part += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, or LAST of a FIRST/MIDDLE/LAST chain
            record = pb.Record()
            record.ParseFromString(part)
            records.append(record)
            part = b""
    return records


def logged(run_dir: Path) -> list[list[tuple[int, float]]]:
    """(step, loss) of every history row, one list per W&B process, oldest first."""
    runs = []
    for path in run_dir.glob("wandb/offline-run-*/run-*.wandb"):
        rows = []
        for r in read_records(path):
            if r.WhichOneof("record_type") == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                rows.append((row["_timestamp"], row[STEP_METRIC], row["train/loss"]))
        runs.append(rows)
    # directory names tell processes started in the same second apart by a suffix, not in order
    return [[(step, loss) for _, step, loss in rows] for rows in sorted(runs)]


def start(run_dir: Path) -> WandbLogger:
    logger = make_logger("offline", run_dir=run_dir, project="p", name="n", config={}, run_id="rewind1")
    assert isinstance(logger, WandbLogger)
    return logger


def test_points_after_a_rollback_and_a_resume_are_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = start(tmp_path)
    for step in [1, 2, 3, 4, 5]:
        logger.log({"train/loss": float(step)}, step=step)
    for step in [3, 4, 5, 6]:  # rolled back to step 2, trained on
        logger.log({"train/loss": step + 0.5}, step=step)
    logger.finish()
    resumed = start(tmp_path)  # --resume from the step-4 checkpoint
    for step in [5, 6, 7]:
        resumed.log({"train/loss": step + 0.25}, step=step)
    resumed.finish()

    first, second = logged(tmp_path)
    assert first == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.0), (3, 3.5), (4, 4.5), (5, 5.5), (6, 6.5)]
    assert second == [(5, 5.25), (6, 6.25), (7, 7.25)]
    # every chart plots against lmforge's step, not W&B's own call counter
    path = next(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    metrics = [r.metric for r in read_records(path) if r.WhichOneof("record_type") == "metric"]
    assert any(m.glob_name == "*" and m.step_metric == STEP_METRIC for m in metrics)
