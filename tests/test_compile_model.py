"""Both architectures under ``torch.compile`` as a GPU run would use them, checked on the CPU:
one graph (``fullgraph=True``, the ``aot_eager`` backend: no C++ build) with the GPU's loss
path, equal to eager; no graph breaks; no recompilation from the rotary tables; the KV cache in
the compute dtype."""

from __future__ import annotations

import pytest
import torch

import lmforge.model.loss as loss_module
from lmforge.config import ModelConfig
from lmforge.model import build_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    modern = dict(arch="modern", bias=False, qk_norm=True, logit_softcap=15.0, n_kv_head=1)
    config = ModelConfig(
        vocab_size=97,
        block_size=16,
        n_layer=2,
        n_head=2,
        n_embd=32,
        dropout=0.0,
        pad_vocab_multiple=64,
        **(modern if arch == "modern" else {}),
    )
    model = build_model(config)
    with torch.no_grad():  # the modern head starts at zero: give every weight a value
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture
def gpu_loss_path(monkeypatch):
    """The loss as CUDA runs it: one block per chunk, traced into the model's graph."""
    monkeypatch.setattr(loss_module, "BLOCK_ELEMENTS", {})
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 97, (2, 16), generator=g), torch.randint(0, 97, (2, 16), generator=g)


@pytest.mark.parametrize("arch", ["gpt", "modern"])
def test_the_model_compiles_whole_under_bf16_autocast_and_equals_eager(arch, gpu_loss_path):
    model = _model(arch)
    idx, targets = _batch()

    def step(m):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = m(idx, targets)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        return loss, grads

    eager_loss, eager_grads = step(model)
    compiled_loss, compiled_grads = step(torch.compile(model, backend="aot_eager", fullgraph=True))
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-2, atol=1e-2)
    for c, e in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(c, e, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("arch", ["gpt", "modern"])
def test_the_model_forward_has_no_graph_breaks(arch, gpu_loss_path):
    model = _model(arch)
    idx, targets = _batch()
    explained = torch._dynamo.explain(model)(idx, targets)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@pytest.mark.slow  # ~25 s on a loaded 2-core machine: dynamic-shape tracing
def test_rotary_tables_cause_no_recompilation(gpu_loss_path):
    model = _model("modern").eval()
    compiled = torch.compile(model, backend="aot_eager", dynamic=True)
    with torch._dynamo.config.patch(error_on_recompile=True), torch.no_grad():
        for T in (8, 12):  # two lengths up to the block size: one graph for both
            idx = torch.randint(0, 97, (1, T))
            torch.testing.assert_close(compiled(idx)[0], model(idx)[0])


@pytest.mark.parametrize("arch", ["gpt", "modern"])
def test_the_kv_cache_is_in_the_compute_dtype(arch):
    model = _model(arch)
    assert model.new_kv_cache(1).k.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cache = model.new_kv_cache(2, max_len=8)
        assert cache.k.dtype == cache.v.dtype == torch.bfloat16
        logits, _ = model(torch.randint(0, 97, (2, 3)), kv_cache=cache)  # keys and values fit it
    assert logits.shape == (2, 1, 97) and cache.length == 3
