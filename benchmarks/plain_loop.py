"""A plain nanoGPT-style GPT-2 training loop, independent of lmforge: the yardstick for
lmforge's throughput on the same shapes (``benchmarks/gpu_check.sh`` runs both).

    python benchmarks/plain_loop.py --device cuda --dtype bf16 --compile on --batch-size 32
    python benchmarks/plain_loop.py --device cpu --dtype fp32 --compile off --n-layer 2 --n-embd 64 \\
        --n-head 2 --block-size 64 --batch-size 2 --steps 2 --warmup 1      # seconds, on a CPU

Its own model (nanoGPT's: learned positions, pre-LayerNorm blocks, GELU MLP, SDPA flash
attention, the head tied to the token embedding, the vocabulary padded to 50,304), its own loop
(random offsets into a uint16 token array, pinned non-blocking copies, bf16 autocast or fp16 with
a GradScaler, fused AdamW, clip 1.0, ``loss.item()`` only at the end of the timed window) and the
full logits with ``F.cross_entropy``, as nanoGPT computes the loss. Tokens/s are timed after
``--warmup`` untimed steps (compilation). MFU uses nanoGPT's count, 6N + 12 L H Q T FLOPs per
token, against the device's dense peak (``lmforge.device.peak_flops`` when lmforge is importable,
else ``--peak-tflops``). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class SelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn = SelfAttention(n_embd, n_head)
        self.fc, self.out = nn.Linear(n_embd, 4 * n_embd), nn.Linear(4 * n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class PlainGPT(nn.Module):
    def __init__(self, vocab: int, block: int, n_layer: int, n_head: int, n_embd: int) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, n_embd), nn.Embedding(block, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab, bias=False)
        self.head.weight = self.wte.weight  # tied, as GPT-2
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("proj.weight", "out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--compile", default="on", choices=["on", "off"])
    p.add_argument("--n-layer", type=int, default=12)
    p.add_argument("--n-head", type=int, default=12)
    p.add_argument("--n-embd", type=int, default=768)
    p.add_argument("--block-size", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=50304, help="padded GPT-2 vocabulary (nanoGPT's)")
    p.add_argument("--real-vocab", type=int, default=50257, help="token ids drawn below this")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation)")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense peak, when lmforge is not there")
    p.add_argument("--seed", type=int, default=1337)
    return p.parse_args(argv)


def peak_flops(device: torch.device, dtype: str, given: float | None) -> float | None:
    if given is not None:
        return given * 1e12
    try:
        from lmforge.device import peak_flops as lookup
    except ImportError:
        return None
    return lookup(device, dtype)


def main(argv=None) -> dict:
    args = parse(argv)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.fp32_precision = "tf32"  # nanoGPT's allow_tf32, on torch >= 2.9
    model = PlainGPT(args.vocab, args.block_size, args.n_layer, args.n_head, args.n_embd).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(
        groups, lr=6e-4, betas=(0.9, 0.95), fused=True if device.type == "cuda" else None
    )
    train_model = torch.compile(model) if args.compile == "on" else model
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.dtype)
    ctx = torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=args.dtype == "fp16")

    B, T = args.batch_size, args.block_size
    tokens_needed = max(1_000_000, 4 * B * T)
    data = np.random.default_rng(args.seed).integers(0, args.real_vocab, size=tokens_needed, dtype=np.uint16)

    def get_batch() -> tuple[torch.Tensor, torch.Tensor]:
        ix = torch.randint(len(data) - T - 1, (B,))
        x = torch.stack([torch.from_numpy(data[i : i + T].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + T].astype(np.int64)) for i in ix])
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    x, y = get_batch()
    t0 = 0.0
    loss = torch.zeros((), device=device)
    for it in range(args.warmup + args.steps):
        if it == args.warmup:
            loss.item()  # sync before the clock starts
            t0 = time.perf_counter()
        for _ in range(args.grad_accum):
            with ctx:
                logits = train_model(x)
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.view(-1))
                loss = loss / args.grad_accum
            x, y = get_batch()  # prefetch while the GPU works
            scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    final_loss = loss.item() * args.grad_accum  # sync at the end
    seconds = time.perf_counter() - t0
    tokens_per_sec = args.steps * B * T * args.grad_accum / seconds
    n_params = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()
    head_dim = args.n_embd // args.n_head
    flops_per_token = 6 * n_params + 12 * args.n_layer * args.n_head * head_dim * T
    peak = peak_flops(device, args.dtype, args.peak_tflops)
    result = {
        "impl": "plain",
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "torch": torch.__version__,
        "dtype": args.dtype,
        "compiled": args.compile == "on",
        "batch_size": B,
        "block_size": T,
        "grad_accum": args.grad_accum,
        "tokens_per_sec": tokens_per_sec,
        "flops_per_token": flops_per_token,
        "mfu": flops_per_token * tokens_per_sec / peak if peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "loss": final_loss,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
