"""What a full checkpoint holds besides the weights (``trainer.pt``), and saving and loading
a run's checkpoints (``Checkpointer``).

``TrainingState`` gathers the state of each component from the component itself: the
optimizer (unsharded under FSDP, keyed by parameter name), the fp16 loss scaler, the
schedule, the data loader's position, and the run's progress (``RunProgress``: step,
tokens, best and last validation loss, the bad-step counters). The ``Checkpointer`` adds
every rank's RNG state, the tokenizer and the number of processes, and writes the files.

A resume restores everything; a rollback (``resume=False``) only the weights,
optimizer, scaler, step, tokens and RNG: the data keeps moving past the bad batches
and the run's own counters stay (so rollbacks stay bounded).

May import ``checkpoint``, ``distributed`` and the train modules it names.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from lmforge import distributed as dist
from lmforge.checkpoint import store as ckpt
from lmforge.checkpoint.listing import latest_full
from lmforge.checkpoint.prune import prune_keep_last
from lmforge.config import TrainingConfig
from lmforge.train.hardware import Hardware
from lmforge.train.recovery import BadSteps
from lmforge.train.rng import get_rng_state, restore_rank_rng
from lmforge.workspace import RunDir


@dataclass
class RunProgress:
    """How far the run is, its validation-loss bookkeeping and its bad-step counters."""

    step: int = 0
    tokens: int = 0
    best_val_loss: float | None = None
    best_step: int | None = None
    last_val_loss: float | None = None
    last_eval_step: int | None = None
    evals_since_best: int = 0  # early stopping's patience counts these
    wandb_id: str | None = None
    bad_steps: BadSteps = dataclasses.field(default_factory=BadSteps)

    def add_eval(self, val_loss: float) -> bool:
        """Record an evaluation at the current step; True when it is the best so far."""
        self.last_val_loss, self.last_eval_step = val_loss, self.step
        improved = math.isfinite(val_loss) and (self.best_val_loss is None or val_loss < self.best_val_loss)
        if improved:
            self.best_val_loss, self.best_step, self.evals_since_best = val_loss, self.step, 0
        else:
            self.evals_since_best += 1
        return improved

    def state_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "bad_steps": self.bad_steps.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.best_val_loss, self.best_step = state.get("best_val_loss"), state.get("best_step")
        self.last_val_loss, self.last_eval_step = state.get("last_val_loss"), state.get("last_eval_step")
        self.evals_since_best = int(state.get("evals_since_best", 0))
        self.wandb_id = state.get("wandb_id") or self.wandb_id
        self.bad_steps.load_state_dict(state.get("bad_steps"))


@dataclass
class TrainingState:
    """The components of a run whose state ``trainer.pt`` holds; ``model`` is the one the
    optimizer steps (FSDP-sharded or not)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: Any
    loader: Any
    progress: RunProgress
    loaded_schedule: dict[str, Any] | None = None  # the schedule a loaded checkpoint was saved with

    def state_dict(self) -> dict[str, Any]:
        """Called on every rank (under FSDP the optimizer shards are gathered: a collective);
        meaningful on rank 0."""
        return {
            "optimizer": optimizer_state(self.model, self.optimizer),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            **self.progress.state_dict(),
            "schedule": self.schedule.state_dict(),
            "loader": self.loader.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], *, resume: bool = True) -> None:
        """Put ``state`` back (all of it on ``resume``; see the module docstring for a rollback)."""
        load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.loaded_schedule = state.get("schedule")  # the saved one: did --steps change its past?
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.progress.step, self.progress.tokens = int(state["step"]), int(state["tokens"])
        if resume:
            saved_world = int(state.get("world_size") or 1)
            self.loader.load_state_dict(self.loader.position_from(state["loader"], saved_world))
            self.progress.load_state_dict(state)


class Checkpointer:
    """Saves the run's checkpoints into ``run`` and loads them back. Called on every rank at the
    same steps (under FSDP the weights and optimizer are gathered: collectives); rank 0 writes.

    ``meta`` holds the fields of ``meta.json`` that do not change during the run (config,
    tokenizer, dataset); ``config``'s optimizer settings win over a checkpoint's own."""

    def __init__(
        self,
        state: TrainingState,
        run: RunDir,
        config: TrainingConfig,
        hardware: Hardware,
        meta: dict[str, Any],
    ) -> None:
        self.state, self.run, self.config, self.hw, self.meta = state, run, config, hardware, meta
        self.last_full_step: int | None = None  # in memory: every rank must agree, files may lag
        self.rng_warning: str | None = None  # the last load's: CUDA generators not restored

    def save(self, kind: str) -> Path | None:
        """A ``full``, ``light`` or ``best`` checkpoint at the current step; its path on rank 0."""
        p = self.state.progress
        # FSDP: the weights are gathered from every rank's shards to rank 0 (a collective)
        weights = dist.full_model_state(self.state.model) if self.hw.sharded else self.state.model
        trainer_state = None
        if kind == "full":
            rng = dist.gather_objects(get_rng_state())  # a collective: every rank's generators
            trainer_state = self.state.state_dict() | {
                "rng": rng[0],
                "rng_per_rank": rng,  # rank r resumes with rng_per_rank[r]
                "tokenizer": self.meta["tokenizer"],
                "world_size": self.hw.world_size,
            }
            self.last_full_step = p.step
        if not self.hw.is_main:
            return None
        path = self.run.checkpoint("best" if kind == "best" else f"step-{p.step}")
        val_loss = p.last_val_loss if p.last_eval_step == p.step else None
        meta = {"kind": kind, "run": self.run.name, "step": p.step, "tokens": p.tokens, "val_loss": val_loss}
        ckpt.save_checkpoint(path, weights, meta | self.meta, trainer_state)
        if kind != "best":
            prune_keep_last(self.run.path, self.config.checkpoint.keep_last)  # never half a checkpoint
        return path

    def latest_full(self) -> Path | None:
        latest = latest_full(self.run.path)
        return latest.path if latest else None

    def load(self, path: Path, *, resume: bool = True) -> int:
        """Load the full checkpoint at ``path`` (all of it on ``resume``; see the module
        docstring for a rollback); returns the number of processes that saved it."""
        from lmforge.train.optim import set_hyperparameters

        model = self.state.model
        if self.hw.sharded:
            # rank 0 alone reads the files; each rank keeps its shards of what it broadcasts, so no
            # other rank holds the whole of the weights or the optimizer state at any time
            read: dict[str, Any] = {}  # filled on rank 0; a refusal there is raised on every rank
            dist.on_main(
                lambda: read.update(weights=ckpt.load_state_dict(path), trainer=_trainer_state(path))
            )
            full = ckpt.pad_vocab_rows(read["weights"], self.config.model.padded_vocab_size) if read else {}
            if read and model.config.tied_head:
                full["lm_head.weight"] = full[ckpt.WTE_KEY]  # tied: the same tensor in the model
            dist.load_full_model_state(model, full, from_rank0=True)
            trainer_state = dist.without_optimizer(read.get("trainer"))
        else:
            ckpt.load_weights(model, ckpt.load_state_dict(path), where=path)
            trainer_state = _trainer_state(path)
        self.state.load_state_dict(trainer_state, resume=resume)
        # a word on CUDA generators that could not be restored (another GPU count), for the caller
        self.rng_warning = restore_rank_rng(
            trainer_state, self.hw.rank, seed=self.config.train.seed, step=self.state.progress.step
        )
        set_hyperparameters(self.state.optimizer, self.config.optim, self.hw.device)
        self.last_full_step = self.state.progress.step
        return int(trainer_state.get("world_size") or 1)


