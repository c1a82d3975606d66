"""Training throughput: lmforge's loop next to a plain nanoGPT-style PyTorch loop.

    python benchmarks/train_throughput.py                          # CPU: tiny and micro, fp32
    python benchmarks/train_throughput.py --preset gpt2 --device cuda --dtype bf16 --compile on
        # GPT-2 small on one GPU: batch 16 x 1024 tokens, grad-accum 4 (the CUDA defaults)
    python benchmarks/train_throughput.py --recipes --batch-size 8 --dtype fp32 --compile off
        # the modern recipe's step time against the gpt2 one's (tiny, batch 8 x 128)
    python benchmarks/train_throughput.py --recipes --batch-size 16 --dtype fp32 --compile off \
        --levers value_embeds,residual_lambdas,unet_skips   # + a row: modern with those levers on
    python benchmarks/train_throughput.py --matrix              # CPU: every dtype x compile choice
        # tiny shape, batch 8 x 256, vs the plain loop in fp32 eager; plus lmforge's own defaults

Both contenders train the same ``GPT`` (same shapes, same init) on the same
generated token file (uint16, GPT-2's vocabulary), with AdamW (lmforge's fused on CUDA and
the CPU, nanoGPT's fused on CUDA only),
grad clipping, the same precision, the same ``torch.compile`` choice and the same
vocabulary padding (on CUDA: 50257 -> 50304 rows, as nanoGPT pads; loss over the real 50257):

- ``lmforge``: ``TrainingManager.train()`` end to end on a dataset in a
  temporary workspace: the real ``TrainLoader``, the schedule, the bad-step
  check, logging and metrics files (checkpoints and evaluation are pushed out of
  the timed window);
- ``plain``: the nanoGPT training loop (``get_batch`` from an ``np.memmap`` at
  random offsets, pinned + non_blocking on CUDA, ``loss.item()`` only at logging
  steps, and nanoGPT's loss: the full logits, then ``F.cross_entropy``).

``--matrix`` (the CPU question of which precision and compile choice pay): the plain loop
in fp32 eager as the baseline, lmforge in fp32/bf16 x eager/compiled, and lmforge with
its defaults (``--dtype auto --compile auto``, as a long run would resolve them).

Tokens/s are timed between the end of the warm-up steps and the last step (both
loops synchronize there). Each measurement runs in a fresh subprocess (peak
memory is per run: ``torch.cuda.max_memory_allocated`` on CUDA, ``ru_maxrss`` on
the CPU), contenders alternate, and the table shows medians over ``--repeats``.
MFU is against the device's dense bf16 peak (``lmforge.device.PEAK_FLOPS_BF16``: 989 TFLOP/s
for an H100 SXM), "n/a" where it is unknown (every CPU). Goals: lmforge is not slower than
the plain loop, and GPT-2 small reaches >= 50% MFU in bf16 on an H100.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOCAB = 50257
# name -> (n_layer, n_head, n_embd); "tiny" and "gpt2" are the presets' shapes
CONFIGS = {
    "micro": (2, 2, 64),
    "tiny": (4, 4, 256),
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
}


def make_workspace(root: Path, n_tokens: int, seed: int = 0, vocab: int = VOCAB) -> Path:
    """A workspace with dataset ``bench``: random token ids below ``vocab`` (GPT-2's) in the lmforge
    layout."""
    import numpy as np

    data = root / "datasets" / "bench"
    data.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in (("train", n_tokens), ("validation", 4096)):
        rng.integers(0, vocab, size=n, dtype=np.uint16).tofile(data / f"{split}.bin")
        splits[split] = {"file": f"{split}.bin", "tokens": n, "documents": 1, "bytes": n, "words": n}
    meta = {
        "format": "lmforge-dataset",
        "format_version": 1,
        "name": "bench",
        "tokenizer": {"name": "gpt2", "sha256": "benchmark"},
        "vocab_size": vocab,
        "eot_token": vocab - 1,
        "dtype": "uint16",
        "splits": splits,
    }
    (data / "meta.json").write_text(json.dumps(meta))
    return root


def _peak_memory(device) -> int:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_lmforge(args, ws: Path) -> dict:
    import torch

    from lmforge.config import ModelConfig, TrainingConfig
    from lmforge.observe.reporting import Reporter
    from lmforge.train.trainer import TrainingManager

    n_layer, n_head, n_embd = CONFIGS[args.config]
    config = TrainingConfig(preset="tiny", run="bench", tokenizer="gpt2")
    config.model = ModelConfig(
        vocab_size=args.vocab,
        block_size=args.block_size,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        dropout=0.0,
    )
    config.data.name, config.data.stride, config.data.sampling = "bench", args.block_size, "random"
    t = config.train
    # a long nominal run (compile=auto decides as it would for a real one), stopped after the timed steps
    last = args.warmup + args.steps
    t.steps, t.batch_size, t.grad_accum = 10**6, args.batch_size, args.grad_accum
    t.device, t.dtype, t.compile, t.threads = args.device, args.dtype, args.compile, args.threads
    t.eval_interval = 10**9
    config.optim.warmup_steps = 10
    config.checkpoint.light_interval = config.checkpoint.full_interval = 0
    config.logging.wandb, config.logging.sample_tokens = "disabled", 0
    if args.recipe != "gpt2":
        from lmforge.presets import apply_recipe

        config = apply_recipe(config, args.recipe)
    for lever in filter(None, args.levers.split(",")):
        setattr(config.model, lever, True)
    config.logging.log_interval = math.gcd(
        args.warmup, last
    )  # logs (and syncs) at the end of warm-up and at the end
    marks: dict[int, float] = {}

    class Clock(Reporter):
        def step(self, stats):
            marks[stats.step] = time.perf_counter()
            if stats.step == last:
                manager.request_stop()

    manager = TrainingManager(config, ws, reporter=Clock())
    # keep the end-of-run evaluation and checkpoint out of the picture (they come after the last mark)
    manager.evaluate = lambda: float("nan")
    manager.train()
    seconds = marks[last] - marks[args.warmup]
    tps = args.steps * config.tokens_per_step / seconds
    estimate = getattr(manager, "_estimate", None)  # what `train` said before its first step
    return {
        "tokens_per_sec": tps,
        "estimated_tokens_per_sec": estimate.steps * config.tokens_per_step / estimate.seconds
        if estimate is not None and estimate.seconds > 0
        else None,
        "mfu": manager.meter.flops_per_token * tps / manager.meter.peak_flops
        if manager.meter.peak_flops
        else None,
        "peak_memory": _peak_memory(manager.device),
        "dtype": manager.dtype,
        "compiled": manager.compiled,
        "device": str(manager.device)
        + (f" ({torch.cuda.get_device_name()})" if manager.device.type == "cuda" else ""),
    }


def run_plain(args, ws: Path) -> dict:
    """nanoGPT's train.py loop, reduced to what the comparison needs."""
    import contextlib

    import numpy as np
    import torch
    import torch.nn.functional as F

    from lmforge.config import ModelConfig
    from lmforge.device import enable_tf32, peak_flops, resolve_device, resolve_dtype
    from lmforge.model.gpt import GPT

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if device.type == "cuda":
        enable_tf32()
    n_layer, n_head, n_embd = CONFIGS[args.config]
    torch.manual_seed(1337)
    pad = 64 if device.type == "cuda" else 1  # what lmforge's pad_vocab_multiple=0 (auto) picks
    model_config = ModelConfig(
        args.vocab, args.block_size, n_layer, n_head, n_embd, dropout=0.0, pad_vocab_multiple=pad
    )
    model = GPT(model_config).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.01},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=1.5e-4, betas=(0.9, 0.95), fused=device.type == "cuda" or None)
    compiled = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    train_model = torch.compile(model) if compiled else model
    ptdtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)
    ctx = torch.autocast(device.type, dtype=ptdtype) if ptdtype else contextlib.nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "fp16")
    data = np.memmap(ws / "datasets" / "bench" / "train.bin", dtype=np.uint16, mode="r")
    B, T = args.batch_size, args.block_size

    def get_batch():
        ix = torch.randint(len(data) - T, (B,))
        x = torch.stack([torch.from_numpy(data[i : i + T].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + T].astype(np.int64)) for i in ix])
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)

    def lr_at(it, warmup=10, total=args.warmup + args.steps, lr=1.5e-4, min_lr=1.5e-5):
        if it < warmup:
            return lr * (it + 1) / warmup
        ratio = (it - warmup) / max(1, total - warmup)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)

    x, y = get_batch()
    t0 = None
    for it in range(args.warmup + args.steps):
        if it == args.warmup:
            loss.item()  # noqa: F821 (sync before the clock starts)
            t0 = time.perf_counter()
        for g in optimizer.param_groups:
            g["lr"] = lr_at(it)
        for _ in range(args.grad_accum):
            with ctx:
                logits, _ = train_model(x)  # nanoGPT: the full logits, then the loss
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-1)
                loss = loss / args.grad_accum
            x, y = get_batch()  # prefetch while the GPU works
            scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    loss.item()  # sync at the end
    seconds = time.perf_counter() - t0
    tps = args.steps * B * T * args.grad_accum / seconds
    peak = peak_flops(device, dtype)
    return {
        "tokens_per_sec": tps,
        "mfu": model.flops_per_token(T) * tps / peak if peak else None,
        "peak_memory": _peak_memory(device),
        "dtype": dtype,
        "compiled": compiled,
        "device": str(device) + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
    }


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--configs",
        "--preset",
        default="micro,tiny",
        help=f"comma-separated, from {', '.join(CONFIGS)} (gpt2 = GPT-2 small, 124M)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--batch-size", type=int, default=None, help="default: 16 on CUDA, 4 on the CPU")
    p.add_argument("--block-size", type=int, default=None, help="default: 1024 on CUDA, 128 on the CPU")
    p.add_argument("--grad-accum", type=int, default=None, help="default: 4 on CUDA, 1 on the CPU")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps (default: 20 CUDA, 10 CPU)")
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed steps first: compilation, allocator (default: 5 / 3)",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument(
        "--matrix",
        action="store_true",
        help="CPU: plain fp32 eager vs lmforge in fp32/bf16 x eager/compiled and its defaults "
        "(tiny, batch 8 x 256 unless given)",
    )
    p.add_argument(
        "--recipes",
        action="store_true",
        help="lmforge's --recipe gpt2 against --recipe modern (same shape, dtype and compile choice)",
    )
    p.add_argument("--recipe", default="gpt2", choices=["gpt2", "modern"], help="lmforge's recipe")
    p.add_argument(
        "--levers",
        default="",
        help="with --recipes: a third row, the modern recipe with these model levers on "
        "(comma-separated ModelConfig fields: value_embeds, residual_lambdas, unet_skips, document_masking)",
    )
    p.add_argument(
        "--impls",
        default="plain,lmforge",
        help="which loops to run: plain, lmforge or both (benchmarks/plain_loop.py is the independent one)",
    )
    p.add_argument("--vocab", type=int, default=VOCAB, help="vocabulary size (smaller: a quick CPU check)")
    p.add_argument(
        "--worker-log",
        action="store_true",
        help="copy each run's stderr to ours (e.g. TORCH_LOGS=recompiles,graph_breaks output)",
    )
    p.add_argument("--worker", choices=["lmforge", "plain"], help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--workspace", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.recipes:
        args.configs = "tiny" if args.configs == "micro,tiny" else args.configs
    if args.matrix:
        args.configs = "tiny" if args.configs == "micro,tiny" else args.configs
        args.batch_size = args.batch_size or 8
        args.block_size = args.block_size or 256
        args.warmup = args.warmup or 3  # compilation happens in the first (untimed) steps
    cuda = args.device.startswith("cuda") or (args.device == "auto" and _cuda_available())
    defaults = {"batch_size": (16, 4), "block_size": (1024, 128), "grad_accum": (4, 1), "steps": (20, 10),
                "warmup": (5, 3)}  # fmt: skip
    for name, (gpu, cpu) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, gpu if cuda else cpu)
    return args


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def worker(args) -> None:
    ws = Path(args.workspace)
    result = (run_lmforge if args.worker == "lmforge" else run_plain)(args, ws)
    print("RESULT " + json.dumps(result))


