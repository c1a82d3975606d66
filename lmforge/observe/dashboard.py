"""Showing a training run: fixed-format lines, a Rich live view, a summary table.

``PlainReporter`` writes one line per logging step (and per evaluation) to a
stream, the format a log file or CI wants::

    step 100/2000 | loss 3.21 | ppl 24.8 | lr 1.50e-04 | gnorm 0.84 | 12,345 tok/s | mfu n/a | eta 3m 12s

``RichReporter`` draws a live panel on a terminal (stderr) instead. Both only
render what the trainer reports (``lmforge.observe.reporting.Reporter``).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import IO, Any

from lmforge.observe.reporting import EvalStats, Reporter, StepStats, TrainResult
from lmforge.units import format_duration, perplexity


def duration_or_na(seconds: float | None) -> str:
    """A duration as ``lmforge runs`` shows it; ``n/a`` (like MFU) while it is unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    return format_duration(seconds)


def format_mfu(mfu: float | None) -> str:
    return "n/a" if mfu is None else f"{100 * mfu:.1f}%"


def format_step_line(s: StepStats) -> str:
    return (
        f"step {s.step}/{s.total_steps} | loss {s.loss:.2f} | ppl {perplexity(s.loss):.1f} | lr {s.lr:.2e} | "
        f"gnorm {s.grad_norm:.2f} | {s.tokens_per_sec:,.0f} tok/s | mfu {format_mfu(s.mfu)} | "
        f"eta {duration_or_na(s.eta_s)}"
    )


def format_eval_line(e: EvalStats) -> str:
    mark = " (new best)" if e.improved else ""
    return (
        f"eval step {e.step} | val_loss {e.val_loss:.4f} | val_ppl {e.val_ppl:.1f} | "
        f"best {e.best_val_loss:.4f} at step {e.best_step}{mark}"
    )


# A log never goes longer than this without a line while steps are being trained.
HEARTBEAT_S = 60.0


