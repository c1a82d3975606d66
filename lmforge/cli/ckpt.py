"""``lmforge ckpt``: list, inspect, prune, export and import checkpoints."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from lmforge.cli.common import JSON_OPTION, err_console, info, out_console, print_json, workspace
from lmforge.cli.complete import checkpoint_argument, run_argument
from lmforge.cli.format import fmt_loss, fmt_time, print_table
from lmforge.errors import LmforgeError
from lmforge.units import format_bytes, format_count, plural

app = typer.Typer(
    help="List, inspect, prune, export and import checkpoints.\n\n"
    "Examples:\n\n"
    "  lmforge ckpt list\n\n"
    "  lmforge ckpt show best\n\n"
    "  lmforge ckpt prune --keep-last 2 --dry-run\n\n"
    "  lmforge ckpt export best --format hf --out ./my-gpt2\n\n"
    "  lmforge ckpt import ./gpt2 --as openai-gpt2",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


# ----------------------------------------------------------------------------- list


@app.command("list")
def list_cmd(
    ctx: typer.Context,
    run: str = run_argument("Run name or 'latest' (default: every run).", optional=True),
    as_json: bool = JSON_OPTION,
) -> None:
    """Complete checkpoints: run, name, kind, step, tokens, validation loss, size, time.

    Checkpoints still being written (and leftovers of crashed saves) are not listed.

    Examples:

      [bold]lmforge ckpt list[/bold]

      [bold]lmforge ckpt list latest --json[/bold]
    """
    from lmforge.runs.checkpoints import checkpoints_of, selected_runs

    ws = workspace(ctx)
    run_dirs = selected_runs(ws, run)
    warnings: list[str] = []
    checkpoints = checkpoints_of(run_dirs, warnings)
    for warning in warnings:  # one damaged checkpoint is named; the others are still listed
        err_console.print(f"[yellow]Warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)
    if as_json:
        print_json([c.to_dict() for c in checkpoints])
        return
    if not checkpoints:
        where = f"run {run_dirs[0].name}" if run else str(ws.runs_dir)
        info(ctx, f"No checkpoints in {escape(where)} yet.")
        return
    one_run = run is not None
    title = f"Checkpoints of run {run_dirs[0].name}" if one_run else f"Checkpoints in {ws.runs_dir}"
    table = Table(title=escape(title), title_justify="left")
    columns = ("name", "kind", "step", "tokens", "val loss", "size", "created")
    if not one_run:
        table.add_column("run", overflow="fold", min_width=min(20, max(len(c.run) for c in checkpoints)))
    for column in columns:
        right = column in ("step", "tokens", "val loss", "size")
        table.add_column(column, justify="right" if right else "left", no_wrap=column != "created")
    for c in checkpoints:
        row = [
            escape(c.name),
            c.kind,
            f"{c.step:,}",
            format_count(c.tokens),
            fmt_loss(c.val_loss),
            format_bytes(c.size_bytes),
            fmt_time(c.created_at),
        ]
        table.add_row(*([] if one_run else [escape(c.run)]), *row)
    print_table(out_console, table)
    total = format_bytes(sum(c.size_bytes for c in checkpoints))
    info(ctx, f"{plural(len(checkpoints), 'checkpoint')}, {total} in all.")


# ----------------------------------------------------------------------------- show


@app.command("show")
def show_cmd(ctx: typer.Context, ckpt: str = checkpoint_argument(), as_json: bool = JSON_OPTION) -> None:
    """One checkpoint: step, tokens, metrics at save, tokenizer, model size, files and config.

    Examples:

      [bold]lmforge ckpt show best[/bold]

      [bold]lmforge ckpt show my-run:step-2000 --json[/bold]
    """
    from lmforge.runs.checkpoints import checkpoint_details
    from lmforge.runs.names import resolve_checkpoint

    warnings: list[str] = []
    details = checkpoint_details(resolve_checkpoint(workspace(ctx), ckpt), warnings)
    for warning in warnings:  # a damaged eval file is named; the rest is still shown
        err_console.print(f"[yellow]Warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)
    if as_json:
        print_json(details)
        return
    m = details["meta"]
    tok = m.get("tokenizer") or {}
    metrics = details["metrics"]
    head = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    rows = [
        ("path", escape(details["path"])),
        ("run", escape(str(m.get("run")))),
        ("kind", str(m.get("kind"))),
        ("step", f"{m.get('step', 0):,}"),
        ("tokens", f"{format_count(m.get('tokens'))} ({m.get('tokens', 0):,})"),
        ("val loss", fmt_loss(metrics["val_loss"])),
        ("val perplexity", "-" if metrics["val_ppl"] is None else f"{metrics['val_ppl']:.2f}"),
    ]
    if metrics.get("train_loss") is not None:
        rows.append(("train loss", f"{metrics['train_loss']:.4f} (step {metrics['train_step']:,})"))
    rows += [
        ("dataset", escape(str(m.get("dataset") or "-"))),
        ("tokenizer", escape(f"{tok.get('name')} (sha256 {str(tok.get('sha256') or '-')[:12]}…)")),
        ("parameters (total)", "-" if details["parameters"] is None else f"{details['parameters']:,}"),
        ("created", fmt_time(m.get("created_at"))),
        ("lmforge", str(m.get("lmforge_version", "-"))),
    ]
    for key in ("imported_from", "exported_from"):
        if m.get(key):
            source = m[key] if isinstance(m[key], str) else m[key].get("path")
            rows.append((key.replace("_", " "), escape(str(source))))
    for key, value in rows:
        head.add_row(f"[dim]{key}[/dim]", value)
    print_table(out_console, head)

    files = Table(title="Files", title_justify="left")
    files.add_column("file")
    files.add_column("size", justify="right")
    files.add_column("bytes", justify="right")
    for f in details["files"]:
        note = (
            ""
            if f["expected_bytes"] in (None, f["bytes"])
            else f" [red](expected {f['expected_bytes']:,})[/red]"
        )
        files.add_row(escape(f["name"]), format_bytes(f["bytes"]), f"{f['bytes']:,}{note}")
    print_table(out_console, files)
    if details["evals"]:
        evals = Table(title="Task evaluations (evals/)", title_justify="left")
        for column in ("task", "metric", "value", "stderr", "file"):
            evals.add_column(column, justify="right" if column in ("value", "stderr") else "left")
        for record in details["evals"]:
            for row in record["rows"]:
                stderr = row.get("stderr")
                evals.add_row(
                    escape(str(row.get("task"))),
                    escape(str(row.get("metric"))),
                    _number(row.get("value")),
                    _number(stderr) if isinstance(stderr, (int, float)) else "-",
                    escape(record["file"]),
                )
        print_table(out_console, evals)
    from lmforge.tomlfile import dumps_toml

    out_console.print("[bold]Config[/bold]")
    out_console.print(dumps_toml(m["config"]), highlight=False, markup=False)


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else escape(str(value))


# ----------------------------------------------------------------------------- prune


@app.command("prune")
def prune_cmd(
    ctx: typer.Context,
    run: str = run_argument("Run to prune (default: the newest run).", optional=True),
    all_runs: bool = typer.Option(False, "--all", help="Prune every run."),
    keep_last: int = typer.Option(
        None,
        "--keep-last",
        min=0,
        help="Periodic checkpoints to keep per run (default: the run's checkpoint.keep_last).",
        show_default=False,
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be deleted; change nothing."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Delete without asking."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Delete old checkpoints, keeping the newest N, best, and the newest full one.

    Never deleted: [bold]best[/bold], the newest full checkpoint (what --resume needs), a
    checkpoint being written (.tmp-* or no meta.json, changed within the hour), and anything
    that is a symlink or lies outside the workspace. Leftovers of crashed saves older than an
    hour are deleted. Shows what goes and the space freed, then asks (on a terminal); without
    a terminal pass --yes.

    Examples:

      [bold]lmforge ckpt prune --dry-run[/bold]   (the newest run)

      [bold]lmforge ckpt prune my-run --keep-last 1 --yes[/bold]

      [bold]lmforge ckpt prune --all --yes[/bold]
    """
    from lmforge.runs.checkpoints import plan_prunes, prune

    ws = workspace(ctx)
    plans = plan_prunes(ws, run, all_runs=all_runs, keep_last=keep_last)
    if not run and not all_runs:
        info(ctx, f"Pruning the newest run, {escape(plans[0].run)} (name a RUN or pass --all for others).")
    doomed = [item for p in plans for item in p.delete]
    freed = sum(p.freed_bytes for p in plans)
    report: dict[str, Any] = {
        "dry_run": dry_run,
        "runs": [p.to_dict() for p in plans],
        "freed_bytes": 0 if dry_run else freed,
        "would_free_bytes": freed,
        "deleted": [],
    }
    if not as_json:
        _print_plan(plans, dry_run)
    if not doomed or dry_run:
        if as_json:
            print_json(report)
        elif not doomed:
            info(ctx, "Nothing to prune.")
        else:
            info(ctx, f"Dry run: would delete {_dirs(len(doomed))} and free {format_bytes(freed)}.")
        return
    if not yes:
        from lmforge.cli.common import confirm_deletion

        confirm_deletion(
            f"Delete {_dirs(len(doomed))} ({format_bytes(freed)})?",
            refusal=f"not deleting {plural(len(doomed), 'checkpoint directory', 'checkpoint directories')} "
            "without confirmation "
            "(no terminal to ask on)",
            hint="pass --yes to delete, or --dry-run to only look",
        )
    result = prune(ws, plans)
    report["freed_bytes"] = result.freed_bytes
    report["deleted"] = [str(path) for path in result.deleted]
    if as_json:
        print_json(report)
    else:
        info(ctx, f"Deleted {_dirs(len(result.deleted))}, freed {format_bytes(result.freed_bytes)}.")
    if result.failed:
        raise LmforgeError(f"could not delete {_dirs(len(result.failed))}: {'; '.join(result.failed)}")


