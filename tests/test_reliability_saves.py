"""Checkpoint saves, replacements and deletions under faults: a crash at any moment, a full
disk, a kill part-way through pruning. Each test names the defect of issue 13 it locks out."""

from __future__ import annotations

import errno
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch

from lmforge import fileio
from lmforge.checkpoint import store as ckpt
from lmforge.checkpoint.listing import latest_full, list_checkpoints, remove_stale_tmp
from lmforge.config import ModelConfig, TrainingConfig
from lmforge.errors import CheckpointError, LmforgeError
from lmforge.model.gpt import GPT

REPO = Path(__file__).resolve().parents[1]


def _meta(step: int, kind: str = "full") -> dict:
    mc = ModelConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=8, dropout=0.0)
    config = TrainingConfig(preset="tiny", tokenizer="bytes", model=mc)
    return {
        "kind": kind,
        "run": "r",
        "step": step,
        "tokens": step * 8,
        "val_loss": None,
        "config": config.to_dict(),
    }


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(TrainingConfig.from_dict(_meta(0)["config"]).model)


def _run_child(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ----------------------------------------------------------------------------- item 3: replacing best


_KILL_BETWEEN_RENAMES = """
import os, signal, sys
from pathlib import Path
import torch
sys.path.insert(0, sys.argv[2])
from test_reliability_saves import _meta, _model
from lmforge.checkpoint import store as ckpt

best = Path(sys.argv[1])
ckpt.save_checkpoint(best, _model(), _meta(10, "best"))
real_rename = os.rename

def rename_then_die(src, dst):
    real_rename(src, dst)
    if Path(src) == best:  # the old best is set aside; the new one is not in place yet
        os.kill(os.getpid(), signal.SIGKILL)

os.rename = rename_then_die
ckpt.save_checkpoint(best, _model(), _meta(20, "best"))
"""


def test_a_crash_between_the_renames_of_best_keeps_the_last_good_best(tmp_path):
    run = tmp_path / "r"
    best = run / "checkpoints" / "best"
    child = _run_child(_KILL_BETWEEN_RENAMES, str(best), str(Path(__file__).parent))
    assert child.returncode == -signal.SIGKILL, child.stderr
    names = sorted(p.name for p in best.parent.iterdir())
    assert "best" not in names and any(n.startswith(".tmp-old-best-") for n in names)  # the crash window

    remove_stale_tmp(run)  # what a resume does first
    assert sorted(p.name for p in best.parent.iterdir()) == ["best"]  # restored, and the half-new one gone
    assert ckpt.read_meta(best)["step"] == 10
    assert ckpt.load_state_dict(best).keys()


def test_a_set_aside_best_is_never_pruned(tmp_path, make_ckpt_run, workspace_dir):
    from lmforge.checkpoint.prune import plan_prune
    from lmforge.workspace import Workspace

    run = make_ckpt_run("r", [(10, "full"), (10, "best")])
    best = run / "checkpoints" / "best"
    aside = best.parent / ".tmp-old-best-0123abcd"
    os.rename(best, aside)
    plan = plan_prune(Workspace.resolve(workspace_dir), run, keep_last=1, now=time.time() + 10 * 3600)
    assert aside not in [i.path for i in plan.delete]
    assert [i.reason for i in plan.refused if i.path == aside] == [
        "the previous 'best', set aside by a save that crashed"
    ]


# ----------------------------------------------------------------------------- item 15: pruning killed


def _rmtree_killed_after_data(path, ignore_errors=False, **kw):
    """``shutil.rmtree`` killed after deleting the weights but before ``meta.json``."""
    for f in Path(path).iterdir():
        if f.name != ckpt.META_FILE:
            f.unlink()
    raise KeyboardInterrupt


def test_a_prune_killed_part_way_never_leaves_a_complete_looking_checkpoint(
    monkeypatch, make_ckpt_run, workspace_dir
):
    from lmforge.checkpoint.prune import delete_checkpoint, prune_keep_last
    from lmforge.workspace import Workspace

    run = make_ckpt_run("r", [(10, "light"), (20, "light"), (30, "full")], keep_last=1)
    monkeypatch.setattr("shutil.rmtree", _rmtree_killed_after_data)
    with pytest.raises(KeyboardInterrupt):
        delete_checkpoint(Workspace.resolve(workspace_dir), run / "checkpoints" / "step-10")
    with pytest.raises(KeyboardInterrupt):
        prune_keep_last(run, keep_last=1)  # what the trainer runs after each save
    monkeypatch.undo()
    assert [c.name for c in list_checkpoints(run)] == ["step-30"]  # nothing half-deleted is listed
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith(".tmp-")) == [
        "step-30"
    ]
    remove_stale_tmp(run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-30"]


# ----------------------------------------------------------------------------- item 17: a full disk


def test_a_full_disk_in_torch_save_is_one_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "r" / "checkpoints" / "step-5"

    def torch_save_on_a_full_disk(obj, f, *a, **kw):
        Path(f).write_bytes(b"\0" * 10)
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 1234")

    monkeypatch.setattr(torch, "save", torch_save_on_a_full_disk)
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda p: _usage(0))
    with pytest.raises(CheckpointError, match="the disk is full: could not save the checkpoint") as info:
        ckpt.save_checkpoint(path, _model(), _meta(5), trainer_state={"step": 5})
    assert "previous checkpoint is intact" in info.value.hint
    assert sorted(p.name for p in path.parent.iterdir()) == []  # nothing half-written left


def _usage(free: int):
    import shutil

    return shutil._ntuple_diskusage(1 << 30, (1 << 30) - free, free)


