"""Real GPU tests (marker ``gpu``; skipped without CUDA): bf16 and fp16 steps, an fp16 step with a
non-finite loss skipped and training going on, compile on/off equal within bf16's tolerance, fused
AdamW, KV-cache generation equal to no cache, evaluation, and 2 NCCL ranks where 2 GPUs exist.
``benchmarks/gpu_check.sh`` runs them with ``pytest -m gpu``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmforge.config import ModelConfig, OptimizerConfig
from lmforge.model.gpt import GPT
from lmforge.train.hardware import Hardware
from lmforge.train.optim import build_optimizer
from lmforge.train.step import TrainStep

# LMFORGE_GPU_TESTS_DEVICE=cpu runs the single-device tests' logic on the CPU (slowly, in emulated
# bf16/fp16 on most CPUs), so that a change to the training path can be checked without a GPU.
ON = os.environ.get("LMFORGE_GPU_TESTS_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(ON == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device(ON, 0) if ON == "cuda" else torch.device(ON)
REPO = Path(__file__).resolve().parents[1]


def _model(seed: int = 0, vocab: int = 512) -> GPT:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=vocab, block_size=64, n_layer=2, n_head=4, n_embd=128, dropout=0.0)
    return GPT(config).to(CUDA)


def _step(model: GPT, dtype: str | None) -> TrainStep:
    optimizer, _ = build_optimizer(model, OptimizerConfig(), CUDA)
    scaler = torch.amp.GradScaler(CUDA.type, enabled=dtype == "fp16")
    return TrainStep(model, optimizer, scaler, hardware=Hardware(CUDA, dtype or "fp32"), max_grad_norm=1.0)


def _batches(n: int = 2, vocab: int = 512, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [tuple(torch.randint(0, vocab, (4, 64), generator=g).to(CUDA) for _ in range(2)) for _ in range(n)]


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_steps_lower_the_loss(dtype):
    model = _model()
    step = _step(model, dtype)
    batches = _batches()
    losses = [step(batches, lr=3e-3).loss.item() for _ in range(10)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.1


def test_fp16_non_finite_loss_is_skipped_then_training_goes_on():
    model = _model()
    step = _step(model, "fp16")
    step(_batches(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    handle = model.register_forward_hook(lambda m, args, out: (out[0], out[1] * float("nan")))
    assert step(_batches(), lr=1e-3).status == "bad"
    handle.remove()
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert step(_batches(), lr=1e-3).status == "ok"
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_compile_on_and_off_agree_in_bf16():
    eager, compiled = _model(), _model()
    compiled_forward = torch.compile(compiled)
    x, y = _batches(1)[0]
    with torch.autocast(CUDA.type, dtype=torch.bfloat16):
        _, loss_eager = eager(x, y)
        _, loss_compiled = compiled_forward(x, y)
    assert loss_compiled.item() == pytest.approx(loss_eager.item(), rel=2e-2)
    loss_eager.backward()
    loss_compiled.backward()
    for a, b in zip(eager.parameters(), compiled.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=5e-2, atol=5e-3)


def test_adamw_is_fused_on_cuda():
    optimizer, _ = build_optimizer(_model(), OptimizerConfig(), CUDA)
    assert all(group.get("fused") for group in optimizer.param_groups)


def test_kv_cache_generation_equals_no_cache():
    from lmforge.data.tokenizer import bytes_tokenizer
    from lmforge.eval.generate import generate

    model = _model(vocab=257).eval()
    tokenizer = bytes_tokenizer()
    kwargs = {"max_tokens": 24, "greedy": True, "stop_at_eot": False, "dtype": "bf16"}
    with_cache = generate(model, tokenizer, "The history of", use_cache=True, **kwargs)
    without = generate(model, tokenizer, "The history of", use_cache=False, **kwargs)
    assert with_cache == without


def test_evaluation_on_cuda_matches_the_cpu():
    from lmforge.eval.evaluate import evaluate_tokens
    from lmforge.eval.options import EvalOptions

    model = _model().eval()
    tokens = torch.randint(0, 512, (2048,), generator=torch.Generator().manual_seed(2))
    window = {"block_size": 64, "stride": 64, "batch_size": 4}
    on_gpu = evaluate_tokens(model, tokens, EvalOptions(device=CUDA, dtype="bf16", **window))
    on_cpu = evaluate_tokens(model.float().cpu(), tokens, EvalOptions(device="cpu", dtype="fp32", **window))
    assert on_gpu.loss == pytest.approx(on_cpu.loss, rel=2e-2)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_nccl_ranks(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(
        "import json, os, torch, torch.distributed as dist\n"
        "from lmforge.distributed import init_distributed, all_reduce_sum, use_step_timeout\n"
        "info = init_distributed(torch.device('cuda', int(os.environ['LOCAL_RANK'])))\n"
        "x = torch.full((4,), float(info.rank + 1), device='cuda')\n"
        "all_reduce_sum(x)\n"
        "use_step_timeout()\n"
        "print(json.dumps({'rank': info.rank, 'sum': x[0].item(), 'backend': dist.get_backend()}))\n"
        "dist.destroy_process_group()\n"
    )
    out = subprocess.run(
        [sys.executable, "-P", "-m", "torch.distributed.run", "--nproc-per-node", "2", str(script)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in rows) == [0, 1]
    assert all(r["sum"] == 3.0 and r["backend"] == "nccl" for r in rows)
