"""Evaluation through the models' per-token losses (``loss_reduction="none"``): the same numbers
as the full logits gave, for both architectures and both protocols, without a (B, T, vocab)
tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from lmforge.config import ModelConfig
from lmforge.eval.evaluate import evaluate_tokens
from lmforge.eval.harness import rolling_loglikelihoods, score_pairs
from lmforge.eval.options import EvalOptions
from lmforge.model import build_model

V = 300


def _model(arch: str, pad: int = 1, block_size: int = 16) -> nn.Module:
    torch.manual_seed(0)
    modern = dict(arch="modern", bias=False, qk_norm=True, logit_softcap=15.0, n_kv_head=1)
    config = ModelConfig(
        vocab_size=V,
        block_size=block_size,
        n_layer=2,
        n_head=2,
        n_embd=32,
        dropout=0.0,
        pad_vocab_multiple=pad,
        **(modern if arch == "modern" else {}),
    )
    model = build_model(config)
    with torch.no_grad():  # the modern head starts at zero (uniform predictions): give it values
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


class FullLogits(nn.Module):
    """The old evaluation path, as a model: the (B, T, vocab) logits, their fp32 copy, and
    ``F.cross_entropy`` / ``argmax`` over them."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, x, y, loss_reduction="none", with_argmax=False):
        logits, _ = self.inner(x)
        logits = logits.float()
        nll = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-1, reduction="none")
        return logits.argmax(-1) == y, nll.view(y.shape)


@pytest.mark.parametrize("arch", ["gpt", "modern"])
@pytest.mark.parametrize("pad", [1, 64])
def test_token_losses_equal_cross_entropy_of_the_logits(arch, pad):
    model = _model(arch, pad)
    x = torch.randint(0, V, (3, 16))
    y = torch.randint(0, V, (3, 16))
    y[0, :9] = -1  # not scored
    y[2, :] = -1
    with torch.inference_mode():
        argmax, losses = model(x, y, loss_reduction="none", with_argmax=True)
        ref_argmax, ref = FullLogits(model)(x, y)
    assert losses.shape == y.shape and losses.dtype == torch.float32
    torch.testing.assert_close(losses, ref, rtol=1e-5, atol=1e-5)
    scored = y >= 0
    assert not losses[~scored].any() and not argmax[~scored].any()
    assert torch.equal(argmax[scored], ref_argmax[scored])


def test_a_bad_loss_reduction_is_refused():
    model = _model("gpt")
    x = torch.randint(0, V, (1, 4))
    with pytest.raises(ValueError, match="loss_reduction must be one of"):
        model(x, x, loss_reduction="sum")


@pytest.mark.parametrize("arch", ["gpt", "modern"])
@pytest.mark.parametrize("stride", [8, 16])
def test_stream_protocol_equals_the_full_logits_path(arch, stride):
    model = _model(arch, pad=64)
    tokens = np.random.default_rng(0).integers(0, V, 300)
    options = EvalOptions(block_size=16, stride=stride, batch_size=4)
    new = evaluate_tokens(model, tokens, options, eot_token=7)
    old = evaluate_tokens(FullLogits(model), tokens, options, eot_token=7)
    assert new.tokens == old.tokens == 299
    assert new.loss_sum == pytest.approx(old.loss_sum, rel=1e-5)
    assert new.eot_tokens == old.eot_tokens and new.eot_loss_sum == pytest.approx(old.eot_loss_sum, rel=1e-5)


@pytest.mark.parametrize("arch", ["gpt", "modern"])
def test_harness_protocol_equals_the_full_logits_path(arch):
    model = _model(arch)
    rng = np.random.default_rng(1)
    pairs = [
        ([1, *rng.integers(0, V, n)], list(rng.integers(0, V, m))) for n, m in [(3, 1), (20, 5), (0, 16)]
    ]
    with torch.inference_mode():
        full, _ = model(torch.tensor([pairs[0][0]]))
    best = int(full[0, -1].argmax())
    pairs.append((pairs[0][0], [best]))  # a greedy continuation
    new = score_pairs(model, pairs, EvalOptions(batch_size=2))
    old = score_pairs(FullLogits(model), pairs, EvalOptions(batch_size=2))
    assert [g for _, g in new] == [g for _, g in old] and new[-1][1]
    assert np.allclose([v for v, _ in new], [v for v, _ in old], rtol=1e-5, atol=1e-5)
    docs = [list(rng.integers(0, V, n)) for n in (5, 40)]
    new_docs = rolling_loglikelihoods(model, docs, EvalOptions(batch_size=2), prefix=1)
    old_docs = rolling_loglikelihoods(FullLogits(model), docs, EvalOptions(batch_size=2), prefix=1)
    assert np.allclose(new_docs, old_docs, rtol=1e-5)


class LargestTensor(TorchDispatchMode):
    """The element count of the largest tensor any operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("arch", ["gpt", "modern"])
def test_evaluation_makes_no_batch_by_context_by_vocab_tensor(arch):
    model = _model(arch, block_size=32)
    tokens = np.random.default_rng(0).integers(0, V, 400)
    B, T = 4, 32
    with LargestTensor() as new:
        evaluate_tokens(model, tokens, EvalOptions(block_size=T, stride=T // 2, batch_size=B))
    with LargestTensor() as old:
        evaluate_tokens(FullLogits(model), tokens, EvalOptions(block_size=T, stride=T // 2, batch_size=B))
    assert old.largest >= B * T * V  # the recorder sees the old path's logits
    assert new.largest < B * T * V


@pytest.mark.parametrize("softcap", [0.0, 15.0])
@pytest.mark.parametrize(
    "chunk_elements, block_elements", [(128 * 7, 128 * 3), (128 * 7, 2**30), (2**24, None)]
)
def test_token_losses_in_chunks_and_blocks(softcap, chunk_elements, block_elements):
    """Several chunks, the last one short, with blocks that do not divide them (the CPU's), or
    one block per chunk (the GPU's)."""
    from lmforge.model.loss import token_losses

    torch.manual_seed(0)
    x = torch.randn(3, 50, 32)
    w = torch.randn(128, 32)  # 97 real rows, padded to 128
    targets = torch.randint(0, 97, (3, 50))
    targets[0, :7] = -1
    targets[2, 20:] = -1
    losses, argmax = token_losses(
        x, w, targets, 97, softcap, True, chunk_elements=chunk_elements, block_elements=block_elements
    )
    logits = x @ w[:97].t()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    expected = F.cross_entropy(logits.view(-1, 97), targets.view(-1), ignore_index=-1, reduction="none")
    torch.testing.assert_close(losses, expected.view(3, 50), rtol=1e-5, atol=1e-5)
    scored = targets >= 0
    assert torch.equal(argmax, (logits.argmax(-1) == targets) & scored)
