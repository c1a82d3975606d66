"""``lmforge data import`` and ``lmforge data export``: llm.c / modded-nanogpt token shards."""

from __future__ import annotations

import typer
from rich.markup import escape

from lmforge.cli.common import JSON_OPTION, info, out_console, print_json, workspace
from lmforge.cli.data import _splits_table, app
from lmforge.units import plural

FORMAT_OPTION = typer.Option(..., "--format", help="The shards' format: llmc (llm.c / modded-nanogpt).")


def _check_format(fmt: str) -> None:
    if fmt != "llmc":
        raise typer.BadParameter(
            f"unknown format {fmt!r}; lmforge reads and writes llmc", param_hint="--format"
        )


@app.command("import")
def import_cmd(
    ctx: typer.Context,
    folder: str = typer.Argument(..., help="A folder of llm.c .bin shards.", show_default=False),
    fmt: str = FORMAT_OPTION,
    alias: str = typer.Option(
        None, "--as", help="Name of the dataset \\[default: the folder's name].", show_default=False
    ),
    tokenizer: str = typer.Option("gpt2", "--tokenizer", help="The tokenizer the shards were made with."),
    tokenizer_file: str = typer.Option(
        None,
        "--tokenizer-file",
        help="GPT-2's ranks file (gpt2.tiktoken) for offline use.",
        show_default=False,
    ),
    force: bool = typer.Option(False, "--force", help="Replace a dataset of the same name."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Import pre-tokenized shards as a dataset, without re-tokenizing.

    Files named like fineweb_train_000001.bin and fineweb_val_000000.bin become the train and
    validation splits; every header and size is checked first, and nothing is half-imported.

    Examples:

      [bold]lmforge data import ./fineweb10B --format llmc --as fineweb[/bold]
    """
    from pathlib import Path

    from lmforge.data.llmc import import_llmc
    from lmforge.data.plan import _check_name, _default_alias
    from lmforge.data.tokenizer import get_tokenizer

    _check_format(fmt)
    ws = workspace(ctx)
    path = Path(folder).expanduser()
    name = _check_name(alias or _default_alias(path.resolve().name))
    tok = get_tokenizer(tokenizer, tokenizer_file=tokenizer_file, workspace=ws)
    ds = import_llmc(ws, path, name, tok, force=force)
    info(ctx, f"Imported [bold]{escape(ds.name)}[/bold] into {escape(str(ds.path))}.")
    if as_json:
        print_json(ds.summary())
    else:
        out_console.print(_splits_table(ds))


@app.command("export")
def export_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="A prepared dataset (see `lmforge data list`).", show_default=False),
    fmt: str = FORMAT_OPTION,
    out: str = typer.Option(..., "--out", help="A new (or empty) folder to write the shards into."),
) -> None:
    """Export a dataset's token shards for other tools (llm.c, modded-nanogpt).

    Examples:

      [bold]lmforge data export fineweb --format llmc --out ./fineweb-llmc[/bold]
    """
    from pathlib import Path

    from lmforge.data.llmc import export_llmc
    from lmforge.data.store import open_dataset

    _check_format(fmt)
    written = export_llmc(open_dataset(workspace(ctx), name), Path(out).expanduser())
    info(ctx, f"Wrote {plural(len(written), 'llm.c shard')} to {escape(str(Path(out)))}.")
    for path in written:
        out_console.print(str(path), highlight=False)
