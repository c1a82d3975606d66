"""``--recipe gpt2`` against ``--recipe modern`` on the same data, size, tokens and seeds (CPU).

    lmforge --workspace /tmp/recipes_ws data prepare wikitext-2 \\
        --source ../shared/data/wikitext-smoke --tokenizer-file ../shared/tokenizers/gpt2.tiktoken
    python benchmarks/recipes.py --workspace /tmp/recipes_ws --dtype bf16 --compile on
        # the README's table: ~35 minutes on 2 cores with bf16 instructions (fp32: about twice that)
    python benchmarks/recipes.py --workspace /tmp/recipes_ws --dtype bf16 --compile on \
        --tune optim.lr=0.01,0.02,0.04 optim.head_lr=0.002,0.008   # the modern defaults' sweep

Protocol:

- the ``tiny`` preset (4 layers, 4 heads, width 256) for both recipes, with a shorter context
  (``--block-size``, default 128) and batch so a CPU finishes in minutes; the same windows in
  the same order (the loader's order depends on the seed, the block size and the batch only);
- a token budget near one epoch of the training split (``--budget-tokens``; repeating a 250k-token
  split many times measures memorisation, not learning);
- GPT-2 (AdamW, cosine) at the best peak lr of a small sweep (``--gpt2-lrs``, one seed each),
  then at that lr for every seed; the modern recipe at its defaults for every seed;
- validation loss every ``1/--evals`` of the budget on the same ``--eval-tokens`` validation
  tokens; the table shows 25/50/75/100 % (mean ± half the range over seeds) and the tokens the
  modern recipe needs to reach the GPT-2 recipe's final mean loss (linear interpolation between
  evaluations; WSD's plateau runs high until its decay, so this is the conservative figure);
- the modern recipe also trained on half the budget (its schedule fitted to that length): the
  direct test of "GPT-2's loss with half the tokens";
- ms per optimizer step (median of the logged steps after the first 10%).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def run_one(
    workspace: Path, name: str, recipe: str, seed: int, steps: int, args, extra=None
) -> dict[str, Any]:
    from lmforge import TrainingManager
    from lmforge.observe.reporting import Reporter
    from lmforge.presets import resolve_config

    overrides = {
        ("recipe",): recipe,
        ("run",): name,
        ("data", "name"): args.data,
        ("model", "block_size"): args.block_size,
        ("data", "stride"): args.block_size,
        ("train", "steps"): steps,
        ("train", "batch_size"): args.batch_size,
        ("train", "grad_accum"): 1,
        ("train", "seed"): seed,
        ("train", "device"): "cpu",
        ("train", "dtype"): args.dtype,
        ("train", "compile"): args.compile,
        ("train", "threads"): args.threads,
        ("train", "eval_interval"): max(1, steps // args.evals),
        ("train", "eval_tokens"): args.eval_tokens,
        ("optim", "warmup_steps"): max(1, steps // 20),
        ("checkpoint", "light_interval"): 0,
        ("checkpoint", "full_interval"): 0,
        ("checkpoint", "keep_last"): 1,
        ("logging", "log_interval"): 1,
        ("logging", "wandb"): "disabled",
        ("logging", "sample_tokens"): 0,
        **(extra or {}),
    }
    config = resolve_config(preset="tiny", overrides=overrides)
    t0 = time.perf_counter()
    TrainingManager(config, workspace, reporter=Reporter()).train()
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (workspace / "runs" / name / "metrics.jsonl").open()]
    evals = [(r["tokens"], r["val_loss"]) for r in records if r["kind"] == "eval"]
    times = [r["time"] for r in records if r["kind"] == "train"]
    gaps = sorted(
        b - a for a, b in zip(times[len(times) // 10 :], times[len(times) // 10 + 1 :], strict=False)
    )
    ms = 1000 * statistics.median(gaps) if gaps else float("nan")
    result = {"name": name, "recipe": recipe, "seed": seed, "evals": evals, "ms_per_step": ms, "wall_s": wall}
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result


def loss_at(evals: list[tuple[int, float]], tokens: int) -> float:
    return min(evals, key=lambda e: abs(e[0] - tokens))[1]


def tokens_to_reach(evals: list[tuple[int, float]], target: float) -> float | None:
    """Tokens at which the eval curve first reaches ``target`` (linear between evaluations)."""
    prev = None
    for tok, loss in evals:
        if loss <= target:
            if prev is None:
                return float(tok)
            (t0, l0) = prev
            return t0 + (tok - t0) * (l0 - target) / (l0 - loss)
        prev = (tok, loss)
    return None


def mean_spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3f} ± {(max(values) - min(values)) / 2:.3f}"


def tune(args, types, modern_extra, steps, stamp) -> None:
    """The modern recipe's defaults, one key at a time: final validation loss per value."""
    rows = []
    for item in args.tune:
        key, values = item.split("=", 1)
        for value in values.split(","):
            extra = {**modern_extra, tuple(key.split(".")): types[key](value)}
            r = run_one(
                args.workspace, f"tune-{key}-{value}-{stamp}", "modern", args.seeds[0], steps, args, extra
            )
            rows.append((key, value, r["evals"][-1][1], r["ms_per_step"]))
    print("\n| key | value | final val loss | ms/step |\n|---|---|---|---|")
    for key, value, loss, ms in rows:
        print(f"| {key} | {value} | {loss:.3f} | {ms:.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workspace", type=Path, required=True)
    p.add_argument("--data", default="wikitext-2")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--gpt2-lrs", type=float, nargs="+", default=[5e-4, 1e-3, 1.5e-3, 2e-3])
    p.add_argument("--budget-tokens", type=int, default=245_760)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--evals", type=int, default=8)
    p.add_argument("--eval-tokens", type=int, default=8_192)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="fp32", help="training precision of every run (fp32, bf16, auto)")
    p.add_argument("--compile", default="off", help="torch.compile for every run (off, on, auto)")
    p.add_argument(
        "--tune",
        nargs="+",
        default=None,
        metavar="KEY=V1,V2",
        help="instead of the comparison: the modern recipe at each value of each key (one at a time, "
        "the others at their defaults; seed 1, the full budget), e.g. optim.lr=0.01,0.02,0.04",
    )
    p.add_argument("--modern", nargs="*", default=[], help="extra modern overrides: optim.lr=0.03 ...")
    p.add_argument("--json", type=Path, default=None, help="write every run's curve here")
    args = p.parse_args()

    from lmforge.config import config_fields

    types = {".".join(f.path): f.type for f in config_fields()}
    modern_extra = {}
    for item in args.modern:
        key, value = item.split("=", 1)
        modern_extra[tuple(key.split("."))] = types[key](value) if types[key] in (int, float) else value

    tokens_per_step = args.block_size * args.batch_size
    steps = args.budget_tokens // tokens_per_step
    stamp = time.strftime("%H%M%S")
    if args.tune:
        tune(args, types, modern_extra, steps, stamp)
        return
    runs: list[dict[str, Any]] = []

    sweep = {}
    for lr in args.gpt2_lrs:
        r = run_one(
            args.workspace,
            f"sweep-{lr:g}-{stamp}",
            "gpt2",
            args.seeds[0],
            steps,
            args,
            {("optim", "lr"): lr, ("optim", "min_lr"): lr / 10},
        )
        runs.append(r)
        sweep[lr] = r["evals"][-1][1]
    best_lr = min(sweep, key=sweep.get)
    gpt2 = [r for r in runs if r["name"] == f"sweep-{best_lr:g}-{stamp}"]
    for seed in args.seeds[1:]:
        gpt2.append(
            run_one(
                args.workspace,
                f"gpt2-s{seed}-{stamp}",
                "gpt2",
                seed,
                steps,
                args,
                {("optim", "lr"): best_lr, ("optim", "min_lr"): best_lr / 10},
            )
        )
    modern = [
        run_one(args.workspace, f"modern-s{s}-{stamp}", "modern", s, steps, args, modern_extra)
        for s in args.seeds
    ]
    half = [
        run_one(args.workspace, f"modern-half-s{s}-{stamp}", "modern", s, steps // 2, args, modern_extra)
        for s in args.seeds
    ]
    runs += gpt2[1:] + modern + half

    budget = steps * tokens_per_step
    print(
        f"\ntiny preset, block {args.block_size}, batch {args.batch_size} ({tokens_per_step} tokens/step), "
        f"{steps} steps = {budget:,} tokens, seeds {args.seeds}, eval on {args.eval_tokens:,} val tokens"
    )
    print(
        f"GPT-2 lr sweep (seed {args.seeds[0]}, final val loss): "
        + ", ".join(f"{lr:g}: {loss:.3f}" for lr, loss in sweep.items())
        + f" -> best {best_lr:g}"
    )
    print("\n| recipe | 25% | 50% | 75% | 100% | ms/step |\n|---|---|---|---|---|---|")
    for label, group in ((f"gpt2 (lr {best_lr:g})", gpt2), ("modern (defaults)", modern)):
        cells = [mean_spread([loss_at(r["evals"], budget * q // 4) for r in group]) for q in (1, 2, 3, 4)]
        ms = statistics.fmean(r["ms_per_step"] for r in group)
        print(f"| {label} | " + " | ".join(cells) + f" | {ms:.0f} |")
    target = statistics.fmean(r["evals"][-1][1] for r in gpt2)
    reach = [tokens_to_reach(r["evals"], target) for r in modern]
    half_final = [r["evals"][-1][1] for r in half]
    print(f"\nGPT-2 recipe final val loss (mean): {target:.3f}")
    if all(x is not None for x in reach):
        mean_reach = statistics.fmean(reach)
        print(
            f"modern reaches it after {mean_reach:,.0f} tokens on its full-budget curve "
            f"({mean_reach / budget:.0%} of the budget; per seed: "
            + ", ".join(f"{x:,.0f}" for x in reach)
            + ")"
        )
    else:
        print("modern does not reach it on every seed: " + ", ".join(str(x) for x in reach))
    print(
        f"modern trained on half the budget ({budget // 2:,} tokens): "
        f"final val loss {mean_spread(half_final)} "
        f"({'at or below' if statistics.fmean(half_final) <= target else 'above'} GPT-2's {target:.3f})"
    )
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "sweep": sweep, "best_lr": best_lr}, indent=1))


if __name__ == "__main__":
    main()
