"""Multi-process training under ``torchrun``: process group set-up, the
DDP / FSDP2 wrappers, full (unsharded) state dicts, and the few collectives the
trainer needs.

The model file knows nothing of this: parallelism is applied to a plain
``GPT`` by ``apply_ddp`` / ``apply_fsdp`` (the torchtitan way). Without
``torchrun`` every helper here degrades to the single-process answer, so the
trainer has no ``if distributed:`` branches beyond choosing a wrapper.

Checkpoints hold the *full* state: the plain ``GPT`` state dict and the
optimizer state keyed by parameter name (``torch.distributed.checkpoint``'s
state-dict helpers), gathered to rank 0 under FSDP. So a checkpoint saved by any
number of processes, with either strategy, loads in any other.

Starting the processes (``--nproc``) is ``lmforge.launch``'s job.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn

from lmforge.errors import LmforgeError, UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints, logs and writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


# The first collective waits for every rank's start-up: the rendezvous, reading the data, rank 0's
# checks of the run's files, the first step's compilation (minutes for a large model). After the
# first step a collective that waits this long means a rank is gone or stuck: say so sooner.
INIT_TIMEOUT = datetime.timedelta(minutes=30)
STEP_TIMEOUT = datetime.timedelta(minutes=10)


def init_distributed(device: str | torch.device) -> DistInfo:
    """Join the process group torchrun set up (nccl on CUDA, gloo on the CPU), with
    ``INIT_TIMEOUT`` for the collectives until ``use_step_timeout()``.

    Returns the single-process ``DistInfo()`` when not launched by torchrun; a single process on
    ``cuda:N`` still makes N the current device (kernels, caches and ``torch.cuda`` calls without
    a device would otherwise go to GPU 0).
    """
    device = torch.device(device)
    if not launched_by_torchrun():
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        return DistInfo()
    info = DistInfo(
        rank=int(os.environ["RANK"]),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        world_size=int(os.environ["WORLD_SIZE"]),
    )
    if not is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {}
        if backend == "nccl":
            local = torch.device("cuda", info.local_rank)
            torch.cuda.set_device(local)
            # the communicator is made now, bound to this GPU (not lazily at the first collective,
            # and no "barrier(): using the device under current context" guess)
            kwargs["device_id"] = local
        dist.init_process_group(backend=backend, timeout=INIT_TIMEOUT, **kwargs)
    return info


def use_step_timeout(timeout: datetime.timedelta = STEP_TIMEOUT) -> None:
    """After the first training step: every rank is past its start-up (a barrier makes sure),
    so collectives from now on time out after ``timeout`` instead of ``INIT_TIMEOUT``. A no-op
    in one process, or on a torch without ``_set_pg_timeout`` (then ``INIT_TIMEOUT`` stays)."""
    if not is_initialized():
        return
    from torch.distributed import distributed_c10d

    set_timeout = getattr(distributed_c10d, "_set_pg_timeout", None)
    if set_timeout is None:
        return
    dist.barrier()
    set_timeout(timeout)


def current() -> DistInfo:
    """The ``DistInfo`` of an already initialised process group (or single-process)."""
    if is_initialized():
        rank = dist.get_rank()
        return DistInfo(
            rank=rank, local_rank=int(os.environ.get("LOCAL_RANK", rank)), world_size=dist.get_world_size()
        )
    return DistInfo()


def destroy() -> None:
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------- collectives


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over ranks in place (a no-op in one process)."""
    if is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Average ``values`` over ranks in place (a no-op in one process)."""
    if is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= dist.get_world_size()
    return values


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    """The element-wise maximum over ranks, in place (a no-op in one process)."""
    if is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def broadcast_object(obj: T, src: int = 0) -> T:
    """Send a picklable object from ``src`` to every rank (the run name, say)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list:
    """Every rank's ``obj``, in rank order, on every rank (per-rank RNG states)."""
    if not is_initialized():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and give every rank its result, or raise its ``LmforgeError``
    on every rank: checks of files that rank 0 is about to change (does the run exist? is it
    running?) are made once, and a refusal stops all ranks alike instead of leaving the
    others waiting in a collective."""
    if not is_initialized():
        return fn()
    outcome: tuple[str, Any] = ("ok", None)
    if dist.get_rank() == 0:
        try:
            outcome = ("ok", fn())
        except LmforgeError as exc:
            outcome = ("error", (type(exc).__name__, exc.message, exc.hint))
    status, value = broadcast_object(outcome)
    if status == "error":
        import lmforge.errors as errors

        name, message, hint = value
        raise getattr(errors, name, LmforgeError)(message, hint)
    return value


# ----------------------------------------------------------------------------- wrappers


# A test and debugging knob: the torch.compile backend (default Inductor). "aot_eager" traces
# and partitions the graphs as Inductor would (so guards, recompilations and graph breaks are
# the same) without generating and building kernels: what the CPU tests use.
COMPILE_BACKEND_ENV = "LMFORGE_COMPILE_BACKEND"


def compile_backend() -> str:
    """The torch.compile backend: ``$LMFORGE_COMPILE_BACKEND``, else ``"inductor"``."""
    return os.environ.get(COMPILE_BACKEND_ENV) or "inductor"


def apply_compile(model: nn.Module, whole: bool = True) -> nn.Module:
    """``torch.compile``: the whole model (one graph: the fastest, used for one process; for DDP
    pass the DDP module, whose graph DDPOptimizer splits at the gradient buckets), or each block
    in place (the FSDP2 way: the hooks between blocks stay in eager). The backend is
    ``compile_backend()``'s."""
    backend = compile_backend()
    if whole:
        return torch.compile(model, backend=backend)
    for block in model.transformer.h:
        block.compile(backend=backend)
    return model


