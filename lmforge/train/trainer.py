"""The training loop: ``TrainingManager(config).train()``, one optimizer step at a time.

One step reads top to bottom in ``_loop`` and ``train_step``: the schedule's learning rate,
the micro-batches' forward and backward and the update (``lmforge.train.step``), then what
follows it as ``lmforge.train.recovery`` decides (go on, skip, roll back, stop); around it,
logging, evaluation with a text sample (``lmforge.train.evaluation``), checkpoints
(``lmforge.train.state``) and the run's files and W&B (``lmforge.train.run_files``).
Set-up first: ``lmforge.train.run_spec`` decides what the run is, ``Hardware`` where it
computes, and ``lmforge.train.build`` makes its parts. Progress goes to a ``Reporter``
(``lmforge.observe.reporting``) that the caller chooses; the loop itself prints nothing.

Multi-process (``torchrun``; see ``lmforge.distributed``): every rank builds the
same model from the same seed, which is then wrapped for DDP or sharded with
FSDP2; each rank takes its slice of every global batch (the global order does
not depend on the number of processes). Rank 0 alone writes files and reports.
Ranks agree once per optimizer step (inside the update, after the next step's batches
are fetched: ``lmforge.train.batches``) on whether it was finite and whether any of them
received a stop signal; everything else that decides what
happens next (logging, evaluation, checkpoints) depends on the step number only, so
every rank takes the same path through the loop. Checkpoints hold the full
(unsharded) state plus every rank's RNG state.

May import every other part of lmforge but the CLI.
"""

from __future__ import annotations

import math
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
from lmforge.errors import LmforgeError, UsageError
from lmforge.observe.reporting import EvalStats, Reporter, StepStats, TrainResult
from lmforge.train import build
from lmforge.train.batches import StepBatches
from lmforge.train.evaluation import Evaluation
from lmforge.train.hardware import Hardware
from lmforge.train.recovery import DIVERGED_HINT, Recovery
from lmforge.train.run_files import RunFiles
from lmforge.train.run_spec import RunSpec, check_run_start, pad_vocab, replaced_by_data, resolve_run
from lmforge.train.schedule import build_schedule
from lmforge.train.signals import announce_signal, stop_on_signals
from lmforge.train.state import Checkpointer, RunProgress, TrainingState
from lmforge.train.step import Batch, StepOutcome
from lmforge.units import plural
from lmforge.workspace import RunDir, Workspace

# Per-layer gradient norms go to W&B at this multiple of the log interval.
LAYER_NORM_EVERY = 10


