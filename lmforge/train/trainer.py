"""The training loop: ``TrainingManager(config).train()``.

One optimizer step is ``grad_accum`` micro-batches of ``batch_size`` windows,
forward under autocast (bf16, or fp16 with a GradScaler, or plain fp32),
backward, clip, AdamW. Around it: the learning-rate schedule
(``lmforge.train.schedule``), periodic evaluation with a text sample, checkpoints
(``lmforge.checkpoint.store``), metrics files and W&B (``lmforge.runs.record``,
``lmforge.observe.wandb_logger``), and progress through a ``Reporter``
(``lmforge.observe.reporting``) that the caller chooses. The loop itself prints nothing.

A step whose loss or gradient is not finite is skipped: weights, optimizer,
schedule and step counter stay as they were (the batch is consumed). After
``max_bad_steps`` such steps in a row the run rolls back to its newest full
checkpoint (weights, optimizer, RNG; the data position moves on past the bad
batches, as PaLM did for loss spikes) or, without one, stops with an error.

Multi-process (``torchrun``; see ``lmforge.distributed``): every rank builds the
same model from the same seed, which is then wrapped for DDP or sharded with
FSDP2; each rank takes its slice of every global batch (the global order does
not depend on the number of processes). Rank 0 alone writes files and reports.
Ranks agree once per optimizer step, in one small all-reduce, on whether the
step was finite and whether any of them received a stop signal; everything
else that decides what happens next (logging, evaluation, checkpoints) depends
on the step number only, so every rank takes the same path through the loop.
Checkpoints hold the full (unsharded) state plus every rank's RNG state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from lmforge import distributed as dist
from lmforge.checkpoint import store as ckpt
from lmforge.config import ModelConfig, TrainingConfig
from lmforge.errors import LmforgeError, UsageError
from lmforge.observe.reporting import EvalStats, Reporter, StepStats, TrainResult
from lmforge.observe.throughput import ThroughputMeter
from lmforge.runs.record import (
    CONFIG_FILE,
    METRICS_FILE,
    SAMPLES_FILE,
    JsonlWriter,
    RunRecord,
    truncate_after,
)
from lmforge.train.rng import restore_rank_rng
from lmforge.train.signals import stop_on_signals
from lmforge.train.step import StepOutcome, TrainStep
from lmforge.workspace import Workspace

# Rollbacks to the last full checkpoint before a diverging run is given up.
MAX_ROLLBACKS = 3
# Per-layer gradient norms go to W&B at this multiple of the log interval.
LAYER_NORM_EVERY = 10
_DEFAULT_VOCAB = ModelConfig().vocab_size
# Token-embedding rows are padded to a multiple of this on CUDA (pad_vocab_multiple = 0, "auto").
CUDA_VOCAB_MULTIPLE = 64


class TrainingManager:
    """Trains a GPT on a prepared dataset in a run directory of the workspace.

    ``resume`` (a run name, ``"latest"`` or a run directory) continues a run from its
    newest full checkpoint; ``config`` then defaults to the run's own. ``init_from`` (a
    checkpoint name or path) starts a new run from a checkpoint's weights, with the
    checkpoint's architecture. ``reporter`` receives the progress (plain lines on stderr
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
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        from lmforge.data.dataset import TrainLoader, make_dataset
        from lmforge.data.store import check_tokenizer_match, open_dataset
        from lmforge.device import TORCH_DTYPES, peak_flops, resolve_device, resolve_dtype
        from lmforge.model.gpt import GPT
        from lmforge.train.optim import build_optimizer
        from lmforge.train.rng import derive_seed, seed_everything
        from lmforge.train.schedule import CosineSchedule
        from lmforge.train.setup import (
            check_new_run,
            check_not_running,
            generate_run_name,
            resume_config,
        )

        if reporter is None:
            from lmforge.observe.dashboard import PlainReporter

            reporter = PlainReporter()
        if resume is not None and init_from is not None:
            raise UsageError("--resume and --init-from cannot be used together", "pick one")
        self.workspace = workspace if isinstance(workspace, Workspace) else Workspace.resolve(workspace)
        group = dist.current()
        if rank is None and world_size is None and dist.launched_by_torchrun() and not dist.is_initialized():
            if int(os.environ["WORLD_SIZE"]) > 1:
                raise UsageError(
                    "launched by torchrun, but torch.distributed is not initialised",
                    "call lmforge.distributed.init_distributed(device_type) first (`lmforge train` does)",
                )
        rank = group.rank if rank is None else rank
        world_size = group.world_size if world_size is None else world_size
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0
        self.reporter = reporter if self.is_main else Reporter()

        # --- which run, with which config (decided on rank 0: it is about to change those files)
        self.resume_dir: Path | None = None
        if resume is not None:

            def resume_dir() -> Path:
                path = self._resolve_run(resume)
                check_not_running(path)
                return path

            self.resume_dir = dist.on_main(resume_dir)
            config = resume_config(self.resume_dir) if config is None else self._check_resume(config)
        config = dataclasses.replace(config) if config is not None else TrainingConfig()
        config = TrainingConfig.from_dict(config.to_dict())  # a private, validated copy

        # --- data and tokenizer
        self.dataset = open_dataset(self.workspace, config.data.name)
        self.tokenizer_identity = dict(self.dataset.tokenizer_identity)
        config.tokenizer = self.tokenizer_identity.get("name", config.tokenizer)
        self.init_from: Path | None = None
        init_meta: dict[str, Any] | None = None
        if init_from is not None:
            self.init_from = self._resolve_checkpoint(init_from)
            init_meta = ckpt.read_meta(self.init_from)
            check_tokenizer_match(
                self.tokenizer_identity, init_meta.get("tokenizer") or {}, f"checkpoint {self.init_from}"
            )
            init_config = TrainingConfig.from_dict(init_meta["config"])
            config.model = dataclasses.replace(
                init_config.model,
                dropout=config.model.dropout,
                gradient_checkpointing=config.model.gradient_checkpointing,
            )
        if self.resume_dir is not None:
            recorded = RunRecord.read(self.resume_dir).get("tokenizer")
            if recorded:
                check_tokenizer_match(self.tokenizer_identity, recorded, f"run {self.resume_dir.name}")
        config.model = self._resolve_vocab(config.model, init_meta is not None or self.resume_dir is not None)

        # --- the run directory (created in train(); nothing is written before)
        if self.resume_dir is not None:
            name = self.resume_dir.name
            self._check_resume_point(config)
        else:
            # generated names hold a timestamp: rank 0's is the one every rank uses
            def new_name() -> str:
                name = config.run or generate_run_name(self.workspace, config)
                return check_new_run(self.workspace, name).name

            name = dist.on_main(new_name)
        config.run = name
        self.config = config
        self.run_name = name
        self.run_dir = self.resume_dir or self.workspace.run_dir(name)

        # --- device, precision
        t = config.train
        if t.threads > 0:
            torch.set_num_threads(t.threads)
        self.device = resolve_device(t.device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", group.local_rank)  # one GPU per process
        self.dtype = resolve_dtype(t.dtype, self.device)
        self.strategy = t.strategy if world_size > 1 else "single"
        if self.strategy == "fsdp" and self.dtype == "fp16":
            raise UsageError(
                "--strategy fsdp does not support --dtype fp16 (its loss scaler sees only local shards)",
                "use --dtype bf16 (or fp32), or --strategy ddp",
            )
        if config.model.pad_vocab_multiple == 0 and self.resume_dir is None:
            multiple = CUDA_VOCAB_MULTIPLE if self.device.type == "cuda" else 1
            config.model = dataclasses.replace(config.model, pad_vocab_multiple=multiple)
        if self.device.type == "cuda":
            # TF32 tensor cores for the fp32 matmuls that remain (Ampere+): ~8x faster, 10-bit mantissa
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        # fp16 needs loss scaling against underflowing gradients; bf16 has fp32's range and does not
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == "fp16")

        # --- data loader
        train_tokens = self.dataset.tokens("train")
        self.val_tokens = self.dataset.tokens("validation")
        block = config.model.block_size
        train_set = make_dataset(
            train_tokens, block, config.data.stride, config.data.sampling, t.seed, split="train"
        )
        self.loader = TrainLoader(
            train_set,
            t.batch_size,
            seed=t.seed,
            rank=rank,
            world_size=world_size,
            num_workers=config.data.num_workers,
            pin_memory=self.device.type == "cuda",
        )

        # --- model and optimizer
        seed_everything(t.seed)  # the same initial weights on every rank
        self.model = GPT(config.model)
        if self.init_from is not None:
            ckpt.load_weights(self.model, ckpt.load_state_dict(self.init_from), where=self.init_from)
        self.model.to(self.device)
        if rank > 0:
            # dropout masks of their own; rank 0 goes on as a single process would
            seed_everything(derive_seed(t.seed, 0, rank))
        self.compiled = t.compile == "on" or (t.compile == "auto" and self.device.type == "cuda")
        train_model = self._parallelize()  # FSDP shards in place: before the optimizer sees the parameters
        self.optimizer, self.param_counts = build_optimizer(self.model, config.optim, self.device)
        self.train_step = TrainStep(
            self.model,
            self.optimizer,
            self.scaler,
            train_model=train_model,
            device=self.device,
            autocast_dtype=TORCH_DTYPES[self.dtype] if self.dtype != "fp32" else None,
            max_grad_norm=config.optim.max_grad_norm,
            world_size=world_size,
            sharded=self.strategy == "fsdp",
        )
        self.schedule = CosineSchedule(
            config.optim.lr, config.optim.min_lr, config.optim.warmup_steps, t.steps
        )
        # tokens/s are counted over all ranks, so MFU is against the peak of all their devices
        peak = peak_flops(self.device, self.dtype)
        self.meter = ThroughputMeter(self.model.flops_per_token(block), peak * world_size if peak else None)

        # --- training state (what a full checkpoint holds besides weights and optimizer)
        self.step = 0
        self.tokens = 0
        self.best_val_loss: float | None = None
        self.best_step: int | None = None
        self.last_val_loss: float | None = None
        self.last_eval_step: int | None = None
        self.evals_since_best = 0
        self.bad_streak = 0
        self.bad_total = 0
        self.rollbacks = 0
        self.wandb_id: str | None = None
        self.resumed_from_step: int | None = None

        self._stop_signal: int | None = None
        self._agreed_stop: int | None = None  # several processes: the signal all ranks stop on
        self._last_full_step: int | None = None  # in memory: every rank must agree, files may lag
        self._layer_norms_wanted = False
        self._tokenizer = None
        self._samples_ok = config.logging.sample_tokens > 0
        self._metrics: JsonlWriter | None = None
        self._samples: JsonlWriter | None = None
        self._record: RunRecord | None = None
        self._logger = None
        self._last_loss: float | None = None
        dist.barrier()  # every rank has read what it needs before rank 0 starts writing

    # ------------------------------------------------------------------ set-up helpers

    def _parallelize(self) -> nn.Module:
        """The module the training steps run: ``self.model`` compiled, wrapped in DDP, or sharded
        in place with FSDP2. ``self.model`` stays the ``GPT`` that evaluation, samples and
        checkpoints use (sharing its parameters; no "_orig_mod." or "module." prefixes)."""
        if self.strategy == "fsdp":
            if self.compiled:
                dist.apply_compile(self.model, whole=False)
            bf16 = torch.bfloat16 if self.dtype == "bf16" else None
            return dist.apply_fsdp(self.model, mixed_precision=bf16)
        model = dist.apply_compile(self.model) if self.compiled else self.model
        if self.strategy == "ddp":
            model = dist.apply_ddp(model, self.device)
        return model

    def _resolve_run(self, spec: str | Path) -> Path:
        path = Path(spec)
        if isinstance(spec, Path) or (path.is_dir() and (path / CONFIG_FILE).is_file()):
            return path.resolve()
        from lmforge.runs.names import resolve_run

        return resolve_run(self.workspace, str(spec))

    def _resolve_checkpoint(self, spec: str | Path) -> Path:
        if isinstance(spec, Path):
            return spec
        from lmforge.runs.names import resolve_checkpoint

        return resolve_checkpoint(self.workspace, spec)

    def _check_resume(self, config: TrainingConfig) -> TrainingConfig:
        """A caller's own config for a resumed run: only the non-architecture fields may differ."""
        from lmforge.train.setup import FIXED_ON_RESUME, architecture_diff, config_diff, resume_config

        saved = resume_config(self.resume_dir)
        changed = architecture_diff(saved, config) + config_diff(
            saved.to_dict(), config.to_dict(), FIXED_ON_RESUME
        )
        if changed:
            raise UsageError(
                f"cannot resume run {saved.run!r} with a different architecture, tokenizer or data: "
                + "; ".join(changed),
                "resume with the run's own config (config=None), or start a new run with init_from",
            )
        # padding is part of the saved optimizer state's shapes: the run keeps its own
        model = dataclasses.replace(config.model, pad_vocab_multiple=saved.model.pad_vocab_multiple)
        config = dataclasses.replace(config, run=saved.run, model=model)
        return config

    def _check_resume_point(self, config: TrainingConfig) -> None:
        latest = ckpt.latest_full(self.resume_dir)
        if latest is None:
            raise UsageError(
                f"run {self.resume_dir.name!r} has no full checkpoint to resume from",
                "it stopped before its first full checkpoint; start a new run (--init-from "
                f"{self.resume_dir.name}:latest uses its newest weights)",
            )
        if latest.step >= config.train.steps:
            raise UsageError(
                f"run {self.resume_dir.name!r} is already at step {latest.step} of {config.train.steps}",
                f"raise --steps above {latest.step} to train further",
            )

    def _resolve_vocab(self, model: ModelConfig, fixed: bool) -> ModelConfig:
        """The model's vocabulary comes from the dataset's tokenizer. A larger one is kept
        (e.g. 50304, padded for faster matmuls); a smaller one cannot embed the data."""
        data_vocab = int(self.dataset.vocab_size)
        vocab = model.vocab_size
        if not fixed and vocab == _DEFAULT_VOCAB:
            return dataclasses.replace(model, vocab_size=data_vocab)
        if vocab < data_vocab:
            where = "the checkpoint's" if fixed else "--vocab-size"
            raise UsageError(
                f"{where} vocabulary of {vocab} is smaller than the {data_vocab} token ids of "
                f"dataset '{self.dataset.name}'",
                "leave --vocab-size unset (it comes from the data), or use data of the model's tokenizer",
            )
        return model

    @property
    def tokenizer(self):
        """The dataset's tokenizer (loaded on first use, for samples)."""
        if self._tokenizer is None:
            from lmforge.data.tokenizer import tokenizer_from_identity

            self._tokenizer = tokenizer_from_identity(self.tokenizer_identity, workspace=self.workspace)
        return self._tokenizer

    @property
    def tokens_per_step(self) -> int:
        return self.config.tokens_per_step * self.world_size

    # ------------------------------------------------------------------ one optimizer step

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
        with stop_on_signals(self.request_stop, lambda: self._stop_signal is not None):
            try:
                self._open_run()
                result = self._loop()
            except BaseException as exc:
                self._fail(exc)
                raise
            finally:
                self._close()
        return result

    def _loop(self) -> TrainResult:
        cfg = self.config
        total = cfg.train.steps
        log_every = cfg.logging.log_interval
        t_start = time.perf_counter()
        tokens_at_start = self.tokens
        stop_reason = "steps"
        self.reporter.start(self._start_info())
        self.meter.reset()

        while self.step < total:
            lr = self.schedule(self.step)
            will_log = (self.step + 1) % log_every == 0 or self.step + 1 in (1, total)
            layer_norms = (
                will_log
                and self._layer_norms_wanted
                and (self.step + 1) % (log_every * LAYER_NORM_EVERY) == 0
            )
            out = self.train_step(self.next_batches(), lr, layer_norms, self._stop_signal)
            self._agreed_stop = out.stop_signal
            if out.status != "ok":
                self._skipped_step(out)
            else:
                self.step += 1
                self.tokens += self.tokens_per_step
                self.bad_streak = 0
                self.meter.step(self.tokens_per_step)
                if will_log:
                    self._log_step(out, lr, total, time.perf_counter() - t_start)
                if self.step % cfg.train.eval_interval == 0:
                    self._evaluate()
                    if cfg.train.patience and self.evals_since_best >= cfg.train.patience:
                        stop_reason = "early_stopping"
                self._periodic_checkpoints()
            # one process: the signal as it arrives; several: the one the ranks agreed on in the step
            stop = self._stop_signal if self.world_size == 1 else self._agreed_stop
            if stop is not None:
                stop_reason = "signal"
                where = " (by a rank)" if self.world_size > 1 else ""
                self.reporter.warning(
                    f"{signal.Signals(stop).name} received{where}: saving a full checkpoint at step "
                    f"{self.step}, then stopping"
                )
            if stop_reason != "steps":
                break

        if self.world_size > 1:
            self._stop_signal = self._agreed_stop  # a signal too late for the last step is not acted on
        if stop_reason == "steps" and self.last_eval_step != self.step:
            self._evaluate()  # the final validation loss
        final = self._save("full") if not self._has_full_at_step() else self._latest_full_path()
        elapsed = time.perf_counter() - t_start
        result = TrainResult(
            run=self.run_name,
            run_dir=self.run_dir,
            status="interrupted" if stop_reason == "signal" else "finished",
            stop_reason=stop_reason,
            step=self.step,
            total_steps=total,
            tokens=self.tokens,
            elapsed_s=elapsed,
            tokens_per_sec=(self.tokens - tokens_at_start) / max(elapsed, 1e-9),
            last_loss=self._last_loss,
            last_val_loss=self.last_val_loss,
            best_val_loss=self.best_val_loss,
            best_step=self.best_step,
            bad_steps=self.bad_total,
            checkpoint=final,
            signal=self._stop_signal,
        )
        self._update_record(status=result.status, ended_at=ckpt.now_iso())
        self._logger.summary(
            {"best_val_loss": self.best_val_loss, "best_step": self.best_step, "tokens": self.tokens}
        )
        self.reporter.end(result)
        return result

    def _log_step(self, out: StepOutcome, lr: float, total: int, elapsed: float) -> None:
        # the mean over ranks (the gradient norm is global already); .item(): device-to-host syncs,
        # at logging steps only
        loss_t = dist.all_reduce_mean(out.loss.clone()) if self.world_size > 1 else out.loss
        loss, grad_norm = loss_t.item(), out.grad_norm.item()
        self._last_loss = loss
        tps, mfu = self.meter.read()
        sec_per_step = self.tokens_per_step / tps if tps > 0 else None
        eta = (total - self.step) * sec_per_step if sec_per_step else None
        stats = StepStats(self.step, total, loss, lr, grad_norm, tps, mfu, self.tokens, eta, elapsed)
        self._write_metric(
            {
                "kind": "train",
                "step": self.step,
                "loss": loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens_per_sec": tps,
                "mfu": mfu,
                "tokens": self.tokens,
                "time": time.time(),
            }
        )
        wb = {
            "train/loss": loss,
            "train/ppl": math.exp(min(loss, 50.0)),
            "train/lr": lr,
            "train/grad_norm": grad_norm,
            "train/tokens_per_sec": tps,
            "train/tokens": self.tokens,
        }
        if mfu is not None:
            wb["train/mfu"] = mfu
        if out.layer_norms:
            wb.update({f"grad_norm/{k}": v.item() for k, v in out.layer_norms.items()})
        self._logger.log(wb, step=self.step)
        self.reporter.step(stats)

    def _skipped_step(self, out: StepOutcome) -> None:
        attempted = self.step + 1
        if out.status == "overflow":
            return  # fp16 loss scaling finding its level: normal, not a bad step
        self.bad_streak += 1
        self.bad_total += 1
        loss, grad_norm = out.loss.item(), out.grad_norm.item()
        limit = self.config.train.max_bad_steps
        self._write_metric(
            {
                "kind": "bad_step",
                "step": attempted,
                "loss": loss,
                "grad_norm": grad_norm,
                "consecutive": self.bad_streak,
                "tokens": self.tokens,
                "time": time.time(),
            }
        )
        self.reporter.warning(
            f"step {attempted}: non-finite loss ({loss}) or gradient norm ({grad_norm}); "
            f"step skipped, nothing updated ({self.bad_streak}/{limit} in a row)"
        )
        if self.bad_streak >= limit:
            self._roll_back()

    def _roll_back(self) -> None:
        latest = dist.broadcast_object(self._latest_full_path())
        what = (
            f"training diverged: {self.bad_streak} steps in a row had a non-finite loss or gradient "
            f"(at step {self.step + 1})"
        )
        hint = (
            "lower --lr, raise --warmup-steps or --max-bad-steps, or use --dtype bf16/fp32; "
            "resume from a checkpoint with --resume"
        )
        if latest is None:
            raise LmforgeError(f"{what}, and there is no full checkpoint to roll back to", hint)
        if self.rollbacks >= MAX_ROLLBACKS:
            raise LmforgeError(f"{what}, after {self.rollbacks} rollbacks to {latest}", hint)
        from_step = self.step
        self._restore(latest, resume=False)
        self.rollbacks += 1
        self.bad_streak = 0
        self._write_metric(
            {
                "kind": "rollback",
                "step": self.step,
                "from_step": from_step,
                "checkpoint": str(latest),
                "tokens": self.tokens,
                "time": time.time(),
            }
        )
        self.reporter.warning(
            f"rolled back to {latest} (step {self.step}); the data moves on past the bad batches "
            f"(rollback {self.rollbacks}/{MAX_ROLLBACKS})"
        )

    # ------------------------------------------------------------------ evaluation and samples

    def evaluate(self) -> float:
        """Mean validation loss (``eval_tokens`` targets, or the whole split)."""
        from lmforge.eval.evaluate import evaluate_tokens

        block = self.config.model.block_size
        with self._eager():
            result = evaluate_tokens(
                self.model,
                self.val_tokens,
                block_size=block,
                stride=min(self.config.data.stride, block),
                batch_size=self.config.train.batch_size,
                max_tokens=self.config.train.eval_tokens or None,
                device=self.device,
                dtype=self.dtype,
                rank=self.rank,
                world_size=self.world_size,
            )
        dist.reshard(self.model)
        return result.loss

    def _evaluate(self) -> None:
        val_loss = self.evaluate()
        self.last_val_loss, self.last_eval_step = val_loss, self.step
        improved = math.isfinite(val_loss) and (self.best_val_loss is None or val_loss < self.best_val_loss)
        if improved:
            self.best_val_loss, self.best_step, self.evals_since_best = val_loss, self.step, 0
        else:
            self.evals_since_best += 1
        val_ppl = math.exp(min(val_loss, 700.0))
        self._write_metric(
            {
                "kind": "eval",
                "step": self.step,
                "val_loss": val_loss,
                "val_ppl": val_ppl,
                "tokens": self.tokens,
                "time": time.time(),
            }
        )
        self._logger.log({"val/loss": val_loss, "val/ppl": val_ppl}, step=self.step)
        self.reporter.evaluation(
            EvalStats(
                self.step,
                val_loss,
                val_ppl,
                self.best_val_loss if self.best_val_loss is not None else val_loss,
                self.best_step or self.step,
                improved,
                self.evals_since_best,
            )
        )
        if improved:
            self._save("best")
        self._sample()
        self._update_record()

    def generate_sample(self, prompt: str = "The history of", max_tokens: int = 50, **kwargs: Any) -> str:
        """A completion of ``prompt`` by the current model (``lmforge.eval.generate.generate`` options
        as keyword arguments: temperature, top_k, top_p, greedy, seed ...)."""
        from lmforge.eval.generate import generate

        kwargs.setdefault("dtype", self.dtype)
        return generate(self.model, self.tokenizer, prompt, max_tokens=max_tokens, **kwargs)[0]

    def _eager(self) -> contextlib.AbstractContextManager:
        # FSDP compiles the blocks themselves, which evaluation and samples share (see dist.eager)
        return dist.eager() if self.strategy == "fsdp" and self.compiled else contextlib.nullcontext()

    def _sample(self) -> None:
        # An FSDP model's forward is a collective: every rank generates the same text (same seed),
        # for a fixed number of tokens (not stopping at end-of-text, which could differ by a bit)
        fsdp = self.strategy == "fsdp"
        if not self._samples_ok or not (self.is_main or fsdp):
            return
        prompt = self.config.logging.sample_prompt
        try:
            # a seed of its own: samples never touch the training RNG (exact resume)
            with self._eager():
                text = self.generate_sample(
                    prompt,
                    self.config.logging.sample_tokens,
                    seed=self.config.train.seed + self.step,
                    **({"stop_at_eot": False} if fsdp else {}),
                )
        except LmforgeError as exc:
            self._samples_ok = False
            self.reporter.warning(f"text samples are off: {exc}")
            return
        finally:
            dist.reshard(self.model)
        if self._samples is not None:
            self._samples.write({"step": self.step, "prompt": prompt, "text": text})
        self._logger.log_sample(self.step, prompt, text)
        self.reporter.sample(self.step, prompt, text)

    # ------------------------------------------------------------------ checkpoints

    def _trainer_state(self) -> dict[str, Any]:
        """Everything but the weights; called on every rank (collectives: the FSDP optimizer
        shards and the RNG states are gathered), meaningful on rank 0."""
        from lmforge.train.rng import get_rng_state

        rng = dist.gather_objects(get_rng_state())
        return {
            "optimizer": dist.full_optimizer_state(self.model, self.optimizer),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "step": self.step,
            "tokens": self.tokens,
            "schedule": self.schedule.state_dict(),
            "rng": rng[0],
            "rng_per_rank": rng,  # rank r resumes with rng_per_rank[r]
            "loader": self.loader.state_dict(),
            "wandb_id": self.wandb_id,
            "tokenizer": self.tokenizer_identity,
            "best_val_loss": self.best_val_loss,
            "best_step": self.best_step,
            "last_val_loss": self.last_val_loss,
            "last_eval_step": self.last_eval_step,
            "evals_since_best": self.evals_since_best,
            "bad_steps": {
                "consecutive": self.bad_streak,
                "total": self.bad_total,
                "rollbacks": self.rollbacks,
            },
            "world_size": self.world_size,
        }

    def _save(self, kind: str) -> Path | None:
        """Save a checkpoint; called on every rank (at the same steps), written by rank 0."""
        # FSDP: the weights are gathered from every rank's shards to rank 0 (a collective)
        weights = dist.full_model_state(self.model) if self.strategy == "fsdp" else self.model
        trainer_state = self._trainer_state() if kind == "full" else None
        if kind == "full":
            self._last_full_step = self.step
        if not self.is_main:
            return None
        name = "best" if kind == "best" else f"step-{self.step}"
        path = self.run_dir / "checkpoints" / name
        meta = {
            "kind": kind,
            "run": self.run_name,
            "step": self.step,
            "tokens": self.tokens,
            "val_loss": self.last_val_loss if self.last_eval_step == self.step else None,
            "config": self.config.to_dict(),
            "tokenizer": self.tokenizer_identity,
            "dataset": self.dataset.name,
        }
        ckpt.save_checkpoint(path, weights, meta, trainer_state)
        self.reporter.checkpoint(kind, path, self.step)
        if kind != "best":
            for old in ckpt.prunable(ckpt.list_checkpoints(self.run_dir), self.config.checkpoint.keep_last):
                shutil.rmtree(old.path, ignore_errors=True)
        self._update_record()
        return path

    def _periodic_checkpoints(self) -> None:
        c = self.config.checkpoint
        if self.step == self.config.train.steps:
            return  # the end-of-run full checkpoint follows
        if c.full_interval and self.step % c.full_interval == 0:
            self._save("full")
        elif c.light_interval and self.step % c.light_interval == 0:
            self._save("light")

    def _latest_full_path(self) -> Path | None:
        latest = ckpt.latest_full(self.run_dir)
        return latest.path if latest else None

    def _has_full_at_step(self) -> bool:
        return self._last_full_step == self.step

    def _restore(self, path: Path, *, resume: bool = True) -> None:
        """Load a full checkpoint: weights, optimizer, scaler, step, tokens and RNG; on ``resume``
        also the data position and the run's bookkeeping (best loss, bad-step counters). A rollback
        keeps the data moving and its own counters (so rollbacks stay bounded)."""
        state = ckpt.load_trainer_state(path)
        weights = ckpt.load_state_dict(path)
        if self.strategy == "fsdp":
            full = ckpt.pad_vocab_rows(weights, self.config.model.padded_vocab_size)
            full["lm_head.weight"] = full[ckpt.WTE_KEY]  # tied: the same tensor in the model
            dist.load_full_model_state(self.model, full)
        else:
            ckpt.load_weights(self.model, weights, where=path)
        dist.load_full_optimizer_state(self.model, self.optimizer, state["optimizer"])
        # the saved hyperparameters came along; the current config's win (e.g. a new --weight-decay)
        o = self.config.optim
        for group, decay in zip(self.optimizer.param_groups, (o.weight_decay, 0.0), strict=True):
            group.update(betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=decay)
            group["fused"] = self.device.type == "cuda" or None
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self._last_full_step = self.step
        restore_rank_rng(state, self.rank, seed=self.config.train.seed, step=self.step)
        if not resume:
            return
        saved_world = int(state.get("world_size") or 1)
        if saved_world != self.world_size:
            self.reporter.warning(
                f"resuming a {saved_world}-process checkpoint on {self.world_size} process(es): "
                f"{self.tokens_per_step:,} tokens per step from now on"
            )
        self.loader.load_state_dict(self.loader.position_from(state["loader"], saved_world))
        self.best_val_loss, self.best_step = state.get("best_val_loss"), state.get("best_step")
        self.last_val_loss, self.last_eval_step = state.get("last_val_loss"), state.get("last_eval_step")
        self.evals_since_best = int(state.get("evals_since_best", 0))
        bad = state.get("bad_steps") or {}
        self.bad_total, self.rollbacks = int(bad.get("total", 0)), int(bad.get("rollbacks", 0))
        self.wandb_id = state.get("wandb_id") or self.wandb_id

    # ------------------------------------------------------------------ run directory

    def _open_run(self) -> None:
        from lmforge.observe.wandb_logger import NullLogger, new_run_id

        if self.resume_dir is not None:
            latest = dist.broadcast_object(ckpt.latest_full(self.run_dir))
            self._restore(latest.path)
            self.resumed_from_step = self.step
            if self.is_main:
                ckpt.remove_stale_tmp(self.run_dir)
                # the steps after the checkpoint are trained again: their old records go
                for file in (METRICS_FILE, SAMPLES_FILE):
                    truncate_after(self.run_dir / file, self.step)
        elif self.is_main:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=False)
            except FileExistsError:
                raise UsageError(
                    f"run {self.run_name!r} already exists", f"continue it with --resume {self.run_name}"
                ) from None
        self.wandb_id = self.wandb_id or RunRecord.read(self.run_dir).get("wandb_id") or new_run_id()
        self._logger = NullLogger()
        if self.is_main:
            self._open_files()
        # per-layer gradient norms (for W&B) are a collective under FSDP: all ranks must agree
        self._layer_norms_wanted = dist.broadcast_object(self._logger.wants_layer_norms)

    def _open_files(self) -> None:
        from lmforge import __version__
        from lmforge.observe.wandb_logger import make_logger

        (self.run_dir / CONFIG_FILE).write_text(self.config.to_toml(), encoding="utf-8")
        previous = RunRecord.read(self.run_dir) if self.resume_dir else {}
        self._record = RunRecord(
            self.run_dir,
            {
                "started_at": previous.get("started_at") or ckpt.now_iso(),
                "total_steps": self.config.train.steps,
                "step": self.step,
                "tokens": self.tokens,
                "best_val_loss": self.best_val_loss,
                "best_step": self.best_step,
                "dataset": self.dataset.name,
                "tokenizer": self.tokenizer_identity,
                "wandb_id": self.wandb_id,
                "lmforge_version": __version__,
            },
        )
        self._record.update()
        self._metrics = JsonlWriter(self.run_dir / METRICS_FILE)
        self._samples = JsonlWriter(self.run_dir / SAMPLES_FILE)
        self._logger = make_logger(
            self.config.logging.wandb,
            run_dir=self.run_dir,
            project=self.config.logging.wandb_project,
            name=self.run_name,
            config=self.config.to_dict(),
            run_id=self.wandb_id,
            on_warning=self.reporter.warning,
        )

    def _start_info(self) -> dict[str, Any]:
        return {
            "run": self.run_name,
            "run_dir": str(self.run_dir),
            "dataset": self.dataset.name,
            "parameters": self.model.get_num_params(),
            "param_groups": self.param_counts.to_dict(),
            "device": str(self.device)
            + (f" x{self.world_size} ({self.strategy})" if self.world_size > 1 else ""),
            "world_size": self.world_size,
            "strategy": self.strategy,
            "dtype": self.dtype,
            "compile": self.compiled,
            "tokens_per_step": self.tokens_per_step,
            "total_steps": self.config.train.steps,
            "resumed_from_step": self.resumed_from_step,
            "init_from": str(self.init_from) if self.init_from else None,
            "wandb": self._logger.mode if self._logger else "disabled",
        }

    def _write_metric(self, record: dict[str, Any]) -> None:
        if self._metrics is not None:
            self._metrics.write(record)

    def _update_record(self, **fields: Any) -> None:
        if self._record is not None:
            self._record.update(
                step=self.step,
                tokens=self.tokens,
                best_val_loss=self.best_val_loss,
                best_step=self.best_step,
                **fields,
            )

    def _fail(self, exc: BaseException) -> None:
        interrupted = isinstance(exc, KeyboardInterrupt)
        message = exc.message if isinstance(exc, LmforgeError) else f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(Exception):
            self._update_record(
                status="interrupted" if interrupted else "failed",
                ended_at=ckpt.now_iso(),
                error=None if interrupted else message,
            )
        if self._logger is not None:
            with contextlib.suppress(Exception):
                self._logger.finish(exit_code=1)
            self._logger = None

    def _close(self) -> None:
        for writer in (self._metrics, self._samples):
            if writer is not None:
                writer.close()
        if self._logger is not None:
            with contextlib.suppress(Exception):
                self._logger.finish(exit_code=128 + self._stop_signal if self._stop_signal else 0)
        self.reporter.close()

    # ------------------------------------------------------------------ signals

    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Ask the loop to stop after the current step, as Ctrl-C does (for callers and tests)."""
        self._stop_signal = signum
