"""compile=auto and the fallback to eager when compilation fails (issue 14)."""

from __future__ import annotations

import torch

from lmforge.config import ModelConfig
from lmforge.model import GPT
from lmforge.train.step import TrainStep


class _FailsToCompile(torch.nn.Module):
    """Stands in for a compiled module whose first call raises, as inductor does without a
    working C++ toolchain."""

    def forward(self, *args, **kwargs):
        raise RuntimeError("CppCompileError: g++ not found\nmore lines")


def _step(model, fall_back_to_eager):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return TrainStep(model, opt, scaler, train_model=_FailsToCompile(), fall_back_to_eager=fall_back_to_eager)


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
    try:
        step(_batches(), lr=1e-3)
    except RuntimeError as exc:
        assert "CppCompileError" in str(exc)
    else:
        raise AssertionError("the compile error was swallowed")


def test_train_with_a_broken_compiler_warns_once_and_trains(cli, train_workspace, train_flags, monkeypatch):
    import lmforge.distributed as dist

    monkeypatch.setattr(dist, "apply_compile", lambda model, whole=True: _FailsToCompile())
    result = cli("train", *train_flags(steps=3, eval_interval=3, run="nocc"), "--compile", "on")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("torch.compile failed (RuntimeError: CppCompileError: g++ not found)") == 1
    assert "precision fp32 (--dtype fp32) | compile on (--compile on)" in result.stderr
