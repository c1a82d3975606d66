"""The training loop: ``TrainingManager(config).train()``.

Set-up first: ``lmforge.train.setup`` decides what the run is (config, resumed run, initial
checkpoint, name); ``lmforge.train.build`` makes its parts (data loader, model - compiled,
DDP-wrapped or FSDP-sharded - with its optimizer and step, throughput meter, checkpointer).
Each iteration of the loop is one optimizer step (``lmforge.train.step``); around it come
logging, periodic evaluation with a text sample, checkpoints (what they hold:
``lmforge.train.state``), bad steps and rollback (``lmforge.train.recovery``), and the run's
files and W&B (``lmforge.train.run_files``). Progress goes to a ``Reporter``
(``lmforge.observe.reporting``) that the caller chooses; the loop itself prints nothing.

Multi-process (``torchrun``; see ``lmforge.distributed``): every rank builds the
same model from the same seed, which is then wrapped for DDP or sharded with
FSDP2; each rank takes its slice of every global batch (the global order does
not depend on the number of processes). Rank 0 alone writes files and reports.
Ranks agree once per optimizer step (inside the step) on whether it was finite and
whether any of them received a stop signal; everything else that decides what
happens next (logging, evaluation, checkpoints) depends on the step number only, so
every rank takes the same path through the loop. Checkpoints hold the full
(unsharded) state plus every rank's RNG state.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import torch

from lmforge import distributed as dist
from lmforge.checkpoint.listing import latest_full
from lmforge.config import TrainingConfig
from lmforge.data.store import open_dataset
from lmforge.errors import UsageError
from lmforge.observe.reporting import Reporter, StepStats, TrainResult
from lmforge.train import build
from lmforge.train.evaluation import Evaluation
from lmforge.train.recovery import Recovery
from lmforge.train.run_files import RunFiles
from lmforge.train.schedule import build_schedule
from lmforge.train.setup import RunPlan, pad_vocab, plan_run, replaced_by_data, resolve_hardware, start_run
from lmforge.train.signals import stop_on_signals
from lmforge.train.state import Progress, TrainingState
from lmforge.train.step import StepOutcome
from lmforge.workspace import RunDir, Workspace

# Per-layer gradient norms go to W&B at this multiple of the log interval.
LAYER_NORM_EVERY = 10


class TrainingManager:
    """Trains a GPT on a prepared dataset in a run directory of the workspace.

    ``resume`` (a run name, ``"latest"`` or a run directory) continues a run from its
    newest full checkpoint; ``config`` then defaults to the run's own. ``init_from`` (a
    checkpoint name or path) starts a new run from a checkpoint's weights, with the
    checkpoint's architecture. ``plan`` (from ``lmforge.train.setup.plan_run``, as the CLI
    makes it) replaces all three. ``reporter`` receives the progress (plain lines on stderr
    when not given).

    Under ``torchrun``, call ``lmforge.distributed.init_distributed(device_type)`` first;
    ``rank``/``world_size`` default to the initialised process group's.
    """

    def __init__(
        self,
        config: TrainingConfig | None = None,
        workspace: Workspace | str | Path | None = None,
        *,
        reporter: Reporter | None = None,
        resume: str | Path | None = None,
        init_from: str | Path | None = None,
        plan: RunPlan | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if plan is not None and (config is not None or resume is not None or init_from is not None):
            raise TypeError("pass either plan, or config/resume/init_from")
        if reporter is None:
            from lmforge.observe.dashboard import PlainReporter

            reporter = PlainReporter()
        ws = workspace if isinstance(workspace, Workspace) else Workspace.resolve(workspace)
        self.workspace = ws
        group = dist.current()
        if rank is None and world_size is None and dist.launched_by_torchrun() and not dist.is_initialized():
            if int(os.environ["WORLD_SIZE"]) > 1:
                raise UsageError(
                    "launched by torchrun, but torch.distributed is not initialised",
                    "call lmforge.distributed.init_distributed(device_type) first (`lmforge train` does)",
                )
        self.rank = group.rank if rank is None else rank
        self.world_size = group.world_size if world_size is None else world_size
        self.is_main = self.rank == 0
        self.reporter = reporter if self.is_main else Reporter()

        # --- what to train (decided on rank 0: it is about to change the run's files)
        if plan is None:
            plan = dist.on_main(lambda: plan_run(ws, config, resume=resume, init_from=init_from))
        self.dataset = open_dataset(ws, plan.config.data.name)
        checked = plan
        plan = dist.on_main(lambda: start_run(ws, checked, self.dataset))
        config = self.config = plan.config
        self.resume_dir, self.init_from = plan.resume_dir, plan.init_from
        self._replaced = replaced_by_data(checked.config, plan.config, self.dataset.name)
        self.plan_warnings = list(plan.warnings)
        self.run_name = config.run
        self.run_dir = self.resume_dir or ws.run_dir(config.run)
        self.tokenizer_identity = dict(self.dataset.tokenizer_identity)

        # --- device, precision
        if config.train.threads > 0:
            torch.set_num_threads(config.train.threads)
        self.device, self.dtype, self.strategy, self.dtype_reason = resolve_hardware(
            config, self.world_size, group.local_rank, cache_dir=ws.cache_dir
        )
        config.model = pad_vocab(config.model, self.device.type, resumed=self.resume_dir is not None)
        if self.device.type == "cuda":
            from lmforge.device import enable_tf32

            enable_tf32()  # TF32 for the fp32 matmuls that remain, through one API (device.py)
        # fp16 needs loss scaling against underflowing gradients; bf16 has fp32's range and does not
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == "fp16")

        # --- the components: data loader, model with optimizer and step, schedule, throughput meter
        self.loader = build.make_train_loader(config, self.dataset, self.device, self.rank, self.world_size)
        built = build.make_model_and_step(
            config,
            strategy=self.strategy,
            device=self.device,
            dtype=self.dtype,
            scaler=self.scaler,
            rank=self.rank,
            world_size=self.world_size,
            init_from=self.init_from,
            on_compile_failure=self._compile_failed,
            cache_dir=ws.cache_dir,
        )
        self.model, self.optimizer, self.train_step = built.model, built.optimizer, built.train_step
        self.param_counts = built.param_counts
        self.compiled, self.compile_reason = built.compiled, built.compile_reason
        self.schedule = build_schedule(config.optim, config.train.steps)
        self.meter = build.make_throughput_meter(self.model, config, self.device, self.dtype, self.world_size)

        # --- the run's state, files and bad-step policy (the run directory is created in train())
        self.progress = Progress()
        self.files = RunFiles(RunDir(self.run_dir), self.progress, enabled=self.is_main)
        self.recovery = Recovery(config.train.max_bad_steps, self.files.metric, self.reporter.warning)
        self.state = TrainingState(
            self.model,
            self.optimizer,
            self.scaler,
            self.schedule,
            self.loader,
            self.progress,
            self.recovery.counts,
            self.tokenizer_identity,
            rank=self.rank,
            world_size=self.world_size,
            seed=config.train.seed,
        )
        self.checkpoints = build.make_checkpointer(
            self.state, self.files.run, config, self.dataset, strategy=self.strategy, device=self.device
        )
        self.evaluation = Evaluation(
            self.model,
            self.dataset.tokens("validation"),
            config,
            device=self.device,
            dtype=self.dtype,
            rank=self.rank,
            world_size=self.world_size,
            strategy=self.strategy,
            compiled=self.compiled,
            progress=self.progress,
            files=self.files,
            reporter=self.reporter,
            generate=self.generate_sample,
        )
        self.resumed_from_step: int | None = None
        self._stop_signal: int | None = None
        self._agreed_stop: int | None = None  # several processes: the signal all ranks stop on
        self._estimate = None  # lmforge.train.estimate.TimeEstimate, made at the start of train()
        self._layer_norms_wanted = False
        self._tokenizer = None
        self._last_loss: float | None = None
        dist.barrier()  # every rank has read what it needs before rank 0 starts writing

    @property
    def step(self) -> int:
        """Optimizer steps completed."""
        return self.progress.step

    @property
    def tokens(self) -> int:
        return self.progress.tokens

    @property
    def tokens_per_step(self) -> int:
        return self.config.tokens_per_step * self.world_size

    @property
    def tokenizer(self):
        """The dataset's tokenizer (loaded on first use, for samples)."""
        if self._tokenizer is None:
            from lmforge.data.tokenizer import tokenizer_from_identity

            self._tokenizer = tokenizer_from_identity(self.tokenizer_identity, workspace=self.workspace)
        return self._tokenizer

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)

    def next_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The ``grad_accum`` micro-batches of the next step, already on their way to the device."""
        return [
            (self._to_device(x), self._to_device(y))
            for x, y in (next(self.loader) for _ in range(self.config.train.grad_accum))
        ]

    # ------------------------------------------------------------------ the loop

    def train(self) -> TrainResult:
        """Train to ``config.train.steps`` (or an interruption, or early stopping)."""
        with stop_on_signals(self.request_stop, lambda: self._stop_signal is not None, self._announce_signal):
            try:
                self._open_run()
                result = self._loop()
            except BaseException as exc:
                self.files.failed(exc)
                raise
            finally:
                self.files.close(exit_code=128 + self._stop_signal if self._stop_signal else 0)
                self.reporter.close()
        return result

    def _loop(self) -> TrainResult:
        cfg, p = self.config, self.progress
        total = cfg.train.steps
        log_every = cfg.logging.log_interval
        t_start = time.perf_counter()
        tokens_at_start = p.tokens
        stop_reason = "steps"
        self.reporter.start(self._start_info())
        for message in self._replaced:
            self.reporter.warning(message)
        for message in self.plan_warnings:
            self.reporter.warning(message)
        if self._estimate is not None and self._estimate.advice(cfg.preset):
            self.reporter.warning(self._estimate.advice(cfg.preset))
        self.meter.reset()

        while p.step < total:
            lr = self.schedule(p.step)
            will_log = (p.step + 1) % log_every == 0 or p.step + 1 in (1, total)
            layer_norms = (
                will_log and self._layer_norms_wanted and (p.step + 1) % (log_every * LAYER_NORM_EVERY) == 0
            )
            out = self.train_step(
                self.next_batches(),
                lr,
                layer_norms,
                self._stop_signal,
                on_micro_batch=lambda done, of: self.reporter.micro_batch(p.step + 1, total, done, of),
            )
            self._agreed_stop = out.stop_signal
            if out.status != "ok":
                if self.recovery.step_skipped(out, p.step, p.tokens):
                    latest = dist.broadcast_object(self.checkpoints.latest_full())
                    self.recovery.roll_back(latest, p.step, self._roll_back_to)
            else:
                p.step += 1
                p.tokens += self.tokens_per_step
                self.recovery.step_ok()
                self.meter.step(self.tokens_per_step)
                if will_log:
                    self._log_step(out, lr, total, time.perf_counter() - t_start)
                if p.step % cfg.train.eval_interval == 0:
                    self._evaluate()
                    if cfg.train.patience and p.evals_since_best >= cfg.train.patience:
                        stop_reason = "early_stopping"
                self._periodic_checkpoints()
            # one process: the signal as it arrives; several: the one the ranks agreed on in the step
            stop = self._stop_signal if self.world_size == 1 else self._agreed_stop
            if stop is not None:
                stop_reason = "signal"
                where = " (by a rank)" if self.world_size > 1 else ""
                self.reporter.warning(
                    f"{signal.Signals(stop).name} received{where}: saving a full checkpoint at step "
                    f"{p.step}, then stopping"
                )
            if stop_reason != "steps":
                break

        if self.world_size > 1:
            self._stop_signal = self._agreed_stop  # a signal too late for the last step is not acted on
        if stop_reason == "steps" and p.last_eval_step != p.step:
            self._evaluate()  # the final validation loss
        final = (
            self._save("full")
            if self.checkpoints.last_full_step != p.step
            else self.checkpoints.latest_full()
        )
        elapsed = time.perf_counter() - t_start
        result = TrainResult(
            run=self.run_name,
            run_dir=self.run_dir,
            status="interrupted" if stop_reason == "signal" else "finished",
            stop_reason=stop_reason,
            step=p.step,
            total_steps=total,
            tokens=p.tokens,
            elapsed_s=elapsed,
            tokens_per_sec=(p.tokens - tokens_at_start) / max(elapsed, 1e-9),
            last_loss=self._last_loss,
            last_val_loss=p.last_val_loss,
            best_val_loss=p.best_val_loss,
            best_step=p.best_step,
            bad_steps=self.recovery.counts.total,
            checkpoint=final,
            signal=self._stop_signal,
        )
        self.files.finished(result.status)
        self.reporter.end(result)
        return result

    def _log_step(self, out: StepOutcome, lr: float, total: int, elapsed: float) -> None:
        # the mean over ranks (the gradient norm is global already); .item(): device-to-host syncs,
        # at logging steps only
        loss_t = dist.all_reduce_mean(out.loss.clone()) if self.world_size > 1 else out.loss
        loss, grad_norm = loss_t.item(), out.grad_norm.item()
        self._last_loss = loss
        step, tokens = self.progress.step, self.progress.tokens
        tps, mfu = self.meter.read()
        sec_per_step = self.tokens_per_step / tps if tps > 0 else None
        eta = (total - step) * sec_per_step if sec_per_step else None
        norms = {k: v.item() for k, v in out.layer_norms.items()} if out.layer_norms else None
        self.files.train_record(loss, lr, grad_norm, tps, mfu, norms)
        self.reporter.step(StepStats(step, total, loss, lr, grad_norm, tps, mfu, tokens, eta, elapsed))

    # ------------------------------------------------------------------ evaluation and samples

    def evaluate(self) -> float:
        """Mean validation loss (``eval_tokens`` targets, or the whole split)."""
        return self.evaluation.loss()

    def _evaluate(self) -> None:
        if self.evaluation.record(self.evaluate()):
            self._save("best")
        self.evaluation.sample()
        self.files.update()

    def generate_sample(self, prompt: str = "The history of", max_tokens: int = 50, **kwargs: Any) -> str:
        """A completion of ``prompt`` by the current model (``lmforge.eval.generate.generate`` options
        as keyword arguments: temperature, top_k, top_p, greedy, seed ...)."""
        from lmforge.eval.generate import generate

        kwargs.setdefault("dtype", self.dtype)
        return generate(self.model, self.tokenizer, prompt, max_tokens=max_tokens, **kwargs)[0]

    # ------------------------------------------------------------------ checkpoints

    def _save(self, kind: str) -> Path | None:
        """Save a checkpoint; called on every rank (at the same steps), written by rank 0."""
        self.files.check_present()  # a removed run directory is not recreated by a save
        path = self.checkpoints.save(kind)
        if path is not None:
            self.reporter.checkpoint(kind, path, self.progress.step)
            self.files.update()
        return path

    def _periodic_checkpoints(self) -> None:
        c, step = self.config.checkpoint, self.progress.step
        if step == self.config.train.steps:
            return  # the end-of-run full checkpoint follows
        if c.full_interval and step % c.full_interval == 0:
            self._save("full")
        elif c.light_interval and step % c.light_interval == 0:
            self._save("light")

    def _restore(self, path: Path, *, resume: bool = True) -> None:
        saved_world = self.checkpoints.load(path, resume=resume)
        if resume and saved_world != self.world_size:
            self.reporter.warning(
                f"resuming a {saved_world}-process checkpoint on {self.world_size} process(es): "
                f"{self.tokens_per_step:,} tokens per step from now on"
            )

    def _roll_back_to(self, path: Path) -> tuple[int, int]:
        self._restore(path, resume=False)
        return self.progress.step, self.progress.tokens

    # ------------------------------------------------------------------ run directory

    def _open_run(self) -> None:
        from lmforge.observe.wandb_logger import new_run_id

        if self.resume_dir is not None:
            # a second trainer of this run stops here, before it loads anything; the refusal,
            # made on rank 0, stops every rank (not leaving the others in the next collective)
            dist.on_main(self.files.lock)
            skipped: list[str] = []
            latest = dist.broadcast_object(latest_full(self.run_dir, skipped))
            for warning in skipped:  # never go back to an older checkpoint without a word
                self.reporter.warning(f"{warning}; resuming from {latest.path.name}")
            self._restore(latest.path)
            self.resumed_from_step = self.progress.step
            changed = self.schedule.resume_warning(self.state.loaded_schedule, self.progress.step)
            if changed:
                self.reporter.warning(changed)
            self.files.reopen()
        else:
            dist.on_main(self.files.create)
        p = self.progress
        p.wandb_id = p.wandb_id or self.files.stored_wandb_id() or new_run_id()
        # device_type: what pad_vocab_multiple = 0 ("auto") became (`runs show` compares with it)
        record = {
            "dataset": self.dataset.name,
            "tokenizer": self.tokenizer_identity,
            "device_type": self.device.type,
        }
        self.files.open(self.config, record, on_warning=self.reporter.warning)
        # per-layer gradient norms (for W&B) are a collective under FSDP: all ranks must agree
        self._layer_norms_wanted = dist.broadcast_object(self.files.logger.wants_layer_norms)

    def _start_info(self) -> dict[str, Any]:
        multi = f" x{self.world_size} ({self.strategy})" if self.world_size > 1 else ""
        self._estimate = self._estimate_time() if self.is_main else None
        return {
            "run": self.run_name,
            "run_dir": str(self.run_dir),
            "dataset": self.dataset.name,
            # the total, as `ckpt show` and `train --dry-run` count it (padded rows left out)
            "parameters": self.model.get_num_params(non_embedding=False),
            "estimate": self._estimate.describe() if self._estimate else None,
            "estimate_s": self._estimate.seconds if self._estimate else None,
            "param_groups": self.param_counts.to_dict(),
            "device": str(self.device) + multi,
            "world_size": self.world_size,
            "strategy": self.strategy,
            "dtype": self.dtype,
            "dtype_reason": self.dtype_reason,
            "compile": self.compiled,
            "compile_reason": self.compile_reason,
            "tokens_per_step": self.tokens_per_step,
            "total_steps": self.config.train.steps,
            "resumed_from_step": self.resumed_from_step,
            "init_from": str(self.init_from) if self.init_from else None,
            "wandb": self.files.logger.mode,
        }

    def _estimate_time(self):
        """The time of the steps still to train, from FLOPs and a quick speed measurement."""
        from lmforge.device import measure_matmul_flops
        from lmforge.train.estimate import estimate_time

        c = self.config
        flops_per_step = self.model.flops_per_token(c.model.block_size) * c.tokens_per_step
        return estimate_time(
            flops_per_step,
            c.train.steps - self.progress.step,
            self.device.type,
            lambda: measure_matmul_flops(self.device, self.dtype),
            dtype=self.dtype,
        )

    def _compile_failed(self, exc: Exception) -> torch.nn.Module:
        """The first compiled step raised: warn once and train the plain module from now on."""
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        self.reporter.warning(
            f"torch.compile failed ({type(exc).__name__}: {first}); training without compilation "
            "(--compile off skips the attempt)"
        )
        self.compiled, self.compile_reason = False, f"compilation failed: {type(exc).__name__}"
        return self.model

    def _announce_signal(self, signum: int, first: bool) -> None:
        """Said the moment a signal arrives (from the signal watcher's thread), not after the step."""
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        if first:
            again = "Ctrl-C" if signum == signal.SIGINT else name
            self.reporter.warning(
                f"{name}: stopping after this step (a full checkpoint will be saved) — {again} again "
                "to abort without saving"
            )
        else:
            self.reporter.warning(f"{name} again: aborting now, without saving a checkpoint")

    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Ask the loop to stop after the current step, as Ctrl-C does (for callers and tests)."""
        self._stop_signal = signum