def apply_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel: every rank holds the whole model; gradients are averaged in
    buckets that overlap with the backward pass."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    device_ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=device_ids)


def apply_fsdp(model: nn.Module, mixed_precision: torch.dtype | None = None) -> nn.Module:
    """FSDP2: shard each transformer block, then the root (embeddings, final norm, the head
    tied to the embedding), in place. Parameters become ``DTensor`` shards; names stay."""
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError as exc:  # torch < 2.6
        raise UsageError(
            "--strategy fsdp needs torch >= 2.6 (FSDP2)", "upgrade torch or use --strategy ddp"
        ) from exc
    kwargs = {}
    if mixed_precision is not None:
        # parameters all-gathered in bf16, gradients reduced in fp32
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=mixed_precision, reduce_dtype=torch.float32)
    for block in model.transformer.h:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    # a padded vocabulary returns its logits as a slice (a view) of the head's output; nothing
    # writes to it in place, which is what this warning is about
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    return model


def is_fsdp(model: nn.Module) -> bool:
    if "torch.distributed.fsdp" not in sys.modules:
        return False  # nothing was sharded, and importing FSDP costs a second at start-up
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(model, FSDPModule)


def set_grad_sync(model: nn.Module, enabled: bool) -> None:
    """Whether the next backward averages gradients across ranks. DDP: off for all but the last
    micro-batch of gradient accumulation, so the gradients travel once per optimizer step.

    FSDP: always on. Without a reduce-scatter every rank would keep the full, unsharded fp32
    gradients of the whole model between micro-batches (``set_requires_gradient_sync(False)``),
    which is what FSDP is there to avoid and what ``lmforge.train.memory`` does not count
    (a shard). Reduce-scattering every micro-batch, as torchtitan does, keeps a shard; it
    overlaps the backward pass, and FSDP moves more than that per micro-batch anyway (it
    all-gathers the weights for the forward and again for the backward)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = getattr(model, "_orig_mod", model)  # torch.compile(DDP(...))
    if isinstance(model, DDP):
        model.require_backward_grad_sync = enabled  # what DDP.no_sync() toggles (nanoGPT does this)


def reshard(model: nn.Module) -> None:
    """FSDP2 keeps the root's parameters gathered after a forward without backward (eval,
    samples); shard them again before the next state-dict call."""
    if is_fsdp(model):
        model.reshard()


def eager() -> contextlib.AbstractContextManager:
    """Run compiled code eagerly for a while: the blocks of an FSDP model are compiled in place
    for training, and evaluation and sampling (a KV cache whose length changes every token)
    would only make them recompile."""
    set_stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def unwrap(model: nn.Module) -> nn.Module:
    """The plain ``GPT`` inside DDP / torch.compile wrappers (FSDP2 shards in place)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm to ``max_norm`` and return it (a plain tensor on the device,
    also under FSDP, where the norm is computed from the shards and reduced)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
        norm = norm.full_tensor()
    return norm


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a (possibly sharded) tensor."""
    return t.to_local() if hasattr(t, "to_local") else t


# ----------------------------------------------------------------------------- full state dicts


def _full_options(**kwargs: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain, unsharded state dict of ``model``. Under FSDP it is gathered to rank 0 on the
    CPU (a collective: every rank calls it; ranks other than 0 get ``{}``)."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(model, options=_full_options(cpu_offload=True))
    return unwrap(model).state_dict()


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor], from_rank0: bool = False) -> None:
    """Load a full state dict into a sharded model: every rank passes the whole of it, or with
    ``from_rank0`` rank 0 alone does (the others pass ``{}``) and each tensor is broadcast in
    turn, so no other rank holds all of it at once."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_full_options(broadcast_from_rank0=from_rank0))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The full (unsharded) state of ``optimizer``, keyed by parameter name
    (``torch.distributed.checkpoint``'s layout: the same file for any strategy and number of
    processes). On the CPU, on rank 0 (a collective under FSDP: other ranks get ``{}``).

    Call it on an optimizer that has stepped: torch makes the state of one that has not by
    stepping it once with zero gradients."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_full_options(cpu_offload=True))


