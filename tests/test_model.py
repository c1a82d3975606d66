import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.presets import PRESETS

EXPECTED_PARAMS = {  # (total, without position embeddings)
    "gpt2": (124_439_808, 123_653_376),
    "gpt2-medium": (354_823_168, 353_774_592),
    "gpt2-large": (774_030_080, 772_719_360),
    "gpt2-xl": (1_557_611_200, 1_555_972_800),
    "tiny": (16_090_880, 16_025_344),
}


@pytest.mark.parametrize("preset", sorted(EXPECTED_PARAMS))
def test_parameter_counts(preset):
    with torch.device("meta"):
        model = GPT(PRESETS[preset])
    assert (model.get_num_params(non_embedding=False), model.get_num_params()) == EXPECTED_PARAMS[preset]


def small(**kw) -> ModelConfig:
    return ModelConfig(
        **{"vocab_size": 97, "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.0, **kw}
    )


def test_forward_shapes_and_loss():
    torch.manual_seed(0)
    model = GPT(small())
    idx = torch.randint(0, 97, (3, 16))
    logits, loss = model(idx)
    assert logits.shape == (3, 16, 97) and loss is None
    logits, loss = model(idx, idx)
    assert loss.ndim == 0


def test_loss_at_init_is_about_ln_vocab():
    torch.manual_seed(0)
    model = GPT(small(vocab_size=5000, n_embd=64, n_head=4))
    idx = torch.randint(0, 5000, (4, 32))
    _, loss = model(idx, torch.randint(0, 5000, (4, 32)))
    assert abs(loss.item() - math.log(5000)) < 0.1


def test_causal_masking():
    torch.manual_seed(0)
    model = GPT(small()).eval()
    idx = torch.randint(0, 97, (1, 20))
    changed = idx.clone()
    changed[0, 12] = (idx[0, 12] + 1) % 97
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_tied_weights_and_init():
    model = GPT(small(n_layer=4))
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.transformer.wte.weight.data_ptr() == model.lm_head.weight.data_ptr()
    proj = torch.cat([b.attn.c_proj.weight.flatten() for b in model.transformer.h])
    assert abs(proj.std().item() - 0.02 / math.sqrt(8)) < 0.002
    assert abs(model.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.002
    assert torch.all(model.transformer.h[0].attn.c_attn.bias == 0)


def test_hugging_face_parameter_names():
    names = set(dict(GPT(small(n_layer=1)).named_parameters()))
    assert {
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.h.0.ln_1.weight",
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.0.attn.c_proj.bias",
        "transformer.h.0.mlp.c_fc.weight",
        "transformer.h.0.mlp.c_proj.weight",
        "transformer.ln_f.bias",
    } <= names


def test_kv_cache_matches_full_forward():
    torch.manual_seed(0)
    model = GPT(small()).eval()
    idx = torch.randint(0, 97, (2, 12))
    full, _ = model(idx)
    cache = model.new_kv_cache(batch_size=2)
    logits, _ = model(idx[:, :5], kv_cache=cache)  # prefill
    torch.testing.assert_close(logits[:, -1], full[:, 4], atol=1e-5, rtol=1e-5)
    logits, _ = model(idx[:, 5:8], kv_cache=cache)  # several tokens after a prefix
    torch.testing.assert_close(logits[:, -1], full[:, 7], atol=1e-5, rtol=1e-5)
    for t in range(8, 12):  # one at a time
        logits, _ = model(idx[:, t : t + 1], kv_cache=cache)
        torch.testing.assert_close(logits[:, -1], full[:, t], atol=1e-5, rtol=1e-5)
    assert cache.length == 12


def test_context_overflow_is_an_error():
    model = GPT(small(block_size=8))
    with pytest.raises(ValueError, match="longer than the context of 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = GPT(small())
    ckpt = GPT(small(gradient_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 97, (2, 16))
    for m in (plain, ckpt):
        m.train()
        _, loss = m(idx, idx)
        loss.backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = GPT(small(dropout=0.5))
    idx = torch.randint(0, 97, (1, 16))
    model.eval()
    torch.testing.assert_close(model(idx)[0], model(idx)[0])
    model.train()
    assert not torch.allclose(model(idx)[0], model(idx)[0])


# ----------------------------------------------------------------------------- the chunked loss


def _plain_loss(x, weight, targets, vocab):
    logits = (x @ weight.t())[..., :vocab]
    return F.cross_entropy(logits.reshape(-1, vocab).float(), targets.reshape(-1), ignore_index=-1)


@pytest.mark.parametrize("padded_rows", [97, 128])  # without and with vocabulary padding
@pytest.mark.parametrize("chunk_elements", [97 * 7, 2**24])  # many chunks (the last one short); one
@pytest.mark.parametrize(
    "block_elements", [97 * 3, None]
)  # blocks of 8 rows (the fewest) in a chunk; the CPU's
def test_chunked_loss_equals_cross_entropy_values_and_gradients(padded_rows, chunk_elements, block_elements):
    from lmforge.model.loss import linear_cross_entropy

    torch.manual_seed(0)
    x = torch.randn(3, 50, 32, requires_grad=True)
    w = (0.1 * torch.randn(padded_rows, 32)).requires_grad_()  # logits of a model at init
    targets = torch.randint(0, 97, (3, 50))
    targets[0, :7] = -1  # ignored positions
    loss = linear_cross_entropy(
        x, w, targets, 97, chunk_elements=chunk_elements, block_elements=block_elements
    )
    (2.5 * loss).backward()  # a scaled upstream gradient, as loss / grad_accum gives
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    expected = _plain_loss(x, w, targets, 97)
    (2.5 * expected).backward()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)  # fp32 sums in another order
    torch.testing.assert_close(gx, x.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(gw, w.grad, rtol=0, atol=1e-6)
    assert not gw[97:].any()  # padded rows are never predicted


def test_chunked_loss_under_bf16_autocast_is_close_to_the_plain_one():
    from lmforge.model.loss import linear_cross_entropy

    torch.manual_seed(0)
    x = torch.randn(4, 64, 32, requires_grad=True)
    w = (0.1 * torch.randn(300, 32)).requires_grad_()
    targets = torch.randint(0, 300, (4, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(x, w, targets, 300, chunk_elements=300 * 50)
        expected = _plain_loss(x, w, targets, 300)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=0, atol=2e-3)
    loss.backward()
    assert x.grad.dtype == x.dtype and w.grad.dtype == w.dtype and torch.isfinite(w.grad).all()


@pytest.mark.parametrize("softcap", [0.0, 15.0])
@pytest.mark.parametrize("bf16", [False, True])
def test_chunked_loss_compiles_in_one_graph_as_on_a_gpu(softcap, bf16):
    """On a GPU the loss is one block per chunk and traced into the model's graph: the same
    values and gradients as eager (aot_eager: dynamo and autograd tracing, without a C++ build)."""
    from lmforge.model.loss import linear_cross_entropy

    torch.manual_seed(0)
    x = torch.randn(2, 40, 32, requires_grad=True)
    w = (0.5 * torch.randn(128, 32)).requires_grad_()
    targets = torch.randint(0, 97, (2, 40))
    targets[1, :5] = -1

    def loss_of(x, w):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            # one block per chunk, as CHUNK_ELEMENTS/BLOCK_ELEMENTS give on CUDA
            return linear_cross_entropy(
                x, w, targets, 97, chunk_elements=97 * 30, softcap=softcap, block_elements=2**30
            )

    eager = loss_of(x, w)
    gx, gw = torch.autograd.grad(eager, (x, w))
    compiled = torch.compile(loss_of, backend="aot_eager", fullgraph=True)(x, w)
    cx, cw = torch.autograd.grad(compiled, (x, w))
    tol = 1e-2 if bf16 else 1e-6
    torch.testing.assert_close(compiled, eager, rtol=tol, atol=tol)
    torch.testing.assert_close(cx, gx, rtol=tol, atol=tol)
    torch.testing.assert_close(cw, gw, rtol=tol, atol=tol)


def test_model_loss_equals_cross_entropy_of_its_logits():
    torch.manual_seed(0)
    model = GPT(small(pad_vocab_multiple=64))
    idx, targets = torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16))
    logits, _ = model(idx)
    no_logits, loss = model(idx, targets)
    assert no_logits is None  # with targets the (B, T, vocab) logits are never made
    expected = F.cross_entropy(logits.reshape(-1, 97), targets.reshape(-1))
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)  # fp32 sums in another order
