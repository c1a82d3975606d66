"""Loss curves: a PNG (matplotlib) and a sparkline for the terminal.

Both put tokens seen on the x axis, so runs with different batch sizes, or a
train and a validation curve logged at different intervals, line up.

matplotlib is imported only when a PNG is drawn, and through its
object-oriented API with the Agg canvas (no ``pyplot``): no display is needed,
and the backend of a notebook that calls these functions is left alone.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

from lmforge.fileio import write_bytes_atomic
from lmforge.runs.metrics import Metrics
from lmforge.units import perplexity
from lmforge.workspace import RunDir

BLOCKS = "▁▂▃▄▅▆▇█"


# ----------------------------------------------------------------------------- terminal


def sparkline(
    points: Sequence[tuple[float, float]],
    width: int = 60,
    *,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
) -> str:
    """``(x, y)`` points as a line of ``width`` block characters.

    The x range is cut into ``width`` equal columns; each column shows the mean
    of its points, and columns between two points are interpolated linearly (as
    the PNG draws its lines), so a validation curve evaluated every 1,000 steps
    still reads as a curve. Columns before the first point stay blank. Share
    ``x_range``/``y_range`` between lines to make them comparable.
    """
    points = [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    if not points or width <= 0:
        return ""
    x0, x1 = x_range or (min(p[0] for p in points), max(p[0] for p in points))
    y0, y1 = y_range or (min(p[1] for p in points), max(p[1] for p in points))
    sums = [0.0] * width
    counts = [0] * width
    for x, y in points:
        col = 0 if x1 <= x0 else min(width - 1, max(0, int((x - x0) / (x1 - x0) * width)))
        sums[col] += y
        counts[col] += 1
    filled = [i for i in range(width) if counts[i]]
    levels: list[float | None] = [None] * width
    for i in filled:
        levels[i] = sums[i] / counts[i]
    for lo, hi in zip(filled, filled[1:], strict=False):
        for i in range(lo + 1, hi):
            levels[i] = levels[lo] + (levels[hi] - levels[lo]) * (i - lo) / (hi - lo)
    chars = []
    for value in levels:
        if value is None:
            chars.append(" ")
            continue
        level = 0.5 if y1 <= y0 else (value - y0) / (y1 - y0)
        chars.append(BLOCKS[min(len(BLOCKS) - 1, max(0, round(level * (len(BLOCKS) - 1))))])
    return "".join(chars)


def loss_sparklines(metrics: Metrics, width: int = 60) -> list[tuple[str, float, str, float]]:
    """``(label, first value, sparkline, last value)`` for the train and validation
    loss, on a shared scale of tokens and loss."""
    curves = [("train loss", train_points(metrics)), ("val loss", val_points(metrics))]
    curves = [(label, pts) for label, pts in curves if pts]
    if not curves:
        return []
    xs = [x for _, pts in curves for x, _ in pts]
    ys = [y for _, pts in curves for _, y in pts]
    x_range, y_range = (min(xs), max(xs)), (min(ys), max(ys))
    return [
        (label, pts[0][1], sparkline(pts, width, x_range=x_range, y_range=y_range), pts[-1][1])
        for label, pts in curves
    ]


def train_points(metrics: Metrics) -> list[tuple[float, float]]:
    return [(float(r.get("tokens") or 0), float(r["loss"])) for r in metrics.train]


def val_points(metrics: Metrics) -> list[tuple[float, float]]:
    return [(float(r.get("tokens") or 0), float(r["val_loss"])) for r in metrics.eval]


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Centered moving average over ``window`` points (shrunk at the ends), so the
    smoothed curve does not lag behind a falling loss the way an EMA does."""
    half = max(0, window // 2)
    prefix = [0.0]
    for v in values:
        prefix.append(prefix[-1] + v)
    n = len(values)
    out = []
    for i in range(n):
        lo, hi = max(0, i - half), min(n, i + half + 1)
        out.append((prefix[hi] - prefix[lo]) / (hi - lo))
    return out


# ----------------------------------------------------------------------------- PNG


def plot_loss(
    runs: Sequence[tuple[str, Metrics]],
    path: str | os.PathLike,
    *,
    title: str | None = None,
) -> Path | None:
    """Write train (raw and smoothed) and validation loss against tokens for one
    or more ``(name, metrics)`` runs to the PNG ``path``; the best validation
    point of each run is starred. Returns the path, or ``None`` when no run has a
    loss to draw. The file is written atomically (a partial PNG is never seen)."""
    runs = [(name, m) for name, m in runs if m]
    if not runs:
        return None
    fig, ax = _figure()
    single = len(runs) == 1
    for i, (name, metrics) in enumerate(runs):
        color = f"C{i % 10}"
        train = train_points(metrics)
        val = val_points(metrics)
        prefix = "" if single else f"{name}: "
        if train:
            xs, ys = zip(*train, strict=True)
            if len(train) >= 100:  # noisy enough to smooth: raw faintly, a 2% window on top
                ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
                smoothed = smooth(ys, len(train) // 50)
                ax.plot(xs, smoothed, color=color, linewidth=1.6, label=f"{prefix}train (smoothed)")
            else:
                ax.plot(xs, ys, color=color, linewidth=1.6, label=f"{prefix}train")
        if val:
            xs, ys = zip(*val, strict=True)
            val_color = "C1" if single else color
            bx, by = min(val, key=lambda p: p[1])
            label = f"{prefix}validation (best {by:.3f}, ppl {_ppl(by)})"
            ax.plot(xs, ys, color=val_color, linestyle="--", marker="o", markersize=4, label=label)
            ax.plot([bx], [by], color=val_color, marker="*", markersize=13, linestyle="none")
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.xaxis.set_major_formatter(_tokens_formatter())
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or ", ".join(name for name, _ in runs), fontsize=10)
    tokens_per_step = _tokens_per_step(runs[0][1]) if single else None
    if tokens_per_step:  # one run with a fixed batch: its steps on the top axis
        top = ax.secondary_xaxis(
            "top", functions=(lambda t: t / tokens_per_step, lambda s: s * tokens_per_step)
        )
        top.set_xlabel("optimizer steps")

    return _save_png(fig, path)


def _figure():
    """A 9 x 5.5 inch figure on the Agg canvas (no display, no pyplot state) and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _tokens_formatter():
    from matplotlib.ticker import EngFormatter

    return EngFormatter(sep="")  # 200k, 1.5M tokens


def _save_png(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG atomically (a partial file is never seen)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    fig.savefig(png, format="png")
    write_bytes_atomic(path, png.getvalue())
    return path


def plot_run(run_dir: str | os.PathLike, metrics: Metrics) -> Path | None:
    """Draw one run's loss curves to its ``plots/loss.png`` (None when nothing is logged)."""
    run = RunDir(Path(run_dir))
    return plot_loss([(run.name, metrics)], run.plots_dir / "loss.png")


def _ppl(loss: float) -> str:
    value = perplexity(loss)
    if math.isinf(value):
        return "inf"
    return f"{value:.4g}" if value < 1e5 else f"{value:.2e}"


def _tokens_per_step(metrics: Metrics) -> float | None:
    """Tokens per optimizer step when every record agrees on it (not after a batch-size change)."""
    pairs = [(r.get("step"), r.get("tokens")) for r in metrics.train + metrics.eval]
    pairs = [
        (s, t) for s, t in pairs if isinstance(s, int) and s > 0 and isinstance(t, (int, float)) and t > 0
    ]
    if not pairs:
        return None
    rate = pairs[-1][1] / pairs[-1][0]
    return rate if all(abs(t - s * rate) <= 1e-6 * t for s, t in pairs) else None


def plot_group(
    settings: Sequence[tuple[str, list[tuple[float, float, float, float]]]],
    path: str | os.PathLike,
    *,
    title: str,
    target: float | None = None,
) -> Path | None:
    """Validation loss against tokens for the settings of a sweep: per setting the mean over its
    seeds as a line and the seeds' range as a band; ``target`` as a dotted horizontal line.
    ``settings`` holds ``(label, [(tokens, mean, low, high), ...])``. None when nothing to draw."""
    settings = [(label, curve) for label, curve in settings if curve]
    if not settings:
        return None
    fig, ax = _figure()
    for i, (label, curve) in enumerate(settings):
        color = f"C{i % 10}"
        xs, means, lows, highs = zip(*curve, strict=True)
        ax.fill_between(xs, lows, highs, color=color, alpha=0.2, linewidth=0)
        ax.plot(xs, means, color=color, marker="o", markersize=3, linewidth=1.6, label=label)
    if target is not None:
        ax.axhline(target, color="0.4", linestyle=":", linewidth=1.2, label=f"target {target:.3f}")
    ax.set_xlabel("tokens")
    ax.set_ylabel("validation loss (nats/token), mean and range over seeds")
    ax.xaxis.set_major_formatter(_tokens_formatter())
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save_png(fig, path)
