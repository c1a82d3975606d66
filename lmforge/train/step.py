"""One optimizer step: forward and backward over the micro-batches, clip, update.

A step is ``len(batches)`` micro-batches (gradient accumulation), forward under
autocast (bf16, or fp16 with a GradScaler, or plain fp32), backward, clip to
``max_grad_norm``, then the optimizer. The finite-step policy lives here: a step
whose loss or gradient norm is not finite updates nothing (weights and optimizer
state stay as they were, gradients are dropped) and comes back as ``"bad"``; an
fp16 loss-scale overflow comes back as ``"overflow"`` (the scaler lowers its scale).
Counting bad steps and rolling back is ``lmforge.train.recovery``'s.

Several processes: ranks agree once per step, in one small all-reduce, on whether
the step was finite and whether any of them received a stop signal, so every rank
takes the same path afterwards.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from lmforge import distributed as dist

Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs, targets), each (B, T)


@dataclass
class StepOutcome:
    """One optimizer step. ``loss``/``grad_norm`` stay on the device until a logging step."""

    loss: torch.Tensor
    grad_norm: torch.Tensor
    status: Literal["ok", "bad", "overflow"]  # bad: non-finite, skipped; overflow: fp16 scale too high
    layer_norms: dict[str, torch.Tensor] | None = None
    stop_signal: int | None = None  # several processes: the signal some rank received (agreed)


class TrainStep:
    """``step(batches, lr)`` runs one optimizer step of ``model`` and returns its ``StepOutcome``.

    ``model`` is the plain module whose parameters the optimizer holds (clipping and the
    per-layer norms read it); ``train_model`` the one the forward passes run (compiled,
    DDP-wrapped; ``model`` itself by default). The step counter and the schedule are the caller's.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        *,
        train_model: nn.Module | None = None,
        device: torch.device | None = None,
        autocast_dtype: torch.dtype | None = None,
        max_grad_norm: float = 0.0,
        world_size: int = 1,
        sharded: bool = False,
        eager_fallback: Callable[[Exception], nn.Module] | None = None,
    ) -> None:
        self.model = model
        self.train_model = train_model if train_model is not None else model
        self.optimizer = optimizer
        self.scaler = scaler
        self.device = device if device is not None else next(model.parameters()).device
        self.autocast_dtype = autocast_dtype
        self.max_norm = max_grad_norm or math.inf  # 0: no clipping
        self.world_size = world_size
        self.sharded = sharded
        # A compiled train_model compiles on its first call; if that fails, eager_fallback(error)
        # gives the module to use instead (once: later failures are real ones)
        self.eager_fallback = eager_fallback

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def __call__(
        self,
        batches: list[Batch],
        lr: float,
        layer_norms: bool = False,
        stop_signal: int | None = None,
        on_micro_batch: Callable[[int, int], None] | None = None,
    ) -> StepOutcome:
        """Forward/backward over ``batches``, clip, and update unless the loss or gradient is
        not finite. ``stop_signal``: one this rank received, shared with the others.
        ``on_micro_batch(done, of)``: after each micro-batch's backward (no host sync), so a
        step that takes minutes still shows progress."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # each group at its ratio to --lr (train.optim)
        try:
            loss_sum = self._forward_backward(batches, on_micro_batch)
        except Exception as exc:  # torch.compile's errors have no common base class
            fallback, self.eager_fallback = self.eager_fallback, None
            if fallback is None:
                raise
            self.optimizer.zero_grad(set_to_none=True)  # a failed pass may have left gradients
            self.train_model = fallback(exc)
            loss_sum = self._forward_backward(batches, on_micro_batch)
        self.eager_fallback = None
        return self._finish(loss_sum, layer_norms, stop_signal)

    def _forward_backward(
        self, batches: list[Batch], on_micro_batch: Callable[[int, int], None] | None
    ) -> torch.Tensor:
        model, n = self.train_model, len(batches)
        loss_sum = torch.zeros((), device=self.device)
        for i, (x, y) in enumerate(batches):
            # across ranks, gradients are averaged after the last micro-batch only
            dist.set_grad_sync(model, i == n - 1)
            with self.autocast():
                _, loss = model(x, y)
            loss = loss / n  # the mean over all micro-batches, as one big batch would give
            loss_sum += loss.detach()
            self.scaler.scale(loss).backward()
            if on_micro_batch is not None:
                on_micro_batch(i + 1, n)
        return loss_sum

    def _finish(self, loss_sum: torch.Tensor, layer_norms: bool, stop_signal: int | None) -> StepOutcome:
        self.scaler.unscale_(self.optimizer)  # no-op unless fp16: clip the true gradients
        grad_norm = dist.clip_grad_norm(self.model, self.max_norm)
        norms = layer_grad_norms(self.model, self.sharded) if layer_norms else None
        # Host sync, once per optimizer step (not per micro-batch): whether the step may be
        # applied decides the step counter and the schedule, which live on the host. It waits
        # for the backward pass only, which the optimizer step would wait for anyway.
        flags = torch.stack([loss_sum.isfinite().logical_not(), grad_norm.isfinite().logical_not()]).float()
        if self.world_size > 1:
            # ... and the one collective decision of the step: a non-finite loss on any rank, and
            # a stop signal received by any rank (its number; MAX), so all ranks save and stop
            stop = torch.tensor([float(stop_signal or 0)], device=self.device)
            flags = dist.all_reduce_max(torch.cat([flags, stop]))
        bad_loss, bad_grads, *agreed = flags.tolist()
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
        return StepOutcome(loss_sum, grad_norm, status, norms, agreed_stop)

    def _status(self, loss_ok: bool, grads_ok: bool) -> Literal["ok", "bad", "overflow"]:
        if loss_ok and grads_ok:
            return "ok"
        if loss_ok and self.scaler.is_enabled() and self.scaler.get_scale() > 1.0:
            return "overflow"  # fp16: the scale was too high; the scaler lowers it and skips
        return "bad"


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
