"""The modern architecture (``--arch modern``): shapes, causality, rotary + KV cache, bounds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.model import GPT, ModernGPT, build_model
from lmforge.model.loss import linear_cross_entropy


def _config(**changes) -> ModelConfig:
    base = dict(
        vocab_size=97,
        block_size=24,
        n_layer=2,
        n_head=4,
        n_embd=32,
        dropout=0.0,
        arch="modern",
        bias=False,
        qk_norm=True,
        logit_softcap=15.0,
    )
    return ModelConfig(**{**base, **changes})


def _randomised(model: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    # the zero-initialised projections and head make every logit equal; give them values
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model.eval()


def test_build_model_picks_the_class_from_the_config():
    assert type(build_model(_config())) is ModernGPT
    assert type(build_model(ModelConfig(vocab_size=97, block_size=8, n_layer=1, n_head=2, n_embd=8))) is GPT


def test_shapes_untied_zero_head_and_no_biases():
    model = ModernGPT(_config(n_kv_head=2))
    names = dict(model.named_parameters())
    assert "transformer.wpe.weight" not in names and not any(n.endswith(".bias") for n in names)
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert torch.count_nonzero(model.lm_head.weight) == 0
    assert all(torch.count_nonzero(p) == 0 for n, p in names.items() if n.endswith("c_proj.weight"))
    assert names["transformer.h.0.attn.c_k.weight"].shape == (2 * 8, 32)  # 2 kv heads of 8
    idx = torch.randint(0, 97, (3, 10))
    logits, none = model(idx)
    assert logits.shape == (3, 10, 97) and none is None
    # zero head: uniform prediction, the loss is log(vocab)
    _, loss = model(idx, idx)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(97.0)).item(), abs=1e-5)
    # parameters: embedding + head + per layer (q, k, v, proj, fc, fc-proj)
    per_layer = 32 * 32 + 2 * (16 * 32) + 32 * 32 + 2 * (4 * 32 * 32)
    assert model.get_num_params() == 2 * 97 * 32 + 2 * per_layer


def test_a_future_token_never_changes_an_earlier_logit():
    model = _randomised(ModernGPT(_config(n_kv_head=2)))
    idx = torch.randint(0, 97, (2, 16))
    changed = idx.clone()
    changed[:, 9:] = torch.randint(0, 97, (2, 7))
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.equal(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


@pytest.mark.parametrize("n_kv_head", [0, 2, 1])
def test_rotary_kv_cache_gives_the_no_cache_logits(n_kv_head):
    model = _randomised(ModernGPT(_config(n_kv_head=n_kv_head)))
    idx = torch.randint(0, 97, (2, 20))
    full, _ = model(idx)
    for prompt in (1, 7):
        cache = model.new_kv_cache(2)
        logits, _ = model(idx[:, :prompt], kv_cache=cache)
        got = [logits[:, -1]]
        for t in range(prompt, 20):
            logits, _ = model(idx[:, t : t + 1], kv_cache=cache)
            got.append(logits[:, -1])
        torch.testing.assert_close(torch.stack(got, 1), full[:, prompt - 1 :], atol=1e-5, rtol=1e-5)


def test_greedy_generation_with_and_without_cache_is_identical():
    model = _randomised(ModernGPT(_config()))
    prompt = torch.randint(0, 97, (1, 5))
    cached, plain = prompt.clone(), prompt.clone()
    cache = model.new_kv_cache(1)
    logits, _ = model(cached, kv_cache=cache)
    for _ in range(12):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        cached = torch.cat([cached, nxt], 1)
        logits, _ = model(nxt, kv_cache=cache)
        plain = torch.cat([plain, model(plain)[0][:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(cached, plain)


def test_softcap_bounds_the_logits():
    model = _randomised(ModernGPT(_config(logit_softcap=3.0)), std=2.0)
    logits, _ = model(torch.randint(0, 97, (2, 12)))
    assert logits.abs().max() <= 3.0 and logits.abs().max() > 2.5  # large weights: pressed to the cap
    uncapped, _ = _randomised(ModernGPT(_config(logit_softcap=0.0)), std=2.0)(torch.randint(0, 97, (2, 12)))
    assert uncapped.abs().max() > 10.0


def test_qk_norm_bounds_the_attention_scores(monkeypatch):
    import lmforge.model.modern as modern

    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen.append((q, k))
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(modern.F, "scaled_dot_product_attention", spy)
    model = _randomised(ModernGPT(_config()), std=3.0)
    model(torch.randint(0, 97, (2, 12)))
    hs = 8
    for q, k in seen:
        # every head's q and k has RMS 1, so |q . k| / sqrt(hs) <= sqrt(hs) (Cauchy-Schwarz)
        torch.testing.assert_close(q.square().mean(-1), torch.ones(q.shape[:-1]), atol=1e-4, rtol=0)
        scores = (q @ k.transpose(-1, -2)) / hs**0.5
        assert scores.abs().max() <= hs**0.5 + 1e-4


# 5: the bounded path (no max-subtraction); 80: logits up to 80, where exp needs the max taken off.
# 10 rows per chunk, in blocks of 8 and 2
@pytest.mark.parametrize("softcap, scale", [(5.0, 3.0), (80.0, 30.0)])
def test_softcap_loss_gradient_is_exact(softcap, scale):
    torch.manual_seed(0)
    x = torch.randn(37, 16, dtype=torch.float32, requires_grad=True)
    w = (torch.randn(70, 16) * scale).requires_grad_()
    t = torch.randint(0, 60, (37,))
    t[3] = -1
    loss = linear_cross_entropy(x, w, t, 60, chunk_elements=600, softcap=softcap, block_elements=180)
    loss.backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    ref = F.cross_entropy(softcap * torch.tanh((x @ w[:60].t()) / softcap), t, ignore_index=-1)
    ref.backward()
    assert torch.isfinite(loss) and abs(loss.item() - ref.item()) < 1e-5 * max(1.0, ref.item())
    torch.testing.assert_close(gx, x.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw, w.grad, rtol=1e-5, atol=1e-6)
    assert not gw[60:].any()  # padded rows are never predicted


def test_bad_combinations_are_refused_with_one_line():
    with pytest.raises(ConfigError, match=r"--n-kv-head \(3\) must divide --n-head \(4\)"):
        _config(n_kv_head=3)
    with pytest.raises(ConfigError, match="--qk-norm needs --arch modern"):
        ModelConfig(qk_norm=True)
    with pytest.raises(ConfigError, match="--logit-softcap needs --arch modern"):
        ModelConfig(logit_softcap=15.0)
    with pytest.raises(ConfigError, match="--arch modern has no biases"):
        _config(bias=True)
    with pytest.raises(ConfigError, match="even head size"):
        _config(n_embd=36, n_head=4)
