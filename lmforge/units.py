"""Numbers and times as lmforge records and shows them, one definition each.

Used by the library (run records, checkpoints, the live view) and the CLI alike; no torch.
"""

from __future__ import annotations

import datetime
import math


def now_iso() -> str:
    """The current UTC time as ISO 8601 to the second, ``2026-12-01T09:47:40Z`` (run.json, meta.json)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def is_count(value: object) -> bool:
    """``value`` is a step, token or byte count as the state files hold it: an int >= 0 (not a
    bool, which JSON readers would otherwise take for one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def perplexity(loss: float | None) -> float | None:
    """``exp(loss)``; ``inf`` where that overflows (a diverged run), ``None`` without a loss."""
    if loss is None:
        return None
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def format_duration(seconds: float | None) -> str:
    """``42s``, ``3m 05s``, ``2h 07m``, ``3d 04h``; ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m {s:02d}s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h {m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d {h:02d}h"


def format_count(n: float | None) -> str:
    """12_345_678 -> ``12.3M``; ``-`` when unknown."""
    if n is None:
        return "-"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}" if float(n).is_integer() or abs(n) >= 10 else f"{n:.3g}"


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 directory``, ``2 directories``: the count with the word that agrees with it."""
    return f"{n:,} {word if n == 1 else words or word + 's'}"


def format_bytes(n: int | None) -> str:
    """``512 B``, ``1.5 KiB`` ... ``3.2 GiB``; ``-`` when unknown."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover
