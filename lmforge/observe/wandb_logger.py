"""Weights & Biases behind a null object, so the training loop has no ``if wandb:``.

``wandb`` is imported only when a run logs to it (it is slow to import), never
prompts (no login calls, ``WANDB_SILENT``), and keeps its files in the run
directory (``runs/<run>/wandb/``). ``auto`` logs online only when credentials
exist (``WANDB_API_KEY`` or an ``api.wandb.ai`` entry in ``~/.netrc``) and
offline otherwise; an online start that fails falls back to offline.

The x-axis is lmforge's own ``step`` metric, never W&B's ``step=`` argument:
W&B drops every ``log(step=s)`` below the highest step it has seen, which after
a rollback or a resume from an older checkpoint would silently lose every
point until training passes its old maximum. Logging without ``step=`` lets
W&B's internal ``_step`` count log calls (monotonic, and continued by W&B on a
resume), while the charts plot against ``step``, which may go back.
"""

from __future__ import annotations

import netrc
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

WANDB_HOST = "api.wandb.ai"

# The metric every chart plots against: the optimizer step the values belong to.
STEP_METRIC = "step"


class NullLogger:
    """Logs nothing. ``run_id`` is None; every method is a no-op."""

    run_id: str | None = None
    mode = "disabled"
    wants_layer_norms = False

    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def log_sample(self, step: int, prompt: str, text: str) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbLogger(NullLogger):
    """A live ``wandb`` run."""

    wants_layer_norms = True

    def __init__(self, run: Any, mode: str) -> None:
        self._run = run
        self.run_id = run.id
        self.mode = mode
        self._samples: list[list[Any]] = []
        run.define_metric(STEP_METRIC)
        run.define_metric("*", step_metric=STEP_METRIC)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self._run.log({**metrics, STEP_METRIC: step})  # no step=: see the module docstring

    def log_sample(self, step: int, prompt: str, text: str) -> None:
        import wandb

        # a W&B table cannot grow after it is logged: log the whole table each time
        self._samples.append([step, prompt, text])
        table = wandb.Table(columns=["step", "prompt", "text"], data=list(self._samples))
        self.log({"samples": table}, step)

    def summary(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            self._run.summary[key] = value

    def finish(self, exit_code: int = 0) -> None:
        self._run.finish(exit_code=exit_code)


def has_credentials() -> bool:
    """True when W&B could log online without asking for a key."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str) -> str:
    """``auto`` -> online / offline (or what ``WANDB_MODE`` says); other modes unchanged."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("online", "offline", "disabled"):
        return env
    if env == "dryrun":
        return "offline"
    return "online" if has_credentials() else "offline"


def new_run_id() -> str:
    """A W&B run id chosen by lmforge, so that it is on disk before W&B starts."""
    return uuid.uuid4().hex[:8]


def make_logger(
    mode: str,
    *,
    run_dir: Path,
    project: str,
    name: str,
    config: dict[str, Any],
    run_id: str | None,
    on_warning: Callable[[str], None] = lambda message: None,
) -> NullLogger:
    """A ``WandbLogger`` for ``mode`` online/offline/auto, or a ``NullLogger`` for disabled.

    ``run_id`` continues that W&B run (``resume="allow"``) when it exists.
    """
    mode = resolve_mode(mode)
    if mode == "disabled":
        return NullLogger()
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        import wandb
    except ImportError:
        on_warning("wandb is not installed: W&B logging is off (pip install wandb)")
        return NullLogger()

    def start(m: str):
        return wandb.init(
            project=project,
            name=name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            config=config,
            mode=m,
            settings=wandb.Settings(console="off", silent=True, init_timeout=60),
        )

    try:
        return WandbLogger(start(mode), mode)
    except Exception as exc:
        if mode != "online":
            on_warning(f"W&B could not start ({type(exc).__name__}: {exc}); logging to W&B is off")
            return NullLogger()
        on_warning(f"W&B could not log online ({type(exc).__name__}); logging offline instead")
    try:
        return WandbLogger(start("offline"), "offline")
    except Exception as exc:
        on_warning(f"W&B could not start offline either ({type(exc).__name__}); logging to W&B is off")
        return NullLogger()
