"""Generation speed with and without the KV cache.

    python benchmarks/generate.py                          # gpt2 (124M), 128 and 512 new tokens
    python benchmarks/generate.py --preset tiny --block-size 1024 --runs 5   # a CPU-sized model
    python benchmarks/generate.py --device cuda --dtype bf16

Random weights (speed does not depend on them), greedy decoding from a
one-token prompt, batch size 1, ``stop_at_eot=False`` so every run makes
exactly N tokens. "cache" is ``lmforge.eval.generate.generate`` (the prompt fed
once, then one token per step); "no cache" recomputes the whole prefix every
step (``use_cache=False``, what nanoGPT's ``generate`` does). Both go through
the same sampling code, so the difference is the forward passes alone.

With a context of 1024 (gpt2, or ``--block-size 1024``) N + 1 tokens never
exceed it for N <= 512, so neither path slides its window. Each cell is the
median of ``--runs`` timed runs after one warm-up. Target (SPEC §7): >= 5x at
512 new tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="gpt2", help="model preset (gpt2, tiny, gpt2-medium, ...)")
    parser.add_argument("--n-layer", type=int, help="override the preset's number of layers")
    parser.add_argument("--n-embd", type=int, help="override the preset's width")
    parser.add_argument("--n-head", type=int, help="override the preset's number of heads")
    parser.add_argument("--block-size", type=int, help="override the preset's context")
    parser.add_argument("--tokens", default="128,512", help="comma-separated numbers of new tokens")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per cell (median reported)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16 (autocast)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = parser.parse_args()

    from lmforge.data.tokenizer import bytes_tokenizer
    from lmforge.device import resolve_device
    from lmforge.eval.generate import generate
    from lmforge.model.gpt import GPT
    from lmforge.presets import PRESETS

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    overrides = {
        k: getattr(args, k) for k in ("n_layer", "n_embd", "n_head", "block_size") if getattr(args, k)
    }
    config = dataclasses.replace(PRESETS[args.preset], **overrides)
    torch.manual_seed(0)
    model = GPT(config).to(device).eval()
    # any tokenizer works for timing: ids beyond its vocabulary are never sampled, and
    # decoding bytes is negligible next to a forward pass
    tokenizer = bytes_tokenizer()
    counts = [int(n) for n in args.tokens.split(",")]

    def timed(n: int, use_cache: bool) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        generate(
            model,
            tokenizer,
            "a",
            max_tokens=n,
            greedy=True,
            stop_at_eot=False,
            use_cache=use_cache,
            dtype=args.dtype,
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    print(
        f"# {args.preset} {overrides or ''} ({model.get_num_params() / 1e6:.1f}M params, "
        f"{config.n_layer} layers, {config.n_embd} wide, context {config.block_size}), {name}, {args.dtype}, "
        f"median of {args.runs} runs, batch 1, greedy"
    )
    print(f"| {'new tokens':>10} | {'cache tok/s':>11} | {'no cache tok/s':>14} | {'speed-up':>8} |")
    print(f"| {'-' * 10}:| {'-' * 11}:| {'-' * 14}:| {'-' * 8}:|")
    for n in counts:
        cells = {}
        for use_cache in (True, False):
            timed(min(n, 16), use_cache)  # warm-up
            seconds = statistics.median(timed(n, use_cache) for _ in range(args.runs))
            cells[use_cache] = n / seconds
        print(
            f"| {n:>10} | {cells[True]:>11,.1f} | {cells[False]:>14,.1f} "
            f"| {cells[True] / cells[False]:>7.1f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