class PlainReporter(Reporter):
    """Plain lines on a stream (stderr by default). ``quiet``: warnings only.

    Between logging steps it stays silent, except within the first step (one line per
    micro-batch) and, when steps are slow, a line after a micro-batch once a minute."""

    def __init__(self, stream: IO[str] | None = None, quiet: bool = False) -> None:
        self.stream = stream
        self.quiet = quiet
        self._started = self._last_line = time.monotonic()
        self._first_step: int | None = None

    def _write(self, line: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(line + "\n")
        stream.flush()
        self._last_line = time.monotonic()

    def start(self, info: dict[str, Any]) -> None:
        self._started = time.monotonic()
        if not self.quiet:
            self._write(describe_start(info))

    def micro_batch(self, step: int, total_steps: int, done: int, of: int) -> None:
        if self._first_step is None:
            self._first_step = step
        first = step == self._first_step and of > 1
        if self.quiet or not (first or time.monotonic() - self._last_line >= HEARTBEAT_S):
            return
        elapsed = format_duration(time.monotonic() - self._started)
        part = f" | micro-batch {done}/{of}" if of > 1 else ""
        self._write(f"step {step}/{total_steps}{part} done | {elapsed}")

    def step(self, stats: StepStats) -> None:
        if not self.quiet:
            self._write(format_step_line(stats))

    def evaluation(self, stats: EvalStats) -> None:
        if not self.quiet:
            self._write(format_eval_line(stats))

    def sample(self, step: int, prompt: str, text: str) -> None:
        if not self.quiet:
            self._write(f"sample step {step} | {(prompt + text)!r}")

    def checkpoint(self, kind: str, path: Path, step: int) -> None:
        if not self.quiet:
            self._write(f"checkpoint {kind} step {step} -> {path}")

    def warning(self, message: str) -> None:
        self._write(f"warning: {message}")


def describe_start(info: dict[str, Any]) -> str:
    parts = [
        f"run {info['run']} ({info['run_dir']})",
        f"{info['parameters']:,} parameters (total)",
        f"{info['device']} {info['dtype']}" + (" compiled" if info.get("compile") else ""),
        f"{info['tokens_per_step']:,} tokens/step",
    ]
    if info.get("resumed_from_step"):
        parts.append(f"resumed at step {info['resumed_from_step']}")
    if info.get("init_from"):
        parts.append(f"weights from {info['init_from']}")
    line = "start " + " | ".join(parts)
    if info.get("dtype_reason") or info.get("compile_reason"):
        compiled = "on" if info.get("compile") else "off"
        line += (
            f"\nprecision {info['dtype']} ({info.get('dtype_reason', '')}) | "
            f"compile {compiled} ({info.get('compile_reason', '')})"
        )
    return line + (f"\n{info['estimate']}" if info.get("estimate") else "")


class RichReporter(Reporter):
    """A live panel on a terminal: progress bar, the latest metrics, validation, samples."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self._live = None
        self._progress = None
        self._task = None
        self._info: dict[str, Any] = {}
        self._step: StepStats | None = None
        self._eval: EvalStats | None = None

    def start(self, info: dict[str, Any]) -> None:
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._info = info
        self.console.print(describe_start(info), highlight=False)
        # the one clock of the view, in the format of the eta beside it and of `lmforge runs`
        self._progress = Progress(
            TextColumn("[bold]train[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps{task.fields[micro]}"),
            _elapsed_column(),
            TextColumn("eta {task.fields[eta]}"),
            console=self.console,
        )
        estimate = info.get("estimate_s")
        self._task = self._progress.add_task(
            "train",
            total=info["total_steps"],
            completed=info.get("resumed_from_step") or 0,
            eta=f"~{duration_or_na(estimate)} (estimate)" if estimate is not None else "n/a",
            micro="",
        )
        self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
        self._live.start()

    def _render(self):
        from rich.console import Group
        from rich.table import Table

        table = Table.grid(padding=(0, 3))
        for _ in range(4):
            table.add_column()
        s, e = self._step, self._eval
        na = "[dim]…[/dim]"
        table.add_row(
            "loss",
            f"{s.loss:.4f}" if s else na,
            "ppl",
            f"{perplexity(s.loss):.1f}" if s else na,
        )
        table.add_row("lr", f"{s.lr:.2e}" if s else na, "grad norm", f"{s.grad_norm:.2f}" if s else na)
        table.add_row(
            "tokens/s", f"{s.tokens_per_sec:,.0f}" if s else na, "MFU", format_mfu(s.mfu) if s else na
        )
        table.add_row(
            "val loss",
            f"{e.val_loss:.4f}" if e else na,
            "best val",
            f"{e.best_val_loss:.4f} (step {e.best_step})" if e else na,
        )
        table.add_row("tokens", f"{s.tokens:,}" if s else na)
        return Group(self._progress, table)

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def step(self, stats: StepStats) -> None:
        self._step = stats
        if self._progress is not None:
            self._progress.update(self._task, completed=stats.step, eta=duration_or_na(stats.eta_s))
        self._refresh()

    def micro_batch(self, step: int, total_steps: int, done: int, of: int) -> None:
        if self._progress is None:
            return
        # the bar moves at every step; within a step of several micro-batches, their count shows
        micro = f" (step {step}: micro-batch {done}/{of})" if of > 1 and done < of else ""
        self._progress.update(self._task, completed=step - 1 + done / of, micro=micro)

    def evaluation(self, stats: EvalStats) -> None:
        self._eval = stats
        self.console.print(format_eval_line(stats), highlight=False)
        self._refresh()

    def sample(self, step: int, prompt: str, text: str) -> None:
        from rich.markup import escape

        self.console.print(
            f"[dim]sample step {step}:[/dim] [bold]{escape(prompt)}[/bold]{escape(text)}", highlight=False
        )

    def checkpoint(self, kind: str, path: Path, step: int) -> None:
        self.console.print(f"[dim]checkpoint {kind} step {step} -> {path}[/dim]", highlight=False)

    def warning(self, message: str) -> None:
        from rich.markup import escape

        self.console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False)

    def end(self, result: TrainResult) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=result.step)
        self._refresh()

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def _elapsed_column():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Elapsed(ProgressColumn):
        def render(self, task) -> Text:
            return Text(duration_or_na(task.elapsed))

    return Elapsed()


def summary_rows(result: TrainResult) -> list[tuple[str, str]]:
    def num(x: float | None, fmt: str = ".4f") -> str:
        return "n/a" if x is None else format(x, fmt)

    rows = [
        ("run", result.run),
        ("status", result.status + ("" if result.stop_reason == "steps" else f" ({result.stop_reason})")),
        ("steps", f"{result.step:,} / {result.total_steps:,}"),
        ("tokens", f"{result.tokens:,}"),
        ("time", duration_or_na(result.elapsed_s)),
        ("tokens/s", f"{result.tokens_per_sec:,.0f}"),
        ("last train loss", num(result.last_loss)),
        ("last val loss", num(result.last_val_loss)),
        (
            "best val loss",
            num(result.best_val_loss) + (f" (step {result.best_step})" if result.best_step else ""),
        ),
        (
            "best val ppl",
            "n/a" if result.best_val_loss is None else f"{perplexity(result.best_val_loss):.2f}",
        ),
        ("skipped steps", str(result.bad_steps)),
        ("checkpoint", str(result.checkpoint) if result.checkpoint else "none"),
        ("run directory", str(result.run_dir)),
    ]
    return rows


def summary_table(result: TrainResult):
    from rich.table import Table

    table = Table(title="Training summary", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in summary_rows(result):
        table.add_row(key, value)
    return table