def _dirs(n: int) -> str:
    return plural(n, "directory", "directories")


def _print_plan(plans, dry_run: bool) -> None:
    table = Table(title="Would delete" if dry_run else "To delete", title_justify="left")
    for column in ("run", "name", "kind", "step", "size", "why"):
        table.add_column(column, justify="right" if column in ("step", "size") else "left")
    for p in plans:
        for i in p.delete:
            step = "-" if i.step is None else f"{i.step:,}"
            table.add_row(
                escape(i.run), escape(i.name), i.kind, step, format_bytes(i.size_bytes), escape(i.reason)
            )
    if table.row_count:
        print_table(out_console, table)
    for p in plans:
        kept = ", ".join(_kept_label(c, p) for c in p.keep) or "nothing"
        err_console.print(
            f"[dim]{escape(p.run)}: keeping {escape(kept)}[/dim]", highlight=False, soft_wrap=True
        )
        for i in p.refused:
            err_console.print(
                f"[yellow]{escape(p.run)}: not deleting {escape(i.name)}: {escape(i.reason)}[/yellow]",
                highlight=False,
                soft_wrap=True,
            )


def _kept_label(c, plan) -> str:
    fulls = [k for k in plan.keep if k.kind == "full"]
    if c.name == "best" or c.kind == "best":
        return c.name if c.name == "best" else f"{c.name} (best)"
    if fulls and c.path == fulls[-1].path:
        return f"{c.name} (newest full)"
    return c.name


