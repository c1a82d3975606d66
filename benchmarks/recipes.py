"""The issue-26 protocol: ``--recipe gpt2`` at its best lr against ``--recipe modern`` and any
named variants of it, each over the same seeds, run with ``lmforge sweep`` and compared with
``lmforge runs compare --group ...`` (CPU).

    lmforge --workspace /tmp/recipes_ws data prepare wikitext-2 \\
        --source ../shared/data/wikitext-smoke --tokenizer-file ../shared/tokenizers/gpt2.tiktoken
    python benchmarks/recipes.py --workspace /tmp/recipes_ws --dry-run     # the commands only
    python benchmarks/recipes.py --workspace /tmp/recipes_ws \\
        --setting ve="--value-embeds" --setting ve-skips="--value-embeds --unet-skips"

Protocol (every run):

- the ``tiny`` preset (4 layers, 4 heads, width 256) with block 128, stride 128, batch 8 and one
  micro-batch per step; 240 steps = 245,760 tokens, about one epoch of ``wikitext-smoke``'s
  training split (repeating a 250k-token split many times measures memorisation, not learning);
  the same windows in the same order for a seed (the loader's order depends on the seed, the
  block size and the batch only);
- warmup 12 steps; validation loss every 30 steps on the same 8,192 validation tokens;
- fp32 and torch.compile off by default (``--dtype``, ``--compile``), 2 threads, the CPU;
  checkpoints off except ``--keep-last 1``, no text samples, W&B disabled.

Sweeps (named ``<prefix>gpt2-lr``, ``<prefix>gpt2``, ``<prefix>modern``, ``<prefix><NAME>``):

1. the gpt2 recipe at each of ``--gpt2-lrs`` (5e-4, 1e-3, 1.5e-3, 2e-3), the first seed only,
   its ``--min-lr`` at the recipe's default (1e-4 on ``tiny``; the former script used lr / 10);
2. the gpt2 recipe at the lr with the lowest final validation loss, for the other seeds; its
   first seed is the run of sweep 1 (``runs compare`` merges the two sweeps' runs with the same
   options into one setting, ``sweep=<prefix>gpt2-lr+<prefix>gpt2``), not a rerun;
3. the modern recipe at its defaults, every seed;
4. each ``--setting NAME="FLAGS"``: the modern recipe with those train options, every seed.

Then ``lmforge runs compare`` of all of them with the gpt2 recipe as the baseline: per setting
the final validation loss (mean ± 95% interval over seeds), the loss at 25/50/75/100% of the
tokens, the tokens to reach the gpt2 recipe's final mean loss, and Welch's p-value. Rerunning
the script continues where it stopped (``lmforge sweep`` skips finished runs). To tune one
recipe's option, sweep it directly: ``lmforge sweep tune --recipe modern --grid lr=0.01,0.02``.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

LMFORGE = [sys.executable, "-m", "lmforge"]
RESERVED = ("gpt2-lr", "gpt2", "modern")  # the protocol's own sweeps (after the prefix)


def protocol_options(args: argparse.Namespace) -> list[str]:
    """The train options every run of the protocol shares (the docstring's list)."""
    return [
        "--preset", "tiny",
        "--data", args.data,
        "--block-size", "128",
        "--stride", "128",
        "--batch-size", "8",
        "--grad-accum", "1",
        "--steps", str(args.steps),
        "--warmup-steps", "12",
        "--eval-interval", "30",
        "--eval-tokens", "8192",
        "--light-interval", "0",
        "--full-interval", "0",
        "--keep-last", "1",
        "--sample-tokens", "0",
        "--wandb", "disabled",
        "--log-interval", "10",
        "--dtype", args.dtype,
        "--compile", args.compile,
        "--threads", str(args.threads),
        "--device", "cpu",
    ]  # fmt: skip


def parse_setting(text: str) -> tuple[str, list[str]]:
    """``'ve=--value-embeds --lr 0.03'`` -> ``("ve", ["--value-embeds", "--lr", "0.03"])``."""
    name, sep, flags = text.partition("=")
    if not sep or not name.strip() or not flags.strip():
        raise SystemExit(
            f'error: --setting {text!r} is not NAME="--flag value ..." (e.g. ve="--value-embeds")'
        )
    return name.strip(), shlex.split(flags)


def split_seeds(text: str) -> tuple[str, str | None]:
    """``"1-5"`` -> ``("1", "2-5")``: the lr sweep's seed and the others (None when no others)."""
    from lmforge.runs.sweeps import parse_seeds

    seeds = parse_seeds(text)
    rest = ",".join(str(s) for s in seeds[1:])
    return str(seeds[0]), rest or None


def best_lr(workspace: Path, sweep: str) -> str:
    """The lr of the lr sweep's setting with the lowest final mean validation loss."""
    from lmforge.runs.group import group_report
    from lmforge.workspace import Workspace

    report = group_report(Workspace.resolve(workspace), sweep)
    done = [s for s in report.settings if s.final_loss is not None]
    if not done:
        raise SystemExit(f"error: sweep {sweep} has no finished run: rerun this script to continue it")
    return str(min(done, key=lambda s: s.final_loss.mean).setting["lr"])


def commands(args: argparse.Namespace, lr: str) -> list[list[str]]:
    """Every ``lmforge`` command of the protocol in order, the gpt2 recipe's best lr as ``lr``."""
    base = [*LMFORGE, "--workspace", str(args.workspace)]
    common = protocol_options(args)
    first, rest = split_seeds(args.seeds)
    p = args.prefix
    out = [
        [
            *base,
            "sweep",
            f"{p}gpt2-lr",
            "--recipe",
            "gpt2",
            "--grid",
            f"lr={args.gpt2_lrs}",
            "--seeds",
            first,
            *common,
        ]
    ]
    groups = [f"{p}gpt2-lr"]
    if rest:
        out.append([*base, "sweep", f"{p}gpt2", "--recipe", "gpt2", "--lr", lr, "--seeds", rest, *common])
        groups.append(f"{p}gpt2")
    out.append([*base, "sweep", f"{p}modern", "--recipe", "modern", "--seeds", args.seeds, *common])
    groups.append(f"{p}modern")
    for name, flags in map(parse_setting, args.setting):
        out.append(
            [*base, "sweep", f"{p}{name}", "--recipe", "modern", "--seeds", args.seeds, *common, *flags]
        )
        groups.append(f"{p}{name}")
    # the gpt2 recipe at its best lr is the baseline (with one seed: the lr sweep's setting)
    baseline = (
        ["--baseline", f"sweep={p}gpt2"]
        if rest
        else ["--baseline", f"sweep={p}gpt2-lr", "--baseline", f"lr={lr}"]
    )
    compare = [*base, "runs", "compare", *(x for g in groups for x in ("--group", g)), *baseline]
    out.append(compare + (["--json"] if args.json else []))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workspace", type=Path, required=True)
    p.add_argument("--prefix", default="p", help="the sweeps' names start with it (default: p)")
    p.add_argument("--data", default="wikitext-2", help="the prepared dataset (wikitext-smoke as wikitext-2)")
    p.add_argument("--seeds", default="1-5", help="seeds of every setting; the lr sweep runs the first")
    p.add_argument("--gpt2-lrs", default="5e-4,1e-3,1.5e-3,2e-3", help="the gpt2 recipe's lr sweep")
    p.add_argument("--steps", type=int, default=240, help="240 x 8 x 128 tokens: about one epoch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="fp32", help="training precision of every run (fp32, bf16, auto)")
    p.add_argument("--compile", default="off", help="torch.compile for every run (off, on, auto)")
    p.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar='NAME="FLAGS"',
        help='a modern-recipe variant over the seeds, e.g. ve="--value-embeds" (repeat for more)',
    )
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for setting in args.setting:  # a malformed or clashing one fails before hours of training
        name, _ = parse_setting(setting)
        if name in RESERVED:
            raise SystemExit(f"error: --setting {name} is one of the protocol's sweeps: choose another NAME")
    if args.dry_run:
        lr = f"<best lr of {args.prefix}gpt2-lr>"
        for command in commands(args, lr):
            print(shlex.join(["lmforge", *command[len(LMFORGE) :]]))
        return 0
    lr_sweep, *_ = commands(args, "?")
    run(lr_sweep)
    lr = best_lr(args.workspace, f"{args.prefix}gpt2-lr")
    print(f"gpt2 recipe: best lr {lr}", file=sys.stderr, flush=True)
    for command in commands(args, lr)[1:]:
        run(command)
    return 0


def run(command: list[str]) -> None:
    """Run one lmforge command; a failure (or Ctrl-C) ends the protocol with its exit code."""
    print("+ " + shlex.join(command), file=sys.stderr, flush=True)
    code = subprocess.run(command).returncode
    if code:
        print(f"stopped ({code}): rerun the same command to continue", file=sys.stderr)
        raise SystemExit(code)


if __name__ == "__main__":
    sys.exit(main())
