"""The plain metric line, the Rich live view and the summary table."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from lmforge.observe.dashboard import PlainReporter, RichReporter, format_step_line, summary_table
from lmforge.observe.reporting import EvalStats, StepStats, TrainResult

STATS = StepStats(100, 2000, 3.21, 1.5e-4, 0.84, 12345.0, None, 204800, 192.0, 30.0)
INFO = {
    "run": "r",
    "run_dir": "/x/r",
    "parameters": 1000,
    "device": "cpu",
    "dtype": "fp32",
    "tokens_per_step": 2048,
    "total_steps": 2000,
}
RESULT = TrainResult(
    "r",
    Path("/x/r"),
    "finished",
    "steps",
    2000,
    2000,
    10**6,
    60.0,
    5000.0,
    3.0,
    3.1,
    3.05,
    1800,
    0,
    Path("/x/r/checkpoints/step-2000"),
)


def test_fixed_format_line():
    line = format_step_line(STATS)
    expected = "step 100/2000 | loss 3.21 | ppl 24.8 | lr 1.50e-04 | gnorm 0.84 | 12,345 tok/s | mfu n/a"
    assert line == expected + " | eta 3m 12s"


def test_plain_reporter_and_quiet():
    out = io.StringIO()
    r = PlainReporter(out)
    r.start(INFO)
    r.step(STATS)
    r.evaluation(EvalStats(100, 3.0, 20.1, 3.0, 100, True, 0))
    r.warning("careful")
    text = out.getvalue()
    assert (
        "step 100/2000 |" in text and "eval step 100 | val_loss 3.0000" in text and "warning: careful" in text
    )
    quiet = io.StringIO()
    q = PlainReporter(quiet, quiet=True)
    q.start(INFO)
    q.step(STATS)
    q.warning("careful")
    assert quiet.getvalue() == "warning: careful\n"


def test_rich_reporter_renders():
    buf = io.StringIO()
    r = RichReporter(Console(file=buf, force_terminal=True, width=120))
    r.start(INFO)
    r.step(STATS)
    r.evaluation(EvalStats(100, 3.0, 20.1, 3.0, 100, True, 0))
    r.sample(100, "The history of", " the [bold] city")
    r.end(RESULT)
    r.close()
    assert "3.2100" in buf.getvalue() and "[bold] city" in buf.getvalue()


def test_summary_table():
    buf = io.StringIO()
    Console(file=buf, width=120).print(summary_table(RESULT))
    text = buf.getvalue()
    assert "best val loss" in text and "3.0500 (step 1800)" in text and "5,000" in text
