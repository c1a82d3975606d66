"""``lmforge tokenizer``: train a byte-level BPE on a corpus, list and inspect tokenizers."""

from __future__ import annotations

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from lmforge.cli.common import JSON_OPTION, info, out_console, print_json, workspace

app = typer.Typer(
    help="Train, list and inspect tokenizers; every command takes one by name (--tokenizer NAME).\n\n"
    "  lmforge tokenizer train wiki-32k wikitext-103 --vocab-size 32768\n\n"
    "  lmforge tokenizer list",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(
        ..., help="Name to save it under (tokenizers/NAME.tiktoken).", show_default=False
    ),
    source: str = typer.Argument(
        ...,
        help="What data prepare reads: wikitext-103/wikitext-2, a .txt file or folder, a parquet folder, "
        "or a Hub dataset id.",
        show_default=False,
    ),
    vocab_size: int = typer.Option(32768, "--vocab-size", min=258, help="Tokens, special tokens included."),
    max_chars: str = typer.Option(
        None, "--max-chars", help="Train on at most this many characters (2B, 500M, 10k).", show_default=False
    ),
    special: list[str] = typer.Option(
        None,
        "--special",
        help="A special token (repeatable); <|endoftext|> is always one, with the last id.",
        show_default=False,
    ),
    pattern: str = typer.Option("gpt2", "--pattern", help="Split pattern: gpt2 or gpt4 (digits in 3s)."),
    source_dir: str = typer.Option(
        None, "--source", help="Where WikiText's files are (offline), as in data prepare.", show_default=False
    ),
    text_column: str = typer.Option("text", "--text-column", help="Parquet/Hub column with the text."),
    doc_separator: str = typer.Option(
        None, "--doc-separator", help="Split local text into documents at this string.", show_default=False
    ),
    force: bool = typer.Option(False, "--force", help="Replace a tokenizer of that name."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Train a byte-level BPE tokenizer (no unknown tokens) on a corpus, streamed with a budget.

    Every 20th document is held out to measure bytes per token, next to GPT-2's.

    Then: [bold]lmforge data prepare wikitext-103 --tokenizer NAME[/bold].

    Examples:

      [bold]lmforge tokenizer train wiki-32k wikitext-103 --vocab-size 32768 --max-chars 2B[/bold]

      [bold]lmforge tokenizer train code-16k ./src-corpus --vocab-size 16384 --pattern gpt4[/bold]
    """
    from lmforge.data.tokenizer_train import parse_char_count, train_tokenizer

    info(ctx, f"Training tokenizer {escape(name)} on {escape(source)} ({vocab_size:,} tokens)…")
    result = train_tokenizer(
        workspace(ctx),
        name,
        source,
        vocab_size=vocab_size,
        max_chars=parse_char_count(max_chars),
        special=special,
        pattern=pattern,
        source_dir=source_dir,
        text_column=text_column,
        doc_separator=doc_separator,
        force=force,
    )
    if as_json:
        print_json({"path": str(result.path), **result.meta})
        return
    meta = result.meta
    corpus = meta["corpus"]
    out_console.print(
        f"Saved tokenizer [bold]{escape(name)}[/bold] to {escape(str(result.path))}: "
        f"{meta['vocab_size']:,} tokens, trained on {corpus['chars']:,} characters "
        f"in {meta['training']['seconds']:.1f} s{_bytes_per_token_text(meta.get('held_out') or {})}",
        highlight=False,
    )


def _bytes_per_token_text(held_out: dict) -> str:
    if "bytes_per_token" not in held_out:
        return ""
    text = f"; held-out bytes per token {held_out['bytes_per_token']:.3f}"
    if "gpt2_bytes_per_token" in held_out:
        text += f" (GPT-2 {held_out['gpt2_bytes_per_token']:.3f})"
    return text


@app.command("list")
def list_cmd(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """List tokenizers: the built-in gpt2 and bytes, and the workspace's (trained or copied in).

    Examples:

      [bold]lmforge tokenizer list[/bold]
    """
    from lmforge.data.tokenizer_train import list_tokenizers

    ws = workspace(ctx)
    rows = list_tokenizers(ws)
    if as_json:
        print_json({"workspace": str(ws.root), "tokenizers": rows})
        return
    table = Table(title=f"Tokenizers ({ws.tokenizers_dir})", title_justify="left", box=box.SIMPLE)
    for col, justify in (("name", "left"), ("kind", "left"), ("vocab", "right"), ("pattern", "left")):
        table.add_column(col, justify=justify, no_wrap=True)
    table.add_column("bytes/token", justify="right")
    table.add_column("trained on")
    for row in rows:
        held = row.get("held_out") or {}
        table.add_row(
            escape(row["name"]),
            row["kind"],
            f"{row['vocab_size']:,}",
            row.get("pattern", "-"),
            f"{held['bytes_per_token']:.3f}" if "bytes_per_token" in held else "-",
            escape(str((row.get("corpus") or {}).get("source", row.get("source", "-")))),
        )
    out_console.print(table)


@app.command("show")
def show_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="A tokenizer (see `lmforge tokenizer list`).", show_default=False),
    as_json: bool = JSON_OPTION,
) -> None:
    """Show one tokenizer: vocabulary, special tokens, pattern, hash, training corpus.

    Bytes per token on held-out text, next to GPT-2's (when its ranks were here).

    Examples:

      [bold]lmforge tokenizer show wiki-32k[/bold]
    """
    from lmforge.data.tokenizer_train import tokenizer_summary

    summary = tokenizer_summary(workspace(ctx), name)
    if as_json:
        print_json(summary)
        return
    facts = Table(show_header=False, box=None)
    corpus = summary.get("corpus") or {}
    held = summary.get("held_out") or {}
    rows = {
        "name": summary["name"],
        "kind": summary["kind"],
        "vocab size": f"{summary['vocab_size']:,}",
        "special tokens": ", ".join(summary.get("special_tokens") or []),
        "split pattern": summary.get("pattern", "-"),
        "sha256": summary.get("sha256", "-"),
        "file": summary.get("source", "-"),
    }
    if corpus:
        budget = f", budget {corpus['max_chars']:,}" if corpus.get("max_chars") else ""
        rows["trained on"] = (
            f"{corpus['source']}: {corpus['chars']:,} characters, {corpus['documents']:,} documents{budget}"
        )
        rows["training time"] = f"{summary['training']['seconds']:.1f} s"
    if "bytes_per_token" in held:
        rows["bytes per token"] = (
            f"{held['bytes_per_token']:.3f} on {held['bytes']:,} held-out bytes ({held['tokens']:,} tokens)"
        )
        if "gpt2_bytes_per_token" in held:
            rows["GPT-2's"] = f"{held['gpt2_bytes_per_token']:.3f} ({held['gpt2_tokens']:,} tokens)"
    for key, value in rows.items():
        facts.add_row(f"[bold]{key}[/bold]", escape(str(value)))
    out_console.print(facts)