def load_full_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load a ``full_optimizer_state``. Without FSDP every rank passes all of it; under FSDP rank 0
    alone does (the others pass ``{}``: see ``without_optimizer``) and each rank keeps its shard
    of what rank 0 broadcasts, tensor by tensor."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    options = _full_options(broadcast_from_rank0=is_fsdp(model))
    set_optimizer_state_dict(model, optimizer, state, options=options)


def without_optimizer(state: dict[str, Any] | None) -> dict[str, Any]:
    """A full ``trainer.pt`` state read by rank 0 alone (``None`` elsewhere), on every rank: all
    but the optimizer state is sent to the others (small: step, RNG, data position), who get an
    empty ``optimizer`` for ``load_full_optimizer_state`` to fill from rank 0."""
    rest = {k: v for k, v in state.items() if k != "optimizer"} if state is not None else None
    rest = broadcast_object(rest)
    return state if state is not None else {**rest, "optimizer": {}}


_LOST_PEER = ("Connection reset by peer", "Connection closed by peer", "gloo/transport", "NCCL")


def is_lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another rank is gone (killed, crashed):
    torch's ``DistError`` family (NCCL) or gloo's transport ``RuntimeError``."""
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    return isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in _LOST_PEER)


def lost_peer_error(exc: BaseException, rank: int) -> LmforgeError:
    """The one line a rank prints when a collective fails because another rank is gone."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    first = first.split("] ", 1)[-1]  # gloo prefixes its source file and line
    return LmforgeError(
        f"rank {rank}: another process of this run stopped ({first[:160]})",
        "its own output says why; continue with lmforge train --resume RUN from the last full checkpoint",
    )


@contextlib.contextmanager
def process_group(device: str | torch.device) -> Iterator[DistInfo]:
    """``init_distributed`` for the duration of a block; the group is destroyed after it. A block
    that ends normally first waits for every rank (a barrier), so no rank closes its connections
    while another still has a collective on them; one that raised does not wait (the other ranks
    may be gone)."""
    info = init_distributed(device)
    try:
        yield info
    except BaseException:
        if info.enabled:
            destroy()
        raise
    if info.enabled:
        barrier()
        destroy()


def leave_rank(exit_code: int) -> NoReturn:
    """End a rank of a multi-process run once it has written and printed everything: flush the
    output and exit without Python's and C++'s exit-time teardown. FSDP's device mesh keeps the
    gloo process group (and its worker threads) alive after ``destroy_process_group``; torn down
    at interpreter exit, it can abort the process ("terminate called without an active
    exception", SIGABRT), so a run that saved and stopped cleanly would end as a crash (-6
    instead of 0 or 143), and the launcher would report a failed rank."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(exit_code)