# ----------------------------------------------------------------------------- the optimizer state

# trainer.pt's "optimizer" layout. 2: keyed by parameter name (torch.distributed.checkpoint's full
# state dict), with "format_version"; 1 (no "format_version"): torch.optim's own state_dict, keyed by
# integer ids in parameter-group order, converted on load by ``_by_name``.
OPTIMIZER_FORMAT = 2


def _parts(optimizer: Any) -> dict[str, torch.optim.Optimizer]:
    """The torch optimizers inside ``optimizer`` by their key in the saved state (Muon + AdamW: two)."""
    from lmforge.train.optim import MuonAdamW

    if isinstance(optimizer, MuonAdamW):
        return {"muon": optimizer.muon, "adamw": optimizer.adamw}
    return {"": optimizer}


def optimizer_state(model: nn.Module, optimizer: Any) -> dict[str, Any]:
    """The full optimizer state in ``OPTIMIZER_FORMAT`` (a collective under FSDP; rank 0 gets it)."""
    parts = _parts(optimizer)
    state: dict[str, Any] = {"format_version": OPTIMIZER_FORMAT}
    if not any(opt.state for opt in parts.values()):
        return state  # before the first update: nothing to keep (every rank agrees: same steps)
    for key, opt in parts.items():
        full = dist.full_optimizer_state(model, opt)
        state.update({key: full} if key else full)
    if "muon" in parts:
        state["updates"] = optimizer.updates
    return state


def load_optimizer_state(model: nn.Module, optimizer: Any, state: dict[str, Any]) -> None:
    """Put a saved optimizer state (either format) back. Under FSDP rank 0 alone passes it and the
    other ranks ``{}``."""
    from lmforge.errors import CheckpointError, ConfigError

    version = state.get("format_version", 1) if state else OPTIMIZER_FORMAT
    if version > OPTIMIZER_FORMAT:
        raise CheckpointError(
            f"this checkpoint's optimizer state has format {version}, newer than this lmforge reads",
            "upgrade lmforge",
        )
    parts = _parts(optimizer)
    if state and ("muon" in parts) != ("muon" in state):
        raise ConfigError(
            "this checkpoint's optimizer state is "
            + ("AdamW's, not Muon + AdamW" if "muon" in parts else "Muon + AdamW's, not AdamW's"),
            "resume with the run's own --optimizer",
        )
    if version == 1:
        state = _by_name(model, parts, state)
    # saved before the first update: the optimizer stays new (only rank 0 read the file)
    if not dist.broadcast_object(bool(state.get("state") or state.get("muon"))):
        return
    for key, opt in parts.items():
        dist.load_full_optimizer_state(model, opt, state.get(key, {}) if key else state)
    if "muon" in parts:
        optimizer.updates = int(state["updates"])


def _by_name(model: nn.Module, parts: dict[str, torch.optim.Optimizer], state: dict[str, Any]) -> dict:
    """A format-1 optimizer state (integer ids in parameter-group order) keyed by parameter name."""
    names = {id(p): n for n, p in dist.unwrap(model).named_parameters()}

    def convert(opt: torch.optim.Optimizer, saved: dict[str, Any]) -> dict[str, Any]:
        order = [names[id(p)] for group in opt.param_groups for p in group["params"]]
        return {
            "state": {order[int(i)]: s for i, s in saved["state"].items()},
            "param_groups": [
                {**g, "params": [order[int(i)] for i in g["params"]]} for g in saved["param_groups"]
            ],
        }

    if "muon" in parts:
        return {
            "muon": convert(parts["muon"], state["muon"]),
            "adamw": convert(parts["adamw"], state["adamw"]),
            "updates": state["updates"],
        }
    return convert(parts[""], state)


def _trainer_state(path: Path) -> dict[str, Any]:
    return ckpt.check_trainer_state(ckpt.load_trainer_state(path), path / ckpt.TRAINER_FILE)
