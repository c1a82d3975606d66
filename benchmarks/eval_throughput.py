"""Evaluation speed: scored tokens/s of the stream protocol, through the per-token losses
(only the scored positions go through the head, in chunks) against the full-logits path that
evaluation used before, and against training on the same tokens.

    python benchmarks/eval_throughput.py                       # tiny, block 256, fp32, CPU
    python benchmarks/eval_throughput.py --tokens 65536 --runs 5
    python benchmarks/eval_throughput.py --preset gpt2 --block-size 1024 --device cuda --dtype bf16

"before" is ``lmforge.eval.evaluate.evaluate_tokens`` on a model whose forward makes the
(B, T, vocab) logits and applies ``F.cross_entropy`` to their fp32 copy (the old evaluation
code, kept here only); "after" is the same function on the model itself
(``loss_reduction="none"``). Both score the same ``--tokens`` random tokens with random
weights (speed does not depend on either) at stride = block / 2 and stride = block, batch
``--batch-size``. "train" is forward + backward + AdamW on the same number of tokens at batch
``--train-batch-size`` x block. Each cell is the median of ``--runs`` timed runs after one
warm-up; the two eval paths alternate run by run, and training follows in the same process.

Targets (issue 27): after >= 2x before at stride = block / 2; evaluating N tokens at
stride = block takes at most a third of the time of training on N tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class FullLogits(nn.Module):
    """The old evaluation path: (B, T, vocab) logits, an fp32 copy, ``F.cross_entropy``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, x, y, loss_reduction="none", with_argmax=False):
        logits, _ = self.inner(x)  # (B, T, vocab)
        nll = F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), y.view(-1), ignore_index=-1, reduction="none"
        )
        return None, nll.view(y.shape)


def timed(fns, runs: int) -> list[float]:
    """Median seconds of each of ``fns`` over ``runs`` rounds after one warm-up each; a round
    runs them back to back, so a change in the machine's load touches all of them alike."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for fn, ts in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - start)
    return [statistics.median(ts) for ts in times]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--arch", default="gpt", help="gpt or modern")
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=16384, help="tokens scored (and trained on)")
    parser.add_argument("--batch-size", type=int, default=8, help="evaluation batch (lmforge eval's default)")
    parser.add_argument(
        "--train-batch-size", type=int, default=4, help="training micro-batch (tiny's default)"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", help="fp32 or bf16 (autocast)")
    args = parser.parse_args()

    from lmforge.eval.evaluate import autocast, evaluate_tokens
    from lmforge.eval.options import EvalOptions
    from lmforge.model import build_model
    from lmforge.presets import PRESETS

    device = torch.device(args.device)
    modern = (
        dict(arch="modern", bias=False, qk_norm=True, logit_softcap=15.0) if args.arch == "modern" else {}
    )
    config = dataclasses.replace(PRESETS[args.preset], block_size=args.block_size, dropout=0.0, **modern)
    torch.manual_seed(0)
    model = build_model(config).to(device)
    T = args.block_size
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, args.tokens + 1)

    def evaluation(m: nn.Module, stride: int):
        window = {"block_size": T, "stride": stride, "batch_size": args.batch_size}
        options = EvalOptions(**window, device=device, dtype=args.dtype)
        return lambda: evaluate_tokens(m, tokens, options)

    rows = []
    for label, stride in (("block / 2", T // 2), ("block", T)):
        before, after = timed([evaluation(FullLogits(model), stride), evaluation(model, stride)], args.runs)
        rows.append((label, stride, args.tokens / before, args.tokens / after, before / after, after))

    # training on the same tokens: forward, backward, AdamW, one micro-batch per step
    data = torch.from_numpy(tokens.astype(np.int64)).to(device)
    B = args.train_batch_size
    steps = max(1, args.tokens // (B * T))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    starts = torch.arange(0, steps * B * T, T, device=device).view(steps, B)

    def training() -> None:
        model.train()
        for s in range(steps):
            idx = starts[s][:, None] + torch.arange(T, device=device)  # (B, T)
            with autocast(device, args.dtype):
                _, loss = model(data[idx], data[idx + 1])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        model.eval()

    (train_s,) = timed([training], args.runs)
    train_tps = steps * B * T / train_s

    print(
        f"{args.preset} ({args.arch}), block {T}, {args.dtype}, {device}, eval batch {args.batch_size}, "
        f"{args.tokens:,} tokens, median of {args.runs} runs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'stride':<14}{'before tok/s':>14}{'after tok/s':>14}{'speed-up':>10}")
    for label, stride, before_tps, after_tps, speedup, _ in rows:
        print(f"{f'{label} ({stride})':<14}{before_tps:>14,.0f}{after_tps:>14,.0f}{speedup:>9.2f}x")
    eval_block_s = rows[1][5] * (steps * B * T) / args.tokens  # the same number of tokens as training
    print(f"training: {train_tps:,.0f} tok/s ({steps} steps of {B} x {T})")
    print(
        f"eval at stride = block / training, same tokens: {eval_block_s / train_s:.2f} of the time "
        f"(target <= 0.33)"
    )


if __name__ == "__main__":
    main()
