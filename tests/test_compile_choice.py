"""compile=auto and the fallback to eager when compilation fails (issue 14)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.exc import BackendCompilerFailed
from torch._inductor.exc import CppCompileError, InductorError

from lmforge.config import ModelConfig
from lmforge.model import GPT
from lmforge.train.step import TrainStep, is_compiler_failure


def _no_gxx() -> Exception:
    """What inductor raises without a working C++ toolchain (torch >= 2.7)."""
    return InductorError(CppCompileError(["g++", "kernel.cpp"], "g++: not found"), None)


class _FailsToCompile(torch.nn.Module):
    """Stands in for a compiled module whose first call raises ``error``."""

    def __init__(self, error: Exception | None = None) -> None:
        super().__init__()
        self.error = error

    def forward(self, *args, **kwargs):
        raise self.error if self.error is not None else _no_gxx()


def _step(model, fall_back_to_eager, error=None):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return TrainStep(
        model, opt, scaler, train_model=_FailsToCompile(error), fall_back_to_eager=fall_back_to_eager
    )


def _tiny():
    return GPT(ModelConfig(vocab_size=50, block_size=8, n_layer=1, n_head=1, n_embd=8, dropout=0.0))


def _batches():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 50, (2, 8), generator=g)
    return [(x, x.roll(-1, 1))]


def test_a_failed_compilation_falls_back_to_eager_once():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50, block_size=8, n_layer=1, n_head=1, n_embd=8, dropout=0.0))
    before = model.transformer.wte.weight.clone()
    step = _step(model, True)
    out = step(_batches(), lr=1e-3)
    errors = [out.compile_error]  # the step says so, once
    assert out.status == "ok" and len(errors) == 1 and "CppCompileError" in str(errors[0])
    assert step.train_model is model and not torch.equal(before, model.transformer.wte.weight)
    again = step(_batches(), lr=1e-3)
    assert again.status == "ok" and again.compile_error is None  # eager from now on


def test_without_a_fallback_the_error_stands():
    model = GPT(ModelConfig(vocab_size=50, block_size=8, n_layer=1, n_head=1, n_embd=8, dropout=0.0))
    step = _step(model, False)
    with pytest.raises(InductorError, match="CppCompileError"):
        step(_batches(), lr=1e-3)


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA error: device-side assert triggered"),
        torch.distributed.DistBackendError("NCCL error in: ProcessGroupNCCL.cpp, unhandled system error"),
        ValueError("a bug in the step"),
    ],
    ids=["oom", "device-assert", "nccl", "bug"],
)
def test_only_compiler_failures_fall_back(error):
    """Anything but a compiler failure propagates from the first step, with its own message."""
    model = _tiny()
    before = model.transformer.wte.weight.clone()
    step = _step(model, True, error)
    with pytest.raises(type(error)) as raised:
        step(_batches(), lr=1e-3)
    assert raised.value is error and not isinstance(step.train_model, GPT)  # no eager retry
    assert torch.equal(before, model.transformer.wte.weight)


def test_what_counts_as_a_compiler_failure():
    assert is_compiler_failure(_no_gxx())
    assert is_compiler_failure(BackendCompilerFailed(lambda: None, RuntimeError("triton missing"), None))
    assert is_compiler_failure(CppCompileError(["g++"], "not found"))
    # Inductor ran out of memory benchmarking its kernels: an out-of-memory all the same
    oom = torch.OutOfMemoryError("CUDA out of memory")
    assert not is_compiler_failure(InductorError(oom, None))
    assert not is_compiler_failure(RuntimeError("CppCompileError: g++ not found"))  # in name only


def test_train_with_a_broken_compiler_warns_once_and_trains(cli, train_workspace, train_flags, monkeypatch):
    import lmforge.distributed as dist

    monkeypatch.setattr(dist, "apply_compile", lambda model, whole=True: _FailsToCompile())
    result = cli("train", *train_flags(steps=3, eval_interval=3, run="nocc"), "--compile", "on")
    assert result.exit_code == 0, result.output
    assert (
        result.stderr.count("torch.compile failed (InductorError: CppCompileError: C++ compile error)") == 1
    )
    assert "precision fp32 (--dtype fp32) | compile on (--compile on)" in result.stderr
