"""One optimizer step (``lmforge.train.step``) on a tiny GPT, without a TrainingManager."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from lmforge.config import ModelConfig, OptimizerConfig
from lmforge.model.gpt import GPT
from lmforge.train.optim import build_optimizer
from lmforge.train.recovery import Recovery
from lmforge.train.step import TrainStep


def _setup(fp16_scaler: bool = False, max_grad_norm: float = 1.0):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0))
    optimizer, _ = build_optimizer(model, OptimizerConfig(), torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", enabled=fp16_scaler)
    return model, optimizer, TrainStep(model, optimizer, scaler, max_grad_norm=max_grad_norm)


def _batches(n: int = 2):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randint(0, 64, (2, 16), generator=g), torch.randint(0, 64, (2, 16), generator=g))
        for _ in range(n)
    ]


def _snapshot(model, optimizer):
    params = [p.detach().clone() for p in model.parameters()]
    state = {k: {n: t.clone() for n, t in v.items()} for k, v in optimizer.state.items()}
    return params, state


def _assert_untouched(model, optimizer, snapshot):
    params, state = snapshot
    for before, p in zip(params, model.parameters(), strict=True):
        assert torch.equal(before, p)
    assert state.keys() <= optimizer.state.keys()
    for k, v in optimizer.state.items():
        for n, t in v.items():
            if k in state:
                assert torch.equal(state[k][n], t)
            else:  # the fused kernel makes its state on a skipped first step: a fresh one
                assert not t.any(), n
    assert all(p.grad is None for p in model.parameters())


def test_a_finite_step_updates_the_weights():
    model, optimizer, step = _setup()
    before = [p.detach().clone() for p in model.parameters()]
    out = step(_batches(), lr=1e-2)
    assert out.status == "ok" and out.stop_signal is None and out.layer_norms is None
    assert torch.isfinite(out.loss) and out.grad_norm.item() > 0
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert optimizer.param_groups[0]["lr"] == 1e-2
    assert all(p.grad is None for p in model.parameters())  # dropped for the next step


def test_a_nan_loss_updates_nothing():
    model, optimizer, step = _setup()
    step(_batches(), lr=1e-3)  # one good step: the optimizer has state
    snapshot = _snapshot(model, optimizer)
    handle = model.register_forward_hook(lambda m, args, out: (out[0], out[1] * float("nan")))
    out = step(_batches(), lr=1e-3)
    handle.remove()
    assert out.status == "bad" and not torch.isfinite(out.loss)
    _assert_untouched(model, optimizer, snapshot)


def test_an_infinite_gradient_updates_nothing():
    model, optimizer, step = _setup()
    step(_batches(), lr=1e-3)
    snapshot = _snapshot(model, optimizer)
    handle = model.transformer.wte.weight.register_hook(lambda g: g * float("inf"))
    out = step(_batches(), lr=1e-3)
    handle.remove()
    assert out.status == "bad" and torch.isfinite(out.loss) and not torch.isfinite(out.grad_norm)
    _assert_untouched(model, optimizer, snapshot)


def test_an_fp16_overflow_is_skipped_and_lowers_the_scale():
    model, optimizer, step = _setup(fp16_scaler=True)
    scale = step.scaler.get_scale()
    snapshot = _snapshot(model, optimizer)
    handle = model.transformer.wte.weight.register_hook(lambda g: g * float("inf"))
    out = step(_batches(), lr=1e-3)
    handle.remove()
    assert out.status == "overflow" and step.scaler.get_scale() < scale
    _assert_untouched(model, optimizer, snapshot)


def _nan_loss(model):
    return model.register_forward_hook(lambda m, args, out: (out[0], out[1] * float("nan")))


def test_fp16_a_bad_step_is_skipped_then_training_goes_on():
    model, optimizer, step = _setup(fp16_scaler=True)
    step(_batches(), lr=1e-3)
    scale = step.scaler.get_scale()
    handle = _nan_loss(model)
    assert step(_batches(), lr=1e-3).status == "bad"
    handle.remove()
    assert step.scaler.get_scale() == scale  # a NaN loss is not an overflow: the scale stays
    before = [p.detach().clone() for p in model.parameters()]
    assert step(_batches(), lr=1e-3).status == "ok"  # unscale_ no longer raises
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_fp16_bad_steps_roll_back_then_training_goes_on_as_if_they_never_happened():
    model, optimizer, step = _setup(fp16_scaler=True)
    twin, _, twin_step = _setup(fp16_scaler=True)
    for s in (step, twin_step):
        s(_batches(), lr=1e-3)
    saved = copy.deepcopy((model.state_dict(), optimizer.state_dict(), step.scaler.state_dict()))
    recovery = Recovery(2)
    handle = _nan_loss(model)
    decisions = [recovery.decide(step(_batches(), lr=1e-3), 1, 64, Path("step-1")) for _ in range(2)]
    handle.remove()
    due = [d.action == "roll_back" for d in decisions]
    assert due == [False, True]

    # the loop's part of a rollback: load the checkpoint, then record it
    model.load_state_dict(saved[0])
    optimizer.load_state_dict(saved[1])
    step.scaler.load_state_dict(saved[2])
    done = recovery.rolled_back(decisions[-1].checkpoint, 1, 1, 64)
    records = [d.record for d in decisions] + [done.record]
    assert [r["kind"] for r in records] == ["bad_step", "bad_step", "rollback"]
    assert step(_batches(), lr=1e-3).status == "ok"
    assert twin_step(_batches(), lr=1e-3).status == "ok"
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    assert step.scaler.get_scale() == twin_step.scaler.get_scale()


def test_accumulation_equals_one_big_batch():
    (x1, y1), (x2, y2) = _batches()
    whole = [(torch.cat([x1, x2]), torch.cat([y1, y2]))]
    model_a, _, one = _setup()
    model_b, _, two = _setup()
    out_a, out_b = one(whole, lr=1e-2), two([(x1, y1), (x2, y2)], lr=1e-2)
    assert out_a.loss.item() == pytest.approx(out_b.loss.item(), abs=1e-6)
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_layer_norms_cover_every_block():
    model, _, step = _setup()
    out = step(_batches(), lr=1e-3, layer_norms=True)
    assert set(out.layer_norms) == {"wte", "wpe", "h.0", "h.1", "ln_f"}
    total = torch.stack(list(out.layer_norms.values())).square().sum().sqrt()
    torch.testing.assert_close(total, out.grad_norm)