class TrainingManager:
    """Trains a GPT on a prepared dataset in a run directory of the workspace.

    ``resume`` (a run name, ``"latest"`` or a run directory) continues a run from its
    newest full checkpoint; ``config`` then defaults to the run's own. ``init_from`` (a
    checkpoint name or path) starts a new run from a checkpoint's weights, with the
    checkpoint's architecture. ``spec`` (from ``lmforge.train.run_spec.resolve_run``, as the
    CLI makes it) replaces all three. ``reporter`` receives the progress (plain lines on
    stderr when not given).

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
        spec: RunSpec | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if spec is not None and (config is not None or resume is not None or init_from is not None):
            raise TypeError("pass either spec, or config/resume/init_from")
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
        rank = group.rank if rank is None else rank
        world_size = group.world_size if world_size is None else world_size
        self.reporter = reporter if rank == 0 else Reporter()

        # --- what to train (decided on rank 0: it is about to change the run's files)
        if spec is None:
            spec = dist.on_main(lambda: resolve_run(ws, config, resume=resume, init_from=init_from))
        self.dataset = open_dataset(ws, spec.config.data.name)
        chosen = spec
        spec = dist.on_main(lambda: check_run_start(ws, chosen, self.dataset))
        config = self.config = spec.config
        self.resume_dir, self.init_from = spec.resume_dir, spec.init_from
        self.start_warnings = replaced_by_data(chosen.config, spec.config, self.dataset.name) + spec.warnings
        self.run_name = config.run
        self.run_dir = self.resume_dir or ws.run_dir(config.run)

        # --- where it computes: device, precision, strategy
        if config.train.threads > 0:
            torch.set_num_threads(config.train.threads)
        self.hw = Hardware.resolve(
            config, rank=rank, world_size=world_size, local_rank=group.local_rank, cache_dir=ws.cache_dir
        )
        config.model = pad_vocab(config.model, self.hw.device.type, resumed=self.resume_dir is not None)
        if self.hw.device.type == "cuda":
            from lmforge.device import enable_tf32

            enable_tf32()  # TF32 for the fp32 matmuls that remain, through one API (device.py)

        # --- the components: data loader, model with optimizer and step, schedule, throughput meter
        self.loader = build.make_train_loader(config, self.dataset, self.hw)
        self.batches = StepBatches(self.loader, config.train.grad_accum, self.hw.to_device)
        built = build.make_model_and_step(config, self.hw, init_from=self.init_from, cache_dir=ws.cache_dir)
        self.model, self.optimizer, self.stepper = built.model, built.optimizer, built.step
        self.param_counts = built.param_counts
        self.compiled, self.compile_reason = built.compiled, built.compile_reason
        self.schedule = build_schedule(config.optim, config.train.steps)
        self.meter = build.make_throughput_meter(self.model, config, self.hw)

        # --- the run's state, files, checkpoints, bad-step policy and evaluation
        # (the run directory is created in train())
        self.progress = RunProgress()
        self.files = RunFiles(RunDir(self.run_dir), self.progress, enabled=self.hw.is_main)
        self.recovery = Recovery(config.train.max_bad_steps, self.progress.bad_steps)
        self.state = TrainingState(
            self.model, self.optimizer, self.stepper.scaler, self.schedule, self.batches, self.progress
        )
        meta = {
            "config": config.to_dict(),
            "tokenizer": dict(self.dataset.tokenizer_identity),
            "dataset": self.dataset.name,
        }
        self.checkpoints = Checkpointer(self.state, self.files.run, config, self.hw, meta)
        self.evaluation = Evaluation(
            self.model, self.dataset, config, self.hw, compiled=self.compiled, workspace=ws
        )
        self.resumed_from_step: int | None = None
        self._stop_signal: int | None = None
        self._agreed_stop: int | None = None  # several processes: the signal all ranks stop on
        self._estimate = None  # lmforge.train.estimate.TimeEstimate, made at the start of train()
        self._layer_norms_wanted = False
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
        return self.config.tokens_per_step * self.hw.world_size

    @property
    def device(self) -> torch.device:
        return self.hw.device

    @property
    def dtype(self) -> str:
        return self.hw.dtype

    def next_batches(self) -> list[Batch]:
        """The ``grad_accum`` micro-batches of the next step, already on their way to the device."""
        return self.batches.next()

    # ------------------------------------------------------------------ the loop

    def train(self) -> TrainResult:
        """Train to ``config.train.steps`` (or an interruption, or early stopping)."""
        with stop_on_signals(
            self.request_stop, lambda: self._stop_signal is not None, announce_signal(self.reporter.warning)
        ):
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
        total, log_every = cfg.train.steps, cfg.logging.log_interval
        t_start = time.perf_counter()
        tokens_at_start = p.tokens
        stop_reason = "steps"
        self._report_start()
        self.meter.reset()
        probe_pending = True  # one evaluation batch after the first step (see below)

        while p.step < total:
            lr = self.schedule(p.step)
            will_log = (p.step + 1) % log_every == 0 or p.step + 1 in (1, total)
            layer_norms = (
                will_log and self._layer_norms_wanted and (p.step + 1) % (log_every * LAYER_NORM_EVERY) == 0
            )
            # the next step's batches are fetched during this one (the last step has none)
            out = self.train_step(self.next_batches(), lr, layer_norms, prefetch=p.step + 1 < total)
            self._agreed_stop = out.stop_signal
            # a bad step may be the one that calls for a rollback: where to (the same on every rank)
            latest = dist.broadcast_object(self.checkpoints.latest_full()) if out.status == "bad" else None
            decision = self.recovery.decide(out, p.step, p.tokens, latest)
            self._note(decision.record, decision.warning)
            if decision.action == "continue":
                p.step += 1
                p.tokens += self.tokens_per_step
                self.meter.step(self.tokens_per_step)
                if will_log:
                    self._log_step(out, lr, total, time.perf_counter() - t_start)
                # tokens/s and MFU count training steps only: the meter is paused around the rest
                if p.step % cfg.train.eval_interval == 0:
                    with self.meter.paused():
                        self._evaluate()
                    if cfg.train.patience and p.evals_since_best >= cfg.train.patience:
                        stop_reason = "early_stopping"
                elif probe_pending and p.step < total:
                    # evaluation's memory beside the optimizer state (made by the first step): a
                    # misfit fails now, not at the first eval_interval
                    with self.meter.paused():
                        self.evaluation.probe()
                if probe_pending:  # every rank is past its start-up: collectives' step timeout from now on
                    dist.use_step_timeout()
                probe_pending = False
                with self.meter.paused():
                    self._periodic_checkpoints()
            elif decision.action == "roll_back":
                from_step = p.step
                self._restore(decision.checkpoint, resume=False)
                done = self.recovery.rolled_back(decision.checkpoint, from_step, p.step, p.tokens)
                self._note(done.record, done.warning)
            elif decision.action == "stop":
                raise LmforgeError(decision.error, DIVERGED_HINT)
            # one process: the signal as it arrives; several: the one the ranks agreed on in the step
            stop = self._stop_signal if self.hw.world_size == 1 else self._agreed_stop
            if stop is not None and p.step < total:  # after the last step there is nothing to stop
                stop_reason = "signal"
                where = " (by a rank)" if self.hw.world_size > 1 else ""
                self.reporter.warning(
                    f"{signal.Signals(stop).name} received{where}: saving a full checkpoint at step "
                    f"{p.step}, then stopping"
                )
            if stop_reason != "steps":
                break

        return self._end(stop_reason, t_start, p.tokens - tokens_at_start)

    def _end(self, stop_reason: str, t_start: float, tokens_trained: int) -> TrainResult:
        """The final validation and full checkpoint, and the run's result (timed from ``t_start``)."""
        p = self.progress
        if stop_reason == "steps" and p.last_eval_step != p.step:
            self._evaluate()  # the final validation loss
        final = (
            self._save("full")
            if self.checkpoints.last_full_step != p.step
            else self.checkpoints.latest_full()
        )
        elapsed = time.perf_counter() - t_start
        # the signal acted on: one that came after the last step (during the final evaluation or
        # save, say) was not, and the run finished (several processes: the one the ranks agreed on)
        acted_on = self._stop_signal if self.hw.world_size == 1 else self._agreed_stop
        self._stop_signal = acted_on if stop_reason == "signal" else None
        result = TrainResult(
            run=self.run_name,
            run_dir=self.run_dir,
            status="interrupted" if stop_reason == "signal" else "finished",
            stop_reason=stop_reason,
            step=p.step,
            total_steps=self.config.train.steps,
            tokens=p.tokens,
            elapsed_s=elapsed,
            tokens_per_sec=tokens_trained / max(elapsed, 1e-9),
            last_loss=self._last_loss,
            last_val_loss=p.last_val_loss,
            best_val_loss=p.best_val_loss,
            best_step=p.best_step,
            bad_steps=p.bad_steps.total,
            checkpoint=final,
            signal=self._stop_signal,
        )
        self.files.finished(result.status)
        self.reporter.end(result)
        return result

    def train_step(
        self, batches: list[Batch], lr: float, layer_norms: bool = False, *, prefetch: bool = False
    ) -> StepOutcome:
        """One optimizer step at ``lr`` over ``batches`` (its micro-batches): forward and backward
        of each, gradients averaged across ranks after the last; then clip, the finite check and
        the update (``TrainStep.update``: a step whose loss or gradients are not finite updates
        nothing and comes back ``"bad"``). ``prefetch``: fetch the next step's batches before the
        step's host sync (``next_batches`` gives them). The step counter is the loop's."""
        self.stepper.set_lr(lr)
        n, step = len(batches), self.progress.step + 1
        loss = torch.zeros((), device=self.hw.device)
        for i, (x, y) in enumerate(batches):
            loss += self.stepper.forward_backward(x, y, last=i == n - 1, accum=n)
            # no host sync: a step that takes minutes still shows progress
            self.reporter.micro_batch(step, self.config.train.steps, i + 1, n)
        out = self.stepper.update(
            loss,
            layer_norms=layer_norms,
            stop_signal=self._stop_signal,
            before_sync=self.batches.prefetch if prefetch else None,
        )
        if out.compile_error is not None:
            self._compile_failed(out.compile_error)
        return out

    def _note(self, record: dict[str, Any] | None, warning: str | None) -> None:
        if record is not None:
            self.files.metric(record)
        if warning is not None:
            self.reporter.warning(warning)

    def _log_step(self, out: StepOutcome, lr: float, total: int, elapsed: float) -> None:
        # the mean over ranks (the gradient norm is global already); .item(): device-to-host syncs,
        # at logging steps only
        loss_t = dist.all_reduce_mean(out.loss.clone()) if self.hw.world_size > 1 else out.loss
        loss, grad_norm = loss_t.item(), out.grad_norm.item()
        self._last_loss = loss
        step, tokens = self.progress.step, self.progress.tokens
        tps, mfu = self.meter.read()
        sec_per_step = self.tokens_per_step / tps if tps > 0 else None
        eta = (total - step) * sec_per_step if sec_per_step else None
        norms = {k: v.item() for k, v in out.layer_norms.items()} if out.layer_norms else None
        self.files.train_record(loss, lr, grad_norm, tps, mfu, norms)
        self.reporter.step(StepStats(step, total, loss, lr, grad_norm, tps, mfu, tokens, eta, elapsed))

    def _compile_failed(self, exc: Exception) -> None:
        """The first compiled step raised; the step trains the plain module from now on."""
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        self.reporter.warning(
            f"torch.compile failed ({type(exc).__name__}: {first}); training without compilation "
            "(--compile off skips the attempt)"
        )
        self.compiled, self.compile_reason = False, f"compilation failed: {type(exc).__name__}"

    # ------------------------------------------------------------------ evaluation and samples

    def evaluate(self) -> float:
        """Mean validation loss (``eval_tokens`` targets, or the whole split)."""
        return self.evaluation.loss()

    def _evaluate(self) -> None:
        """Validation (recorded; the best so far saved as ``best``), then a text sample."""
        p = self.progress
        val_loss = self.evaluate()
        improved = p.add_eval(val_loss)
        val_ppl = math.exp(min(val_loss, 700.0))
        self.files.eval_record(val_loss, val_ppl)
        best = p.best_val_loss if p.best_val_loss is not None else val_loss
        self.reporter.evaluation(
            EvalStats(p.step, val_loss, val_ppl, best, p.best_step or p.step, improved, p.evals_since_best)
        )
        if improved:
            self._save("best")
        try:
            text = self.evaluation.sample(p.step)
        except LmforgeError as exc:
            self.reporter.warning(f"text samples are off: {exc}")
            text = None
        if text is not None:
            prompt = self.config.logging.sample_prompt
            self.files.sample(prompt, text)
            self.reporter.sample(p.step, prompt, text)
        self.files.update()

    def generate_sample(self, prompt: str = "The history of", max_tokens: int = 50, **kwargs: Any) -> str:
        """A completion of ``prompt`` by the current model (``lmforge.eval.generate.generate`` options
        as keyword arguments: temperature, top_k, top_p, greedy, seed ...)."""
        return self.evaluation.generate(prompt, max_tokens, **kwargs)

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
        if resume and self.checkpoints.rng_warning:  # once: a rollback is to this run's own GPUs
            self.reporter.warning(self.checkpoints.rng_warning)
        if resume and saved_world != self.hw.world_size:
            self.reporter.warning(
                f"resuming a {saved_world}-process checkpoint on "
                f"{plural(self.hw.world_size, 'process', 'processes')}: "
                f"{self.tokens_per_step:,} tokens per step from now on"
            )

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
            "tokenizer": dict(self.dataset.tokenizer_identity),
            "device_type": self.hw.device.type,
        }
        self.files.open(self.config, record, on_warning=self.reporter.warning)
        # per-layer gradient norms (for W&B) are a collective under FSDP: all ranks must agree
        self._layer_norms_wanted = dist.broadcast_object(self.files.logger.wants_layer_norms)

    def _report_start(self) -> None:
        """What the run is and will cost, and the warnings of its set-up."""
        self._estimate = self._estimate_time() if self.hw.is_main else None
        self.reporter.start(self._start_info())
        for message in self.start_warnings:
            self.reporter.warning(message)
        advice = self._estimate.advice(self.config.preset) if self._estimate else None
        if advice:
            self.reporter.warning(advice)

    def _start_info(self) -> dict[str, Any]:
        hw = self.hw
        multi = f" x{hw.world_size} ({hw.strategy})" if hw.world_size > 1 else ""
        return {
            "run": self.run_name,
            "run_dir": str(self.run_dir),
            "dataset": self.dataset.name,
            # the total, as `ckpt show` and `train --dry-run` count it (padded rows left out)
            "parameters": self.model.get_num_params(non_embedding=False),
            "estimate": self._estimate.describe() if self._estimate else None,
            "estimate_s": self._estimate.seconds if self._estimate else None,
            "param_groups": self.param_counts.to_dict(),
            "device": str(hw.device) + multi,
            "world_size": hw.world_size,
            "strategy": hw.strategy,
            "dtype": hw.dtype,
            "dtype_reason": hw.dtype_reason,
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
            self.hw.device.type,
            lambda: measure_matmul_flops(self.hw.device, self.hw.dtype),
            dtype=self.hw.dtype,
        )

    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Ask the loop to stop after the current step, as Ctrl-C does (for callers and tests)."""
        self._stop_signal = signum