# ----------------------------------------------------------------------------- export / import


class ExportFormat(StrEnum):
    hf = "hf"
    safetensors = "safetensors"


@app.command("export")
def export_cmd(
    ctx: typer.Context,
    ckpt: str = checkpoint_argument(),
    format: ExportFormat = typer.Option(
        ExportFormat.hf,
        "--format",
        "-f",
        help="hf: a transformers directory (GPT2LMHeadModel, or NanoChatForCausalLM for --recipe "
        "modern); safetensors: lmforge weights + meta.json.",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Directory to write (must be empty or new).", file_okay=False
    ),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out directory."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Write a checkpoint as a standalone directory.

    [bold]--format hf[/bold] writes config.json, model.safetensors and generation_config.json that
    transformers.AutoModelForCausalLM.from_pretrained(DIR) loads with the same logits (as
    GPT2LMHeadModel, or NanoChatForCausalLM for the modern architecture), GPT-2
    tokenizer files (vocab.json, merges.txt) when the checkpoint's tokenizer is available
    here, and lmforge.json (run, step, metrics, tokenizer identity, config).
    [bold]--format safetensors[/bold] writes lmforge's weights and meta.json: a light checkpoint
    any lmforge command accepts as a path. The directory is written beside --out and renamed
    into place, so a failure never leaves half a directory or damages an existing one.

    Examples:

      [bold]lmforge ckpt export best --format hf --out ./my-gpt2[/bold]

      [bold]lmforge ckpt export my-run:step-2000 --format safetensors --out /backups/step-2000[/bold]
    """
    from lmforge.interop.hf_export import export_checkpoint
    from lmforge.runs.names import resolve_checkpoint

    ws = workspace(ctx)
    path = resolve_checkpoint(ws, ckpt)
    info(ctx, f"Exporting {escape(str(path))} as {format.value} …")
    result = export_checkpoint(path, out, format.value, workspace=ws, force=force)
    for note in result.notes:
        err_console.print(f"[yellow]Note:[/yellow] {escape(note)}", highlight=False, soft_wrap=True)
    if as_json:
        print_json({"checkpoint": str(path), **vars(result), "out": str(result.out)})
        return
    table = Table(title=f"Wrote {escape(str(result.out))}", title_justify="left")
    table.add_column("file")
    table.add_column("size", justify="right")
    for name, size in result.files.items():
        table.add_row(escape(name), format_bytes(size))
    print_table(out_console, table)
    if format == ExportFormat.hf:
        # AutoModelForCausalLM reads config.json's architectures: right for either class written
        loader = f"transformers.AutoModelForCausalLM.from_pretrained({escape(repr(str(result.out)))})"
        info(ctx, f"Load it with: {loader} (a {result.model_class})")


@app.command("import")
def import_cmd(
    ctx: typer.Context,
    directory: Path = typer.Argument(
        ...,
        help="A Hugging Face GPT-2 directory (config.json + weights).",
        file_okay=False,
        show_default=False,
    ),
    name: str = typer.Option(
        None, "--as", help="Run name to create (default: the directory's name).", show_default=False
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Import a Hugging Face GPT-2 model as a run with one checkpoint, best.

    Reads config.json and model.safetensors (or pytorch_model.bin, loaded with
    weights_only=True: pickles that would run code are refused). The run then works with
    [bold]eval NAME[/bold], [bold]generate NAME[/bold] and [bold]train --init-from NAME[/bold]. The tokenizer
    comes from the directory's vocab.json + merges.txt (GPT-2's is recognized), else
    GPT-2's is assumed for a 50257-token vocabulary. Only GPT-2 architectures are accepted
    (gelu_new, tied embeddings, no per-layer attention scaling).

    Examples:

      [bold]lmforge ckpt import ./gpt2 --as openai-gpt2[/bold]

      [bold]lmforge eval openai-gpt2 --data wikitext-103[/bold]
    """
    from lmforge.interop.hf_import import import_checkpoint

    ws = workspace(ctx)
    info(ctx, f"Importing {escape(str(directory))} …")
    result = import_checkpoint(ws, directory, name)
    for note in result.notes:
        err_console.print(f"[yellow]Note:[/yellow] {escape(note)}", highlight=False, soft_wrap=True)
    data = {
        "run": result.run,
        "checkpoint": str(result.checkpoint),
        "preset": result.preset,
        "parameters": result.parameters,
        "tokenizer": result.tokenizer,
    }
    if as_json:
        print_json(data)
        return
    out_console.print(
        f"Imported [bold]{escape(result.run)}[/bold] ({result.parameters:,} parameters, "
        f"preset {result.preset}, tokenizer {escape(str(result.tokenizer.get('name')))}) "
        f"-> {escape(str(result.checkpoint))}",
        highlight=False,
        soft_wrap=True,
    )
    info(ctx, f'Try: lmforge generate {escape(result.run)} "The history of"')
