"""How commands show numbers, times and statuses in their tables, over ``lmforge.units``.

Shared by ``ckpt`` and ``runs`` (and any command with a table), so that a loss or a time
reads the same everywhere and no command imports another command's module.
"""

from __future__ import annotations

import math
from datetime import datetime

from rich.console import Console, RenderableType
from rich.text import Text

STATUS_STYLE = {
    "running": "cyan",
    "finished": "green",
    "interrupted": "yellow",
    "aborted": "red",
    "stale": "magenta",
    "failed": "red",
    "unknown": "dim",
}


def fmt_time(value: str | None) -> str:
    """An ISO 8601 UTC time as local 'YYYY-MM-DD HH:MM'."""
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return value


def fmt_loss(loss: float | None) -> str:
    return "-" if loss is None else f"{loss:.4f}"


def fmt_ppl(ppl: float | None) -> str:
    if ppl is None:
        return "-"
    if math.isinf(ppl):
        return "inf"
    return f"{ppl:.2f}" if ppl < 1e5 else f"{ppl:.3g}"


def fmt_loss_at(loss: float | None, step: int | None) -> str:
    """A loss with the step it was reached at, ``3.2100 @400``."""
    if loss is None:
        return "-"
    return fmt_loss(loss) + (f" [dim]@{step}[/dim]" if step is not None else "")


def fmt_steps(step: int | None, total: int | None) -> str:
    """``400/2,000``; the bare step when the total is unknown."""
    if step is None:
        return "-"
    return f"{step:,}/{total:,}" if total else f"{step:,}"


def fmt_status(status: str) -> str:
    """A run status in its colour (markup)."""
    style = STATUS_STYLE.get(status, "")
    return f"[{style}]{status}[/{style}]" if style else status


def fit_columns(
    columns: list[tuple[str, list[str]]], width: int, drop_first: list[str]
) -> list[tuple[str, list[str]]]:
    """Drop columns, in the order of ``drop_first``, until the table fits ``width``: on a
    narrow terminal the least telling columns go rather than every cell wrapping."""

    def needed(cols: list[tuple[str, list[str]]]) -> int:
        return 1 + sum(3 + max(len(h), *(Text.from_markup(c).cell_len for c in cells)) for h, cells in cols)

    columns = list(columns)
    for name in drop_first:
        if needed(columns) <= width:
            break
        columns = [c for c in columns if c[0] != name]
    return columns


def table_width(console: Console) -> int:
    """The width to lay tables out in: the terminal's; unbounded when the output is not a
    terminal (a pipe, a file), where Rich would assume 80 columns and cut names short
    (``tiny-wikitext-2-202…``) for a reader that has no columns at all."""
    return console.width if console.is_terminal else 10**6


def print_table(console: Console, table: RenderableType) -> None:
    """Print ``table`` on ``console``; when that is not a terminal, at the table's natural
    width (see ``table_width``), so that no cell is cut or wrapped."""
    if console.is_terminal:
        console.print(table)
        return
    natural = console.measure(table, options=console.options.update_width(table_width(console))).maximum
    # print(width=) can only narrow the console: widen the console itself for this table
    saved = console._width  # what the console was made with (None: from the environment)
    console.width = max(console.width, natural)
    try:
        console.print(table)
    finally:
        console._width = saved
