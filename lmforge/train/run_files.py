"""A training run's files besides its checkpoints, and its W&B run.

``config.toml`` (written at each start), ``run.json`` (status and progress),
``metrics.jsonl`` and ``samples.jsonl`` in the run directory (``RunDir``), and the
W&B logger. Rank 0 writes them; on the other ranks a ``RunFiles(..., enabled=False)``
writes nothing, so the loop has no rank branches.

May import ``runs.record``, ``fileio``, ``workspace`` and ``observe.wandb_logger``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

from lmforge.config import TrainingConfig
from lmforge.errors import LmforgeError, UsageError
from lmforge.fileio import FileLock, is_disk_full
from lmforge.runs.record import JsonlWriter, RunRecord, truncate_after
from lmforge.train.state import RunProgress
from lmforge.units import now_iso
from lmforge.workspace import RunDir


class RunFiles:
    """The files of the run in ``run``; ``progress`` is what ``run.json`` keeps up to date."""

    def __init__(self, run: RunDir, progress: RunProgress, *, enabled: bool) -> None:
        from lmforge.observe.wandb_logger import NullLogger

        self.run = run
        self.progress = progress
        self.enabled = enabled
        self.logger = NullLogger()
        self._record: RunRecord | None = None
        self._metrics: JsonlWriter | None = None
        self._samples: JsonlWriter | None = None
        # held from create()/lock() to close(): what tells `runs list` and a second
        # `train --resume` that this run is alive (the kernel drops it if the process dies).
        # fcntl.flock through fileio rather than the filelock package: readers probe it with a
        # shared lock that neither creates the file nor contends (lock_held), check_present reads
        # its descriptor, and filelock falls back to a marker file (left behind by a killed
        # process) where flock is missing
        self._lock: FileLock | None = None

    def create(self) -> None:
        """The directory of a new run; one that appeared since the run was planned is refused."""
        if not self.enabled:
            return
        try:
            self.run.path.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            name = self.run.name
            raise UsageError(f"run {name!r} already exists", f"continue it with --resume {name}") from None
        self.lock()

    def lock(self) -> None:
        """Take the run's lock for the life of this process (until ``close``); refused when
        another process holds it: two trainers in one run directory would write every step
        and checkpoint twice."""
        if not self.enabled or self._lock is not None:
            return
        lock = FileLock(self.run.lock_file)
        if not lock.acquire():
            name = self.run.name
            raise UsageError(
                f"run {name!r} is already being trained by another process (it holds {self.run.lock_file})",
                "wait for it to finish or stop it (Ctrl-C saves a checkpoint), then resume",
            )
        self._lock = lock

    def check_present(self) -> None:
        """Stop when the run directory was removed (``runs rm --force``) or replaced while
        training: writing on would recreate it without its config and records."""
        if self._lock is not None and self._lock.file_removed():
            raise LmforgeError(
                f"the run directory {self.run.path} was removed while the run was training; stopping",
                "nothing more is written there; start the run again (or restore the directory and resume)",
            )

    def reopen(self) -> None:
        """A resumed run, back at ``progress.step``: the records of the steps after it go
        (they are trained again), and so do the leftovers of saves that crashed."""
        if not self.enabled:
            return
        from lmforge.checkpoint.listing import remove_stale_tmp

        self.lock()  # before anything in the directory changes
        remove_stale_tmp(self.run.path)
        for file in (self.run.metrics_file, self.run.samples_file):
            with self._disk_full_is_one_line(file):
                truncate_after(file, self.progress.step)

    def stored_wandb_id(self) -> str | None:
        return RunRecord.read(self.run.path).get("wandb_id")

    def open(self, config: TrainingConfig, record: dict[str, Any], on_warning: Callable[[str], None]) -> None:
        """Write ``config.toml``, start ``run.json`` with ``record``, open the JSONL files and W&B."""
        if not self.enabled:
            return
        from lmforge import __version__
        from lmforge.fileio import write_text_atomic
        from lmforge.observe.wandb_logger import make_logger

        with self._disk_full_is_one_line(self.run.config_file):
            write_text_atomic(self.run.config_file, config.to_toml())  # never half a config.toml
        previous = RunRecord.read(self.run.path)
        p = self.progress
        self._record = RunRecord(
            self.run.path,
            {
                "started_at": previous.get("started_at") or now_iso(),
                "total_steps": config.train.steps,
                **self._progress_fields(),
                **record,
                "wandb_id": p.wandb_id,
                "lmforge_version": __version__,
            },
        )
        self._record.update()
        self._metrics = JsonlWriter(self.run.metrics_file)
        self._samples = JsonlWriter(self.run.samples_file)
        self.logger = make_logger(
            config.logging.wandb,
            run_dir=self.run.path,
            project=config.logging.wandb_project,
            name=self.run.name,
            config=config.to_dict(),
            run_id=p.wandb_id,
            on_warning=on_warning,
        )

    def _progress_fields(self) -> dict[str, Any]:
        p = self.progress
        return {
            "step": p.step,
            "tokens": p.tokens,
            "best_val_loss": p.best_val_loss,
            "best_step": p.best_step,
        }

    @contextlib.contextmanager
    def _disk_full_is_one_line(self, path):
        try:
            yield
        except OSError as exc:
            if not is_disk_full(exc, path):
                raise
            raise LmforgeError(
                f"the disk is full: could not write {path}; the file was left as it was",
                "free some space and start again",
            ) from exc

    def metric(self, record: dict[str, Any]) -> None:
        self.check_present()
        if self._metrics is not None:
            self._metrics.write(record)

    def train_record(
        self,
        loss: float,
        lr: float,
        grad_norm: float,
        tps: float,
        mfu: float | None,
        layer_norms: dict[str, float] | None = None,
    ) -> None:
        """A logging step's line in ``metrics.jsonl`` and its W&B values."""
        step, tokens = self.progress.step, self.progress.tokens
        record = {"kind": "train", "step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm}
        self.metric(record | {"tokens_per_sec": tps, "mfu": mfu, "tokens": tokens, "time": time.time()})
        wb = {
            "train/loss": loss,
            "train/ppl": math.exp(min(loss, 50.0)),
            "train/lr": lr,
            "train/grad_norm": grad_norm,
            "train/tokens_per_sec": tps,
            "train/tokens": tokens,
        }
        if mfu is not None:
            wb["train/mfu"] = mfu
        wb.update({f"grad_norm/{k}": v for k, v in (layer_norms or {}).items()})
        self.logger.log(wb, step=step)

    def eval_record(self, val_loss: float, val_ppl: float) -> None:
        """An evaluation's line in ``metrics.jsonl`` and its W&B values, at the current step."""
        step, tokens = self.progress.step, self.progress.tokens
        record = {"kind": "eval", "step": step, "val_loss": val_loss, "val_ppl": val_ppl}
        self.metric(record | {"tokens": tokens, "time": time.time()})
        self.logger.log({"val/loss": val_loss, "val/ppl": val_ppl}, step=step)

    def sample(self, prompt: str, text: str) -> None:
        step = self.progress.step
        self.check_present()
        if self._samples is not None:
            self._samples.write({"step": step, "prompt": prompt, "text": text})
        self.logger.log_sample(step, prompt, text)

    def update(self, **fields: Any) -> None:
        """``run.json`` with the current progress and ``fields`` (status, ended_at ...)."""
        self.check_present()
        if self._record is not None:
            self._record.update(**self._progress_fields(), **fields)

    def finished(self, status: str) -> None:
        p = self.progress
        self.update(status=status, ended_at=now_iso())
        self.logger.summary({"best_val_loss": p.best_val_loss, "best_step": p.best_step, "tokens": p.tokens})

    def failed(self, exc: BaseException) -> None:
        """Record why the run ended early; never raises (the original error is what matters)."""
        # a second Ctrl-C: stopped without the full checkpoint that "interrupted" promises
        aborted = isinstance(exc, KeyboardInterrupt)
        message = exc.message if isinstance(exc, LmforgeError) else f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(Exception):
            self.update(
                status="aborted" if aborted else "failed",
                ended_at=now_iso(),
                error=None if aborted else message,
            )
        self._finish_logger(exit_code=1)

    def close(self, exit_code: int) -> None:
        for writer in (self._metrics, self._samples):
            if writer is not None:
                writer.close()
        self._finish_logger(exit_code)
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _finish_logger(self, exit_code: int) -> None:
        from lmforge.observe.wandb_logger import NullLogger

        with contextlib.suppress(Exception):
            self.logger.finish(exit_code=exit_code)
        self.logger = NullLogger()
