"""Issue 12, items 3, 4 and 10: a time estimate before the first step, progress within it,
Ctrl-C said at once and a second one recorded as ``aborted``, and numbers that agree."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from lmforge.observe.dashboard import RichReporter
from lmforge.observe.reporting import StepStats
from lmforge.presets import resolve_config
from lmforge.train.dry_run import dry_run_report
from lmforge.train.estimate import estimate_time
from lmforge.train.run_spec import check_resume_point, next_step_hint
from lmforge.train.signals import AbortedBySignal, stop_on_signals

# ----------------------------------------------------------------------------- 3: estimate, progress


def test_the_estimate_of_gpt2_on_a_cpu_says_what_to_do():
    report = dry_run_report(resolve_config())
    est = estimate_time(report["flops_per_step"], 300_000, "cpu", lambda: 2e11, dtype="bf16")
    assert est.seconds == pytest.approx(300_000 * report["flops_per_step"] / (2e11 * 0.25))
    assert est.seconds > 30 * 86400  # GPT-2 small for 300k steps on a CPU: months
    assert "300,000 steps" in est.describe() and "200 GFLOP/s" in est.describe()
    assert "on a CPU, try --preset tiny" in est.advice("gpt2")
    tiny = dry_run_report(resolve_config(preset="tiny"))
    quick = estimate_time(tiny["flops_per_step"], 200, "cpu", lambda: 2e11)
    assert quick.seconds < 600 and quick.advice("tiny") is None
    assert estimate_time(report["flops_per_step"], 300_000, "cuda", lambda: 4e14).advice("gpt2") is None


def test_train_says_the_estimate_and_shows_the_first_steps_micro_batches(cli, train_workspace, train_flags):
    result = cli("train", *train_flags(steps=2, grad_accum=3, eval_interval=100), "--run", "mb")
    assert result.exit_code == 0, result.stderr
    err = result.stderr
    assert re.search(r"estimated time: ~\S+ for 2 steps of [\d.e+]+ FLOPs \(this cpu measured at", err)
    assert "GFLOP/s in a fp32 matmul" in err  # the fixture's dtype
    lines = [line for line in err.splitlines() if "micro-batch" in line]
    assert [line.split(" | ")[:2] for line in lines] == [
        ["step 1/2", f"micro-batch {i}/3 done"] for i in (1, 2, 3)
    ]  # the first step only: later ones log at their logging steps
    # the fixture's warmup of 2 steps in a 2-step run: said as the run starts, and clamped
    assert "--warmup-steps 2 is not shorter than the run (2 steps)" in err


def test_the_live_view_moves_within_a_step_and_has_one_clock():
    console = Console(record=True, width=160, force_terminal=True)
    reporter = RichReporter(console)
    reporter.start(
        {
            "run": "r",
            "run_dir": "/x",
            "parameters": 10,
            "device": "cpu",
            "dtype": "fp32",
            "tokens_per_step": 8,
            "total_steps": 10,
            "estimate_s": 5400.0,
        }
    )
    task = reporter._progress.tasks[0]
    assert task.fields["eta"] == "~1h 30m (estimate)"
    reporter.micro_batch(1, 10, 2, 4)
    assert task.completed == 0.5 and task.fields["micro"] == " (step 1: micro-batch 2/4)"
    reporter.step(StepStats(1, 10, 3.0, 1e-3, 0.5, 100.0, None, 8, 60.0, 1.0))
    text = console.export_text()
    reporter.close()
    assert "elapsed" not in text
    assert not re.search(r"\d:\d\d:\d\d", text)  # Rich's own clock format is gone


# ----------------------------------------------------------------------------- 4: Ctrl-C


def test_signals_are_announced_from_a_watcher_thread_and_the_second_aborts():
    stops, calls = [], []
    # what the handler was before: Python's default_int_handler, or SIG_IGN when pytest itself was
    # started in the background of a non-interactive shell (``... &``), which ignores SIGINT there
    before = signal.getsignal(signal.SIGINT)

    def announce(signum, first):
        calls.append((signum, first, threading.current_thread().name))

    with pytest.raises(AbortedBySignal) as info:
        with stop_on_signals(stops.append, lambda: bool(stops), announce):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(200):
                if calls and stops:
                    break
                time.sleep(0.01)
            assert stops == [signal.SIGINT]
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # interrupted by the abort
    assert info.value.exit_code == 130
    assert calls == [(signal.SIGINT, True, "lmforge-signals"), (signal.SIGINT, False, "lmforge-signals")]
    assert signal.getsignal(signal.SIGINT) is before  # restored


def _wait_for(stream, text, timeout=120.0):
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"{text!r} not seen in: {''.join(seen[-20:])}")


def test_a_second_ctrl_c_aborts_with_130_and_run_json_says_aborted(train_workspace, train_flags):
    flags = train_flags(steps=1000, grad_accum=256, eval_interval=1000, log_interval=1000)
    cmd = [sys.executable, "-m", "lmforge", "--workspace", str(train_workspace), "train", *flags]
    proc = subprocess.Popen(
        [*cmd, "--run", "ab"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        _wait_for(proc.stderr, "micro-batch 1/256")
        proc.send_signal(signal.SIGINT)
        _wait_for(proc.stderr, "Ctrl-C: stopping after this step")  # at once, inside the step
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 130
    finally:
        proc.kill()
    assert "Ctrl-C again: aborting now, without saving a checkpoint" in rest
    assert "stopped before its first checkpoint" in rest
    run = Path(train_workspace) / "runs" / "ab"
    assert json.loads((run / "run.json").read_text())["status"] == "aborted"
    assert not list((run / "checkpoints").glob("step-*")) if (run / "checkpoints").exists() else True

    from typer.testing import CliRunner

    from lmforge.cli.main import app

    resumed = CliRunner().invoke(app, ["--workspace", str(train_workspace), "train", "--resume", "ab"])
    assert resumed.exit_code == 2
    assert "no full checkpoint" in resumed.stderr and "start the run again" in resumed.stderr
    assert "--init-from" not in resumed.stderr  # no checkpoint: that would be a dead end
    listed = CliRunner().invoke(app, ["--workspace", str(train_workspace), "runs", "list", "--json"])
    assert [r["status"] for r in json.loads(listed.stdout) if r["name"] == "ab"] == ["aborted"]


def test_resume_hints_lead_somewhere(make_ckpt_run):
    from lmforge.errors import UsageError

    light = make_ckpt_run("lightonly", [(100, "light")])
    with pytest.raises(UsageError, match="no full checkpoint") as info:
        check_resume_point(light, 500)
    assert "--init-from lightonly:latest" in info.value.hint
    full = make_ckpt_run("withfull", [(200, "full")])
    assert next_step_hint(full) == "continue it from step 200 with `lmforge train --resume withfull`"


# ----------------------------------------------------------------------------- 10: numbers


def test_the_banner_and_ckpt_show_count_the_same_parameters(cli, train_workspace, train_flags):
    result = cli("train", *train_flags(steps=2, eval_interval=100), "--run", "count")
    assert result.exit_code == 0, result.stderr
    banner = int(re.search(r"([\d,]+) parameters \(total\)", result.stderr).group(1).replace(",", ""))
    shown = cli("ckpt", "show", "count:latest")
    assert re.search(rf"parameters \(total\)\s+{banner:,}", shown.stdout), shown.stdout
    as_json = json.loads(cli("ckpt", "show", "count:latest", "--json").stdout)
    assert as_json["parameters"] == banner

    details = json.loads(cli("runs", "show", "count", "--json", "--no-plot").stdout)
    keys = [c["key"] for c in details["config_diff"]]
    assert "model.pad_vocab_multiple" not in keys  # the auto value resolved on a CPU is no change
    assert json.loads((train_workspace / "runs" / "count" / "run.json").read_text())["device_type"] == "cpu"


@pytest.mark.parametrize(
    ("device_type", "pad", "listed"), [(None, 64, False), ("cpu", 64, True), ("cuda", 64, False)]
)
def test_the_padding_is_compared_with_what_auto_became(fake_run, device_type, pad, listed):
    from lmforge.runs.compare import changes_from_defaults

    run = fake_run("p", overrides={("model", "pad_vocab_multiple"): pad})
    record = json.loads((run / "run.json").read_text())
    record.pop("device_type", None)
    if device_type:
        record["device_type"] = device_type
    (run / "run.json").write_text(json.dumps(record))
    keys = [c.key for c in changes_from_defaults(run)]
    assert ("model.pad_vocab_multiple" in keys) is listed
