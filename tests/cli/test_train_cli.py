"""``lmforge train`` through CliRunner, and once as a real process stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest


def _steps(run_dir, kind="train"):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if r["kind"] == kind]


def test_train_resume_and_quiet(cli, train_workspace, train_flags):
    result = cli("train", *train_flags(steps=4, eval_interval=2, run="c1"))
    assert result.exit_code == 0, result.output
    assert "Training summary" in result.stdout and "finished" in result.stdout
    assert "step 4/4 | loss " in result.stderr and "| lr " in result.stderr and "mfu n/a" in result.stderr
    assert "eval step 2 | val_loss" in result.stderr
    run_dir = train_workspace / "runs" / "c1"

    # --steps may be raised on resume; the run keeps its config otherwise
    result = cli("--quiet", "train", "--resume", "c1", "--steps", "6", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["step"] == 6 and summary["status"] == "finished" and summary["run"] == "c1"
    assert "step " not in result.stderr  # --quiet: no progress lines
    assert _steps(run_dir) == [1, 2, 3, 4, 5, 6]
    assert "steps = 6" in (run_dir / "config.toml").read_text()


def test_generated_run_name(cli, train_workspace, train_flags):
    result = cli("train", *train_flags(steps=1, sample_tokens=0), "--json")
    assert result.exit_code == 0, result.output
    name = json.loads(result.stdout)["run"]
    assert name.startswith("tiny-wikitext-2-") and len(name.split("-")[-1]) == 6
    assert (train_workspace / "runs" / name / "config.toml").is_file()


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--data", "nope"], 2, "nope"),
        (["--steps", "0"], 2, "--steps must be positive"),
        (["--lr", "-1"], 2, "--lr must be positive"),
        (["--block-size", "100000"], 1, "block_size"),
        (["--run", "latest"], 2, "--run 'latest' is reserved"),
        (["--run", "best", "--dry-run"], 2, "--run 'best' is reserved"),
        (["--run", "no/slash"], 2, "invalid run name"),
        (["--resume", "ghost"], 2, "unknown run 'ghost'"),
    ],
)
def test_bad_input(cli, train_workspace, train_flags, extra, code, message):
    result = cli("train", *train_flags(), *extra)
    assert result.exit_code == code, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert not (train_workspace / "runs").exists() or not any((train_workspace / "runs").iterdir())


def test_existing_run_and_changed_architecture(cli, train_workspace, train_flags):
    assert cli("train", *train_flags(steps=2, run="r1", sample_tokens=0)).exit_code == 0
    run_dir = train_workspace / "runs" / "r1"
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.rglob("*")}

    again = cli("train", *train_flags(steps=2, run="r1"))
    assert again.exit_code == 2 and "already exists" in again.stderr and "--resume r1" in again.stderr

    arch = cli("train", "--resume", "r1", "--steps", "4", "--n-layer", "3")
    assert arch.exit_code == 2 and "model.n_layer: 2 -> 3" in arch.stderr

    done = cli("train", "--resume", "r1")
    assert done.exit_code == 2 and "already at step 2" in done.stderr

    wide = cli("train", *train_flags(run="r2"), "--init-from", "r1:latest", "--block-size", "64")
    assert wide.exit_code == 2 and "larger than the context of 32" in wide.stderr
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before  # nothing touched


def test_init_from_starts_a_new_run(cli, train_workspace, train_flags):
    assert cli("train", *train_flags(steps=2, run="base", sample_tokens=0)).exit_code == 0
    result = cli(
        "train", *train_flags(steps=2, run="child", sample_tokens=0), "--init-from", "base", "--json"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["step"] == 2


def test_sigterm_saves_a_full_checkpoint_and_exits_143(train_workspace, train_flags, tmp_path):
    env = {**os.environ, "LMFORGE_HOME": str(train_workspace), "PYTHONUNBUFFERED": "1"}
    args = [
        sys.executable,
        "-m",
        "lmforge",
        "train",
        *train_flags(steps=100_000, run="term", eval_interval=10_000),
    ]
    log = open(tmp_path / "stderr.txt", "w+")  # noqa: SIM115
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    metrics = train_workspace / "runs" / "term" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    log.seek(0)
    err = log.read()
    assert proc.returncode == 143, err
    assert "SIGTERM received" in err and "Training summary" in out and "interrupted" in out

    from lmforge.checkpoint.listing import list_checkpoints
    from lmforge.checkpoint.store import load_trainer_state

    run_dir = train_workspace / "runs" / "term"
    (full,) = [c for c in list_checkpoints(run_dir) if c.kind == "full"]
    assert full.step == max(_steps(run_dir)) and load_trainer_state(full.path)["step"] == full.step
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
