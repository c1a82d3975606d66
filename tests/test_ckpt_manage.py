"""Checkpoint management: listing, the prune plan and its safety rules, deleting."""

from __future__ import annotations

import shutil
import time

import pytest

from lmforge.checkpoint.listing import list_checkpoints
from lmforge.checkpoint.prune import delete_checkpoint, plan_prune
from lmforge.errors import UsageError
from lmforge.workspace import Workspace

STEPS = [(100, "light"), (200, "full"), (300, "light"), (400, "light"), (500, "light"), (300, "best")]


def names(items) -> list[str]:
    return [i.name for i in items]


def test_list_skips_incomplete_and_temporary(make_ckpt_run):
    run = make_ckpt_run("r", [(100, "light"), (200, "full"), (200, "best")])
    (run / "checkpoints" / ".tmp-step-300-abcd").mkdir()
    (run / "checkpoints" / "step-400").mkdir()  # no meta.json
    infos = list_checkpoints(run)
    assert names(infos) == ["step-100", "step-200", "best"]
    assert [c.kind for c in infos] == ["light", "full", "best"]
    assert all(c.size_bytes > 0 and c.created_at for c in infos)


@pytest.mark.parametrize(
    "keep_last, deleted",
    [
        (2, ["step-100", "step-300"]),  # 400, 500 are the last two; 200 is the newest full
        (0, ["step-100", "step-300", "step-400", "step-500"]),
        (10, []),
    ],
)
def test_prune_plan_keeps_best_newest_full_and_last_n(make_ckpt_run, workspace_dir, keep_last, deleted):
    run = make_ckpt_run("r", STEPS)
    plan = plan_prune(Workspace.resolve(workspace_dir), run, keep_last)
    assert names(plan.delete) == deleted
    assert "best" in names(plan.keep) and "step-200" in names(plan.keep)
    assert plan.freed_bytes == sum(i.size_bytes for i in plan.delete)
    assert all((run / "checkpoints" / n).is_dir() for n in deleted)  # planning deletes nothing


def test_fresh_temporary_dirs_are_untouched_and_stale_ones_go(make_ckpt_run, workspace_dir):
    ws = Workspace.resolve(workspace_dir)
    run = make_ckpt_run("r", [(100, "light"), (200, "light")])
    tmp = run / "checkpoints" / ".tmp-step-300-abcd"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"x" * 100)
    half = run / "checkpoints" / "step-400"
    half.mkdir()
    plan = plan_prune(ws, run, keep_last=5)
    assert plan.delete == [] and sorted(names(plan.refused)) == [".tmp-step-300-abcd", "step-400"]
    assert all("being written" in i.reason for i in plan.refused)

    later = plan_prune(ws, run, keep_last=5, now=time.time() + 2 * 3600)
    assert sorted(names(later.delete)) == [".tmp-step-300-abcd", "step-400"]
    assert {i.kind for i in later.delete} == {"incomplete"}
    assert next(i for i in later.delete if i.name.startswith(".tmp")).size_bytes == 100


def test_symlinked_checkpoint_to_outside_is_never_followed(make_ckpt_run, workspace_dir, tmp_path):
    ws = Workspace.resolve(workspace_dir)
    run = make_ckpt_run("r", [(100, "light"), (200, "light"), (300, "light")])
    outside = tmp_path / "outside" / "step-50"
    shutil.copytree(run / "checkpoints" / "step-100", outside)
    (run / "checkpoints" / "step-50").symlink_to(outside, target_is_directory=True)
    plan = plan_prune(ws, run, keep_last=1)
    assert names(plan.delete) == ["step-100", "step-200"]
    assert names(plan.refused) == ["step-50"] and "symbolic link" in plan.refused[0].reason
    with pytest.raises(UsageError, match="symbolic link"):
        delete_checkpoint(ws, run / "checkpoints" / "step-50")
    assert (outside / "meta.json").is_file()


def test_run_dir_symlinked_outside_the_workspace_is_refused(make_ckpt_run, workspace_dir, tmp_path):
    ws = Workspace.resolve(workspace_dir)
    run = make_ckpt_run("real", [(100, "light"), (200, "light")])
    elsewhere = tmp_path / "elsewhere"
    shutil.move(run, elsewhere)
    (workspace_dir / "runs" / "linked").symlink_to(elsewhere, target_is_directory=True)
    plan = plan_prune(ws, workspace_dir / "runs" / "linked", keep_last=1)
    assert plan.delete == [] and names(plan.refused) == ["step-100"]
    assert "not a checkpoint directory of the workspace" in plan.refused[0].reason


def test_delete_checkpoint(make_ckpt_run, workspace_dir, tmp_path):
    ws = Workspace.resolve(workspace_dir)
    run = make_ckpt_run("r", [(100, "light")])
    ckpt = run / "checkpoints" / "step-100"
    size = sum(f.stat().st_size for f in ckpt.iterdir())
    assert delete_checkpoint(ws, ckpt) == size and not ckpt.exists()
    stray = tmp_path / "other" / "checkpoints" / "step-1"
    stray.mkdir(parents=True)
    with pytest.raises(UsageError, match="not a checkpoint directory of the workspace"):
        delete_checkpoint(ws, stray)
    with pytest.raises(UsageError):
        delete_checkpoint(ws, run)  # a run, not a checkpoint
    assert stray.is_dir() and run.is_dir()
