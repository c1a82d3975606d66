"""Placing the model for several processes (``lmforge.train.parallel``), on 2 gloo ranks
started here: FSDP builds the full model on rank 0 only and gives the weights of one process;
a full optimizer state read by rank 0 alone reaches every shard; DDP is compiled around the
DDP module and trains exactly as the eager one does.

Each check runs inside both ranks (``torch.multiprocessing.spawn`` raises when one fails).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed
import torch.multiprocessing as mp

from lmforge.config import ModelConfig, OptimizerConfig

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)

CFG = ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
CPU = torch.device("cpu")


def _batches(seed: int, n: int = 2):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, 64, (2, 16), generator=g), torch.randint(0, 64, (2, 16), generator=g))
        for _ in range(n)
    ]


def _fsdp_rank(rank: int) -> None:
    from lmforge import distributed as dist
    from lmforge.model.gpt import GPT
    from lmforge.train.hardware import Hardware
    from lmforge.train.optim import build_optimizer
    from lmforge.train.parallel import build_train_model, initial_model
    from lmforge.train.step import TrainStep

    inits = []
    real_init = GPT.init_weights
    GPT.init_weights = lambda self: (inits.append(1), real_init(self))[1]
    torch.manual_seed(0)
    hw = Hardware(CPU, "fp32", "fsdp", rank, 2)
    model, train_model = build_train_model(CFG, hw, compiled=False)
    GPT.init_weights = real_init
    # rank 0 alone drew the full model; the others allocated their shards only
    assert len(inits) == (1 if rank == 0 else 0), inits
    full = dist.full_model_state(model)
    if rank == 0:
        torch.manual_seed(0)
        reference = initial_model(CFG).state_dict()
        assert full.keys() == reference.keys()
        for key, value in reference.items():
            assert torch.equal(full[key], value), key

    optimizer, _ = build_optimizer(model, OptimizerConfig(), CPU)
    step = TrainStep(
        model,
        optimizer,
        torch.amp.GradScaler("cpu", enabled=False),
        train_model=train_model,
        hardware=hw,
    )
    for seed in (1, 2):
        assert step(_batches(seed + rank), lr=1e-2).status == "ok"
    saved = dist.full_optimizer_state(model, optimizer)  # gathered to rank 0
    # a resume: rank 0 reads trainer.pt, the others get all but the optimizer state from it
    state = dist.without_optimizer({"optimizer": saved, "step": 2} if rank == 0 else None)
    assert state["step"] == 2 and (state["optimizer"] != {}) == (rank == 0)
    fresh, _ = build_optimizer(model, OptimizerConfig(), CPU)
    dist.load_full_optimizer_state(model, fresh, state["optimizer"])
    old, new = optimizer.state_dict()["state"], fresh.state_dict()["state"]
    assert old.keys() == new.keys()
    for i in old:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(dist.local_tensor(old[i][name]), dist.local_tensor(new[i][name])), (i, name)


def _gradient_bytes(model) -> int:
    """The gradient memory this rank holds: its shards of ``.grad``, and the unsharded
    gradients FSDP2 keeps between micro-batches when it does not reduce-scatter."""
    from torch.distributed.fsdp import FSDPModule

    held = sum(
        dist_local(p.grad).numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None
    )
    for module in model.modules():
        group = module._get_fsdp_state()._fsdp_param_group if isinstance(module, FSDPModule) else None
        for fp in group.fsdp_params if group is not None else []:
            for grad in (
                getattr(getattr(fp, "_unsharded_param", None), "grad", None),
                fp.unsharded_accumulated_grad,
            ):
                held += grad.numel() * grad.element_size() if grad is not None else 0
    return held


def dist_local(t):
    return t.to_local() if hasattr(t, "to_local") else t


def _fsdp_accumulation_rank(rank: int) -> None:
    """--grad-accum under FSDP: every micro-batch's gradients are reduce-scattered, so a rank
    never holds more than its shard of them (what ``train.memory.step_memory`` counts), and the
    accumulated gradient is that of one big batch."""
    from lmforge.train.hardware import Hardware
    from lmforge.train.optim import build_optimizer
    from lmforge.train.parallel import build_train_model, initial_model
    from lmforge.train.step import TrainStep

    torch.manual_seed(0)
    hw = Hardware(CPU, "fp32", "fsdp", rank, 2)
    model, train_model = build_train_model(CFG, hw, compiled=False)
    optimizer, _ = build_optimizer(model, OptimizerConfig(), CPU)
    step = TrainStep(
        model, optimizer, torch.amp.GradScaler("cpu", enabled=False), train_model=train_model, hardware=hw
    )
    full_bytes = 4 * sum(p.numel() for p in model.parameters())
    micro = _batches(10 + rank)
    held = []
    for i, (x, y) in enumerate(micro):
        step.forward_backward(x, y, last=i == len(micro) - 1, accum=len(micro))
        held.append(_gradient_bytes(model))
    assert max(held) <= full_bytes // 2 + 64, (held, full_bytes)  # a shard (and padding), never all
    grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
    # the reference: one process, all 4 micro-batches (both ranks' 2) as one mean
    torch.manual_seed(0)
    reference = initial_model(CFG)
    every = _batches(10) + _batches(11)
    sum(reference(x, y)[1] for x, y in every).div(len(every)).backward()
    for n, p in reference.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


def _ddp_rank(rank: int) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from lmforge.train.hardware import Hardware
    from lmforge.train.optim import build_optimizer
    from lmforge.train.parallel import build_train_model
    from lmforge.train.step import TrainStep

    hw = Hardware(CPU, "fp32", "ddp", rank, 2)
    real_compile = torch.compile
    # the graph capture and DDPOptimizer's bucket split, without inductor's C++ build (minutes here)
    torch.compile = lambda m, **kw: real_compile(m, backend="aot_eager")
    results = []
    try:
        for compiled in (False, True):
            torch.manual_seed(0)
            model, train_model = build_train_model(CFG, hw, compiled=compiled)
            if compiled:  # compiled around DDP, not DDP around a compiled module
                assert isinstance(train_model._orig_mod, DDP) and train_model._orig_mod.module is model
            else:
                assert isinstance(train_model, DDP)
            optimizer, _ = build_optimizer(model, OptimizerConfig(), CPU)
            step = TrainStep(
                model,
                optimizer,
                torch.amp.GradScaler("cpu", enabled=False),
                train_model=train_model,
                hardware=hw,
            )
            losses = [step(_batches(seed + rank), lr=1e-2).loss.item() for seed in (1, 2, 3)]
            results.append((losses, [p.detach().clone() for p in model.parameters()]))
    finally:
        torch.compile = real_compile
    (eager_losses, eager_params), (compiled_losses, compiled_params) = results
    assert compiled_losses == pytest.approx(eager_losses, abs=1e-5)
    for a, b in zip(eager_params, compiled_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _rank_main(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        _fsdp_rank(rank)
        _fsdp_accumulation_rank(rank)
        _ddp_rank(rank)
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp_placement_optimizer_broadcast_and_compiled_ddp_on_two_ranks():
    # one pair of processes for all the checks: starting one costs seconds of imports
    pytest.importorskip("torch.distributed.fsdp", reason="FSDP2 needs torch >= 2.6")
    mp.spawn(_rank_main, args=(_free_port(),), nprocs=2, join=True)
