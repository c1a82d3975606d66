"""``lmforge generate``: sample text from a checkpoint, streamed as it is made."""

from __future__ import annotations

import contextlib
import sys

import typer

from lmforge.cli.common import DEVICE_OPTION, DTYPE_OPTION, err_console, info, state, workspace
from lmforge.cli.complete import complete_checkpoint_names

SEPARATOR = "-" * 40


def generate_command(
    ctx: typer.Context,
    checkpoint: str = typer.Argument(
        ...,
        metavar="CKPT",
        help="Checkpoint: best, latest, RUN, RUN:best, RUN:latest, RUN:step-N or a path.",
        autocompletion=complete_checkpoint_names,
    ),
    prompt: str = typer.Argument(
        None,
        metavar="[PROMPT]",
        help="Text to continue (default: read from stdin when it is not a terminal; "
        "else start from end-of-text).",
        show_default=False,
    ),
    max_tokens: int = typer.Option(200, "--max-tokens", help="New tokens per sample (at most)."),
    temperature: float = typer.Option(0.8, "--temperature", help="Softmax temperature (> 0) when sampling."),
    top_k: int = typer.Option(
        None, "--top-k", help="Sample only from the K most likely tokens.", show_default=False
    ),
    top_p: float = typer.Option(
        None,
        "--top-p",
        help="Nucleus sampling: the smallest set of tokens with probability >= P.",
        show_default=False,
    ),
    greedy: bool = typer.Option(False, "--greedy", help="Always take the most likely token (no sampling)."),
    num_samples: int = typer.Option(1, "--num-samples", help="How many completions."),
    seed: int = typer.Option(None, "--seed", help="Random seed, for repeatable samples.", show_default=False),
    no_stream: bool = typer.Option(False, "--no-stream", help="Print the finished text only."),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    tokenizer_file: str = typer.Option(
        None,
        "--tokenizer-file",
        help="GPT-2 ranks file, when the tokenizer is not in the workspace.",
        show_default=False,
    ),
) -> None:
    """Generate text from a checkpoint, streamed token by token (with a KV cache).

    Text goes to stdout (the prompt, then the completion); everything else to stderr.

    Stops at end-of-text or after --max-tokens. A prompt longer than the context keeps its last tokens;
    a full context slides on with its last half.

    Examples:

      [bold]lmforge generate best "The history of"[/bold]

      [bold]lmforge generate my-run:step-2000 "The history of" --temperature 0.7 --top-p 0.9 --seed 1[/bold]

      [bold]echo "Once upon a time" | lmforge generate best --greedy --no-stream[/bold]
    """
    from lmforge.device import resolve_device, resolve_dtype
    from lmforge.eval.generate import check_sampling, generate, load_for_generation
    from lmforge.runs.names import resolve_checkpoint

    sampling = {
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "greedy": greedy,
        "num_samples": num_samples,
    }
    check_sampling(**sampling)  # cheap checks first, before a model is loaded
    ws = workspace(ctx)
    # on a CPU, auto reads the bf16 measurement training cached in the workspace
    precision = resolve_dtype(dtype, resolve_device(device), ws.cache_dir)
    if prompt is None:
        prompt = sys.stdin.read().rstrip("\r\n") if not sys.stdin.isatty() else ""

    path = resolve_checkpoint(ws, checkpoint)
    model, tokenizer, meta = load_for_generation(ws, path, device=device, tokenizer_file=tokenizer_file)
    info(
        ctx,
        f"[dim]{checkpoint}: run {meta.get('run')}, step {meta.get('step')}, "
        f"tokenizer {tokenizer.name}, {next(model.parameters()).device}, {precision}[/dim]",
    )

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def end_text(i: int, completion: str) -> None:
        if no_stream:
            write(prompt + completion)
        write("\n")
        if i < num_samples - 1:
            write(SEPARATOR + "\n")
            if not no_stream:
                write(prompt)

    lines = _progress_lines(ctx, checkpoint, num_samples, max_tokens)

    def sample_end(i: int, completion: str) -> None:
        if lines is not None:
            lines.skip_to((i + 1) * max_tokens)  # a sample that stopped at end-of-text is done too
            if i + 1 < num_samples:
                lines.relabel(f"{checkpoint} sample {i + 2}/{num_samples}")
        end_text(i, completion)

    if not no_stream:
        write(prompt)
    with lines or contextlib.nullcontext():
        generate(
            model,
            tokenizer,
            prompt,
            **sampling,
            seed=seed,
            on_text=None if no_stream else (lambda i, text: write(text)),
            on_sample_end=sample_end,
            dtype=precision,
            on_warning=lambda message: err_console.print(
                f"[yellow]Warning:[/yellow] {message}", highlight=False
            ),
            progress=lines.advance if lines is not None else None,
        )


def _progress_lines(ctx: typer.Context, checkpoint: str, num_samples: int, max_tokens: int):
    """Plain progress lines on stderr when it is not a terminal (and not --quiet): tokens made,
    tok/s and an ETA (an upper bound: a sample may stop early), at least once a minute; the
    start and end lines only for several samples."""
    from lmforge.cli.progress_lines import ProgressLines

    if state(ctx).quiet or err_console.is_terminal:
        return None
    lines = ProgressLines(prefix="generate ", edges=num_samples > 1)
    label = f"{checkpoint} sample 1/{num_samples}" if num_samples > 1 else checkpoint
    lines.start(label, num_samples * max_tokens)
    return lines
