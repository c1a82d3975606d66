"""The numerics of one optimizer step, in the two parts ``TrainingManager.train_step`` calls.

``TrainStep.forward_backward(x, y)``: one micro-batch through the model the steps run
(compiled, DDP-wrapped or FSDP-sharded), forward under autocast (bf16, or fp16 with a
GradScaler, or plain fp32) and backward; gradients accumulate, and travel between ranks
after the last micro-batch only (DDP; FSDP reduce-scatters each one's, to keep a shard).
``TrainStep.update(loss)``: clip to ``max_grad_norm``, the finite check, then the optimizer. A
step whose loss or gradient norm is not finite updates nothing (weights and optimizer state
stay as they were, gradients are dropped) and comes back as ``"bad"``; an fp16 loss-scale
overflow comes back as ``"overflow"`` (the scaler lowers its scale). What follows a bad step is
``lmforge.train.recovery``'s decision.

Several processes: ranks agree once per step, in one small all-reduce inside ``update``,
on whether the step was finite and whether any of them received a stop signal, so every
rank takes the same path afterwards.

May import ``lmforge.distributed`` and ``lmforge.train.hardware``.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from lmforge import distributed as dist
from lmforge.train.hardware import Hardware

Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs, targets), each (B, T)


@dataclass
class StepOutcome:
    """One optimizer step. ``loss``/``grad_norm`` stay on the device until a logging step."""

    loss: torch.Tensor
    grad_norm: torch.Tensor
    status: Literal["ok", "bad", "overflow"]  # bad: non-finite, skipped; overflow: fp16 scale too high
    layer_norms: dict[str, torch.Tensor] | None = None
    stop_signal: int | None = None  # several processes: the signal some rank received (agreed)
    compile_error: Exception | None = None  # the compiled model failed in this step: eager from now on


class TrainStep:
    """The model, its optimizer and fp16 loss scaler, stepped as ``TrainingManager.train_step``
    does; ``step(batches, lr)`` runs a whole step for a caller without a loop.

    ``model`` is the plain module whose parameters the optimizer holds (clipping and the
    per-layer norms read it); ``train_model`` the one the forward passes run (compiled,
    DDP-wrapped; ``model`` itself by default). ``fall_back_to_eager``: a compiled
    ``train_model`` whose first call fails to compile (inductor without a working C++ compiler,
    say: ``is_compiler_failure``; any other error of the step stands) is replaced by ``model``
    once, and the step says so in ``StepOutcome.compile_error``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        *,
        train_model: nn.Module | None = None,
        hardware: Hardware | None = None,
        max_grad_norm: float = 0.0,
        fall_back_to_eager: bool = False,
    ) -> None:
        self.model = model
        self.train_model = train_model if train_model is not None else model
        self.optimizer = optimizer
        self.scaler = scaler
        self.hw = hardware or Hardware(next(model.parameters()).device, "fp32")
        self.max_norm = max_grad_norm or math.inf  # 0: no clipping
        self._may_fall_back = fall_back_to_eager
        self._compile_error: Exception | None = None

    def set_lr(self, lr: float) -> None:
        """``lr`` is the schedule's value for ``--lr``; each group follows at its ratio (train.optim)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, *, last: bool = True, accum: int = 1):
        """One micro-batch of ``accum``: forward, backward of its share of the step's loss (the
        mean over all micro-batches, as one big batch would give); that share, detached."""
        try:
            return self._forward_backward(x, y, last, accum)
        except Exception as exc:
            if not (self._may_fall_back and is_compiler_failure(exc)):
                raise  # out of memory, a device assert, a NCCL error: with its own message
            self._may_fall_back = False
            self._compile_error = exc
            self.optimizer.zero_grad(set_to_none=True)  # a failed pass may have left gradients
            self.train_model = self.model
            return self._forward_backward(x, y, last, accum)

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor, last: bool, accum: int) -> torch.Tensor:
        dist.set_grad_sync(self.train_model, last)  # across ranks: after the last micro-batch only
        with self.hw.autocast():
            _, loss = self.train_model(x, y)
        loss = loss / accum
        self.scaler.scale(loss).backward()
        self._may_fall_back = False  # compiled on the first call: later failures are real ones
        return loss.detach()

    def update(
        self,
        loss: torch.Tensor,
        *,
        layer_norms: bool = False,
        stop_signal: int | None = None,
        before_sync: Callable[[], None] | None = None,
    ) -> StepOutcome:
        """Clip, check and apply the accumulated gradients; ``loss`` is the step's (summed over its
        micro-batches). ``stop_signal``: one this rank received, shared with the others.
        ``before_sync``: host work for the time the device still computes this step (the next
        step's batches: ``StepBatches.prefetch``), called before the step's host sync."""
        self.scaler.unscale_(self.optimizer)  # no-op unless fp16: clip the true gradients
        grad_norm = dist.clip_grad_norm(self.model, self.max_norm)
        norms = layer_grad_norms(self.model, self.hw.sharded) if layer_norms else None
        if before_sync is not None:
            before_sync()  # the device is busy with the backward pass and the clip meanwhile
        # Host sync, once per optimizer step (not per micro-batch): whether the step may be
        # applied decides the step counter and the schedule, which live on the host. It waits
        # for the backward pass only, which the optimizer step would wait for anyway.
        flags = torch.stack([loss.isfinite().logical_not(), grad_norm.isfinite().logical_not()]).float()
        if self.hw.world_size > 1:
            # ... and the one collective decision of the step: a non-finite loss on any rank, and
            # a stop signal received by any rank (its number; MAX), so all ranks save and stop
            stop = torch.tensor([float(stop_signal or 0)], device=self.hw.device)
            flags = dist.all_reduce_max(torch.cat([flags, stop]))
        bad_loss, bad_grads, *agreed = host_sync(flags)
        agreed_stop = (int(agreed[0]) or None) if agreed else None
        status = self._status(loss_ok=not bad_loss, grads_ok=not bad_grads)
        if status != "bad":
            self.scaler.step(self.optimizer)  # skips the update itself on an fp16 overflow
            self.scaler.update()
        elif self.scaler.is_enabled():
            # unscale_ above marked this optimizer as unscaled until the next update(); without
            # one the next step's unscale_ raises. Keep the scale: a non-finite loss is not an
            # overflow, and a scale at or below 1 has nothing left to lower.
            self.scaler.update(new_scale=self.scaler.get_scale())
        self.optimizer.zero_grad(set_to_none=True)
        error, self._compile_error = self._compile_error, None
        return StepOutcome(loss, grad_norm, status, norms, agreed_stop, error)

    def _status(self, loss_ok: bool, grads_ok: bool) -> Literal["ok", "bad", "overflow"]:
        if loss_ok and grads_ok:
            return "ok"
        if loss_ok and self.scaler.is_enabled() and self.scaler.get_scale() > 1.0:
            return "overflow"  # fp16: the scale was too high; the scaler lowers it and skips
        return "bad"

    def __call__(
        self, batches: list[Batch], lr: float, layer_norms: bool = False, stop_signal: int | None = None
    ) -> StepOutcome:
        """A whole step over ``batches`` at ``lr`` (``TrainingManager.train_step`` without its
        progress reports)."""
        self.set_lr(lr)
        loss = torch.zeros((), device=self.hw.device)
        for i, (x, y) in enumerate(batches):
            loss += self.forward_backward(x, y, last=i == len(batches) - 1, accum=len(batches))
        return self.update(loss, layer_norms=layer_norms, stop_signal=stop_signal)


def host_sync(flags: torch.Tensor) -> list[float]:
    """The step's flags on the host: the one point where the host waits for the device."""
    return flags.tolist()


def _compiler_errors() -> tuple[type[BaseException], ...]:
    """The exceptions torch.compile raises when compiling fails, by the names this torch has:
    Dynamo's ``BackendCompilerFailed`` (Inductor's ``InductorError`` is one from torch 2.7 on),
    its internal errors, and Inductor's compiler errors (no C++ toolchain, no nvcc)."""
    names = {
        "torch._dynamo.exc": ("BackendCompilerFailed", "InternalTorchDynamoError"),
        "torch._inductor.exc": ("InductorError", "CppCompileError", "CUDACompileError"),
    }
    found: list[type[BaseException]] = []
    for module_name, classes in names.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        found += [c for c in (getattr(module, n, None) for n in classes) if isinstance(c, type)]
    return tuple(found)


def is_compiler_failure(exc: BaseException) -> bool:
    """``exc`` is torch.compile failing to compile (worth an eager retry), not a failure of the
    step itself: an out-of-memory (also one raised while Inductor benchmarks its kernels) stays
    an out-of-memory."""
    if not isinstance(exc, _compiler_errors()):
        return False
    cause: BaseException | None = exc
    for _ in range(8):  # the wrapped errors (a chain of a few; bounded, a chain may loop)
        if cause is None:
            break
        if isinstance(cause, torch.OutOfMemoryError):
            return False
        cause = getattr(cause, "inner_exception", None) or cause.__cause__
    return True


def layer_grad_norms(model: nn.Module, sharded: bool = False) -> dict[str, torch.Tensor]:
    """Gradient norm per transformer block (and embeddings, final LayerNorm), on the device.
    ``sharded``: FSDP, each rank holds a shard of every gradient (a collective)."""
    groups: dict[str, list[torch.Tensor]] = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        parts = name.split(".")
        key = f"h.{parts[2]}" if parts[1] == "h" else parts[1]
        # squared norms of this rank's shard (all of it unless FSDP), summed over ranks below
        groups.setdefault(key, []).append(dist.local_tensor(p.grad.detach()).float().square().sum())
    squares = torch.stack([torch.stack(v).sum() for v in groups.values()])
    if sharded:
        dist.all_reduce_sum(squares)
    return dict(zip(groups, squares.sqrt(), strict=True))