def test_a_full_disk_in_safetensors_is_one_clear_error(tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    def save_file_on_a_full_disk(tensors, filename, metadata=None):
        raise SafetensorError(
            "Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
            'message: "No space left on device" })'
        )

    monkeypatch.setattr(safetensors.torch, "save_file", save_file_on_a_full_disk)
    path = tmp_path / "best"
    with pytest.raises(CheckpointError, match="the disk is full"):
        ckpt.save_checkpoint(path, _model(), _meta(5, "best"))
    assert list(tmp_path.iterdir()) == []


def test_an_unrelated_runtime_error_in_a_save_is_not_called_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda p: _usage(1 << 30))
    with pytest.raises(RuntimeError, match="boom"):
        ckpt.save_checkpoint(tmp_path / "s", _model(), _meta(5), trainer_state={"step": 5})
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_rewriting_metrics_leaves_no_temporary_file(tmp_path, monkeypatch):
    from lmforge.runs.record import truncate_after

    metrics = tmp_path / "metrics.jsonl"
    original = "".join(json.dumps({"step": s}) + "\n" for s in range(1, 6))
    metrics.write_text(original)

    real_open = open

    class FullDisk:  # the file is created (0 bytes), then no byte fits
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def open_on_a_full_disk(path, mode="r", *args, **kwargs):
        fh = real_open(path, mode, *args, **kwargs)
        return FullDisk(fh) if "w" in mode else fh

    monkeypatch.setattr(fileio, "open", open_on_a_full_disk, raising=False)
    with pytest.raises(OSError, match="No space left"):
        truncate_after(metrics, 3)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no 0-byte temporary left
    assert metrics.read_text() == original


def _tiny_tmpfs(path: Path, size: str) -> bool:
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        )
    except OSError:
        return False
    return done.returncode == 0


def test_a_really_full_disk_during_a_save_and_an_export(make_ckpt_run, workspace_dir):
    """On a real, tiny filesystem (skipped where mounting is not permitted)."""
    from lmforge.interop.hf_export import export_checkpoint

    # not under tmp_path: pytest sessions running side by side rename old base directories
    # away, and a moved mount point could no longer be unmounted by its path
    disk = Path(tempfile.mkdtemp(prefix="lmforge-full-disk-"))
    if not _tiny_tmpfs(disk, "64k"):
        disk.rmdir()
        pytest.skip("cannot mount a tmpfs here (needs root); the monkeypatched tests cover the mapping")
    try:
        with pytest.raises(CheckpointError, match="the disk is full"):
            ckpt.save_checkpoint(
                disk / "step-1", _model(), _meta(1), trainer_state={"step": 1, "x": torch.zeros(50_000)}
            )
        assert list(disk.iterdir()) == []
        run = make_ckpt_run("r", [(10, "light")])
        (disk / "filler").write_bytes(b"x" * 56 * 1024)  # leaves 8 KiB: less than the weights
        with pytest.raises(LmforgeError, match="the disk is full: could not export"):
            export_checkpoint(run / "checkpoints" / "step-10", disk / "out", "safetensors")
        assert [p.name for p in disk.iterdir()] == ["filler"]
    finally:
        gc.collect()  # the failed torch.save's file object, kept alive by the traceback
        subprocess.run(["umount", "-l", str(disk)], check=False)  # lazy: detached even while busy
        disk.rmdir()


# ----------------------------------------------------------------------------- SIGKILL during saves

_SAVE_FOREVER = """
import sys
from pathlib import Path
import torch
sys.path.insert(0, sys.argv[2])
from test_reliability_saves import _meta, _model
from lmforge.checkpoint import store as ckpt
from lmforge.checkpoint.prune import prune_keep_last

run = Path(sys.argv[1])
model = _model()
state = {"step": 0, "optimizer": {"m": torch.randn(200_000)}}
print("ready", flush=True)
for step in range(1, 10_000):
    state["step"] = step
    ckpt.save_checkpoint(run / "checkpoints" / f"step-{step}", model, _meta(step), trainer_state=state)
    ckpt.save_checkpoint(run / "checkpoints" / "best", model, _meta(step, "best"))
    prune_keep_last(run, keep_last=2)
"""


def test_sigkill_at_any_moment_leaves_only_complete_checkpoints(tmp_path):
    """Savers killed at different moments (in parallel, to keep the suite fast): what is left
    is complete checkpoints only, and a resume takes the newest."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    delays = [0.03, 0.3, 0.7]
    children = []
    for i, _ in enumerate(delays):
        cmd = [
            sys.executable,
            "-c",
            textwrap.dedent(_SAVE_FOREVER),
            str(tmp_path / f"r{i}"),
            str(Path(__file__).parent),
        ]
        children.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    try:
        for child, delay in zip(children, delays, strict=True):
            assert child.stdout.readline().strip() == "ready", child.stderr.read()
            time.sleep(delay)
            child.kill()
    finally:
        for child in children:
            child.kill()
            child.wait()
    for i, _ in enumerate(delays):
        _check_after_a_kill(tmp_path / f"r{i}")


def _check_after_a_kill(run: Path) -> None:
    remove_stale_tmp(run)  # what a resume does first
    listed = list_checkpoints(run)
    for c in listed:  # every listed checkpoint loads in full and checks out
        ckpt.load_state_dict(c.path)
        if c.kind == "full":
            assert ckpt.load_trainer_state(c.path)["step"] == c.step
    root = run / "checkpoints"
    on_disk = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    assert on_disk == sorted(c.name for c in listed)  # nothing incomplete or temporary left
    complete = [int(n.split("-")[1]) for n in on_disk if n.startswith("step-")]
    latest = latest_full(run)
    assert (latest.step if latest else None) == (max(complete) if complete else None)  # what a resume takes
