"""The chunked loss's GPU path, checked on the CPU: aligned head matmuls over the padded
vocabulary, whole GEMM tiles of rows, and fp16 gradients that keep the small probabilities."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from lmforge.model.loss import GPU_CHUNK_ROW_MULTIPLE, chunk_rows_for, linear_cross_entropy

MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.addmm_.default}


class MatmulShapes(TorchDispatchMode):
    """The operand shapes of every matrix multiplication."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[tuple[int, ...], ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MATMULS:
            self.shapes.append(tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor)))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("softcap", [0.0, 15.0])
def test_gpu_path_head_matmuls_use_every_padded_row(softcap):
    torch.manual_seed(0)
    V, padded, C = 97, 128, 32  # a 97-token vocabulary padded to a multiple of 64
    x = torch.randn(2, 40, C, requires_grad=True)
    w = torch.randn(padded, C)
    w[V:] = 0.0  # padded rows start (and stay) at zero in the models
    w.requires_grad_()
    targets = torch.randint(0, V, (2, 40))
    targets[0, :3] = -1
    with MatmulShapes() as recorded:
        # block_elements beyond a chunk: one block per chunk, the path CUDA takes
        loss = linear_cross_entropy(
            x, w, targets, V, chunk_elements=padded * 30, softcap=softcap, block_elements=2**30
        )
        loss.backward()
    assert len(recorded.shapes) == 3 * 3  # three chunks, three matmuls each
    for shapes in recorded.shapes:
        dims = {d for shape in shapes for d in shape}
        assert padded in dims and V not in dims, shapes  # the vocabulary dimension is 128, aligned
    gx, gw = x.grad, w.grad
    x.grad = w.grad = None
    logits = x @ w[:V].t()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    expected = F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-1)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx, x.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(gw, w.grad, rtol=0, atol=1e-6)
    assert not gw[V:].any()  # the masked columns give the padded rows no gradient


def test_gpu_chunks_are_whole_tiles_of_rows():
    for elements, rows in [(2**26, 50304), (2**26, 128), (1000, 50304), (2**20, 97)]:
        n = chunk_rows_for(elements, rows, "cuda")
        assert n % GPU_CHUNK_ROW_MULTIPLE == 0 and n >= GPU_CHUNK_ROW_MULTIPLE
        assert n <= max(GPU_CHUNK_ROW_MULTIPLE, elements // rows)
    assert chunk_rows_for(2**26, 50304, "cuda") == 1280  # 1334 rounded down
    assert chunk_rows_for(1000, 97, "cpu") == 10  # the CPU keeps its rows


def _relative_errors(grad: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    return (grad - exact).abs() / exact.abs().clamp_min(1e-30)


def test_fp16_keeps_the_small_head_gradients_like_a_grad_scaler():
    """Under fp16 the logits' gradient is made in forward, before any loss scale: sharp logits
    (most probabilities far below fp16's smallest normal, 6e-5) must still reach the head's
    gradient as they do through F.cross_entropy under a GradScaler's scale."""
    torch.manual_seed(0)
    N, C, V = 64, 32, 1000
    x = torch.randn(N, C, requires_grad=True)
    w = (1.5 * torch.randn(V, C)).requires_grad_()
    targets = torch.randint(0, V, (N,))
    _, exact_w = torch.autograd.grad(F.cross_entropy(x @ w.t(), targets), (x, w))  # fp32
    scale = 2.0**16  # GradScaler's initial scale
    with torch.autocast("cpu", dtype=torch.float16):
        reference = F.cross_entropy(x @ w.t(), targets)
        loss = linear_cross_entropy(x, w, targets, V, block_elements=2**30)
    _, reference_w = torch.autograd.grad(reference * scale, (x, w))
    _, grad_w = torch.autograd.grad(loss * scale, (x, w))
    assert abs(loss.item() - reference.item()) < 1e-3
    reference_err = _relative_errors(reference_w / scale, exact_w)
    err = _relative_errors(grad_w / scale, exact_w)
    assert (grad_w == 0).sum() == (reference_w == 0).sum() == 0  # nothing flushed to zero
    assert err.quantile(0.99) < 1.5 * reference_err.quantile(0.99)