def main(argv=None) -> None:
    args = parse(argv)
    if args.worker:
        worker(args)
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as tmp:
        tokens = max(
            200_000, 4 * args.batch_size * args.grad_accum * args.block_size * (args.steps + args.warmup)
        )
        ws = make_workspace(Path(tmp), tokens, vocab=args.vocab)
        forwarded = [
            "--device", args.device, "--dtype", args.dtype, "--compile", args.compile,
            "--batch-size", str(args.batch_size), "--block-size", str(args.block_size),
            "--grad-accum", str(args.grad_accum), "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--threads", str(args.threads), "--workspace", str(ws), "--vocab", str(args.vocab),
            "--recipe", args.recipe,
        ]  # fmt: skip
        for config in args.configs.split(","):
            runs: dict[str, list[dict]] = {name: [] for name, _, _ in contenders(args)}
            for _ in range(args.repeats):
                for name, impl, choice in contenders(args):  # alternate, so load changes hit all alike
                    shutil_rm(ws / "runs")
                    out = subprocess.run(
                        [sys.executable, __file__, "--worker", impl, "--config", config, *forwarded, *choice],
                        capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"},
                    )  # fmt: skip
                    if args.worker_log:
                        sys.stderr.write(out.stderr)
                    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
                    if out.returncode or not line:
                        sys.exit(f"{name} {config} failed:\n{out.stderr[-3000:]}")
                    runs[name].append(json.loads(line[0][7:]))
            for impl, results in runs.items():
                mfus = [r["mfu"] for r in results if r["mfu"] is not None]
                estimates = [e for r in results if (e := r.get("estimated_tokens_per_sec"))]
                rows.append(
                    {
                        "config": config,
                        "impl": impl,
                        "device": results[0]["device"],
                        "dtype": results[0]["dtype"],
                        "compiled": results[0]["compiled"],
                        "tokens_per_step": args.batch_size * args.grad_accum * args.block_size,
                        "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in results),
                        "all_tokens_per_sec": [round(r["tokens_per_sec"], 1) for r in results],
                        "mfu": statistics.median(mfus) if mfus else None,
                        "estimated_tokens_per_sec": statistics.median(estimates) if estimates else None,
                        "peak_memory_mb": statistics.median(r["peak_memory"] for r in results) / 2**20,
                    }
                )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"| config | impl | device | dtype | compile | tokens/step | tokens/s (median of {args.repeats}) "
        f"| vs {'gpt2' if args.recipes else 'plain'} | MFU | peak memory |"
    )
    print("| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    first = contenders(args)[0][0]  # the baseline of "vs plain" (of "vs gpt2" with --recipes)
    plain = {r["config"]: r["tokens_per_sec"] for r in rows if r["impl"] == first}
    for r in rows:
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        ratio = r["tokens_per_sec"] / plain[r["config"]]
        compiled = "on" if r["compiled"] else "off"
        print(
            f"| {r['config']} | {r['impl']} | {r['device']} | {r['dtype']} | {compiled} "
            f"| {r['tokens_per_step']:,} | {r['tokens_per_sec']:,.0f} | {ratio:.2f}x "
            f"| {mfu} | {r['peak_memory_mb']:,.0f} MB |"
        )


def contenders(args) -> list[tuple[str, str, list[str]]]:
    """``(row name, worker, extra options)``: the plain loop first (the baseline of "vs plain")."""
    if args.recipes:
        rows = [(f"lmforge --recipe {r}", "lmforge", ["--recipe", r]) for r in ("gpt2", "modern")]
        if args.levers:
            rows.append(
                (f"modern + {args.levers}", "lmforge", ["--recipe", "modern", "--levers", args.levers])
            )
        return rows
    if not args.matrix:
        chosen = args.impls.split(",")
        return [(name, name, []) for name in ("plain", "lmforge") if name in chosen]
    rows = [("plain fp32 eager", "plain", ["--dtype", "fp32", "--compile", "off"])]
    for dtype in ("fp32", "bf16"):
        for compile_ in ("off", "on"):
            rows.append((f"lmforge {dtype} {'compiled' if compile_ == 'on' else 'eager'}", "lmforge",
                         ["--dtype", dtype, "--compile", compile_]))  # fmt: skip
    rows.append(("lmforge defaults (auto, auto)", "lmforge", ["--dtype", "auto", "--compile", "auto"]))
    return rows


def shutil_rm(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
