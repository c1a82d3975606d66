"""``lmforge ckpt``: list, inspect, prune, export and import checkpoints."""

from __future__ import annotations

import math
import sys
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from lmforge.cli.common import JSON_OPTION, err_console, info, out_console, print_json, workspace
from lmforge.cli.runs import complete_run_names, fmt_bytes, fmt_count, fmt_loss, fmt_time
from lmforge.errors import LmforgeError, UsageError
from lmforge.workspace import Workspace

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


def complete_checkpoint_names(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion for CKPT: best, latest, RUN, and RUN:NAME once a run is typed."""
    from lmforge.checkpoint.store import list_checkpoints

    ws = Workspace.resolve(ctx.find_root().params.get("workspace"))
    names = ["best", "latest", *ws.run_names()]
    run, sep, _ = incomplete.partition(":")
    if sep and run in ws.run_names():
        names = [f"{run}:latest", *(f"{run}:{c.name}" for c in list_checkpoints(ws.run_dir(run)))]
    return [n for n in names if n.startswith(incomplete)]


def _ckpt_argument() -> Any:
    return typer.Argument(
        ...,
        help="Checkpoint: best, latest, RUN, RUN:best, RUN:latest, RUN:step-N, or a directory.",
        autocompletion=complete_checkpoint_names,
        show_default=False,
    )


# ----------------------------------------------------------------------------- list


@app.command("list")
def list_cmd(
    ctx: typer.Context,
    run: str = typer.Argument(
        None,
        help="Run name or 'latest' (default: every run).",
        autocompletion=complete_run_names,
        show_default=False,
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Complete checkpoints: run, name, kind, step, tokens, validation loss, size, time.

    Checkpoints still being written (and leftovers of crashed saves) are not listed.

    Examples:

      [bold]lmforge ckpt list[/bold]

      [bold]lmforge ckpt list latest --json[/bold]
    """
    from lmforge.checkpoint.store import list_checkpoints
    from lmforge.runs.names import resolve_run, runs_by_start

    ws = workspace(ctx)
    run_dirs = [resolve_run(ws, run)] if run else [ws.run_dir(n) for n in runs_by_start(ws)]
    checkpoints = [c for d in run_dirs for c in list_checkpoints(d)]
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
            fmt_count(c.tokens),
            fmt_loss(c.val_loss),
            fmt_bytes(c.size_bytes),
            fmt_time(c.created_at),
        ]
        table.add_row(*([] if one_run else [escape(c.run)]), *row)
    out_console.print(table)
    info(ctx, f"{len(checkpoints)} checkpoints, {fmt_bytes(sum(c.size_bytes for c in checkpoints))} in all.")


# ----------------------------------------------------------------------------- show


@app.command("show")
def show_cmd(ctx: typer.Context, ckpt: str = _ckpt_argument(), as_json: bool = JSON_OPTION) -> None:
    """One checkpoint: step, tokens, metrics at save, tokenizer, model size, files and config.

    Examples:

      [bold]lmforge ckpt show best[/bold]

      [bold]lmforge ckpt show my-run:step-2000 --json[/bold]
    """
    from lmforge.runs.names import resolve_checkpoint

    details = checkpoint_details(resolve_checkpoint(workspace(ctx), ckpt))
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
        ("tokens", f"{fmt_count(m.get('tokens'))} ({m.get('tokens', 0):,})"),
        ("val loss", fmt_loss(metrics["val_loss"])),
        ("val perplexity", "-" if metrics["val_ppl"] is None else f"{metrics['val_ppl']:.2f}"),
    ]
    if metrics.get("train_loss") is not None:
        rows.append(("train loss", f"{metrics['train_loss']:.4f} (step {metrics['train_step']:,})"))
    rows += [
        ("dataset", escape(str(m.get("dataset") or "-"))),
        ("tokenizer", escape(f"{tok.get('name')} (sha256 {str(tok.get('sha256') or '-')[:12]}…)")),
        ("parameters", f"{details['parameters']:,}"),
        ("created", fmt_time(m.get("created_at"))),
        ("lmforge", str(m.get("lmforge_version", "-"))),
    ]
    for key in ("imported_from", "exported_from"):
        if m.get(key):
            source = m[key] if isinstance(m[key], str) else m[key].get("path")
            rows.append((key.replace("_", " "), escape(str(source))))
    for key, value in rows:
        head.add_row(f"[dim]{key}[/dim]", value)
    out_console.print(head)

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
        files.add_row(escape(f["name"]), fmt_bytes(f["bytes"]), f"{f['bytes']:,}{note}")
    out_console.print(files)
    from lmforge.config import dumps_toml

    out_console.print("[bold]Config[/bold]")
    out_console.print(dumps_toml(m["config"]), highlight=False, markup=False)


def checkpoint_details(path: Path) -> dict[str, Any]:
    """What ``ckpt show`` prints: meta.json, the files on disk with their sizes, metrics."""
    from lmforge.checkpoint.store import read_meta
    from lmforge.config import TrainingConfig
    from lmforge.interop.hf import lmforge_param_shapes

    meta = read_meta(path)
    expected = meta.get("files") or {}
    files = [
        {"name": f.name, "bytes": f.stat().st_size, "expected_bytes": expected.get(f.name)}
        for f in sorted(path.iterdir())
        if f.is_file()
    ]
    try:
        model = TrainingConfig.from_dict(meta["config"]).model
        parameters = sum(math.prod(s) for s in lmforge_param_shapes(model).values())
    except LmforgeError:
        parameters = None
    val_loss = meta.get("val_loss")
    metrics: dict[str, Any] = {
        "val_loss": val_loss,
        "val_ppl": math.exp(val_loss) if isinstance(val_loss, (int, float)) and val_loss < 700 else None,
    }
    metrics.update(_train_metrics_at(path.parent.parent / "metrics.jsonl", meta.get("step")))
    return {
        "path": str(path),
        "meta": meta,
        "metrics": metrics,
        "parameters": parameters,
        "files": files,
        "size_bytes": sum(f["bytes"] for f in files),
    }


def _train_metrics_at(metrics_file: Path, step: int | None) -> dict[str, Any]:
    """The last logged training loss at or before ``step`` (the run's metrics.jsonl)."""
    if step is None or not metrics_file.is_file():
        return {}
    from lmforge.runs.listing import read_metrics

    before = [
        r for r in read_metrics(metrics_file).train if isinstance(r.get("step"), int) and r["step"] <= step
    ]
    if not before:
        return {}
    last = before[-1]
    return {"train_loss": last.get("loss"), "train_step": last["step"], "lr": last.get("lr")}


# ----------------------------------------------------------------------------- prune


def _interactive() -> bool:
    """Whether a confirmation can be asked (a person at a terminal); patched in tests."""
    return sys.stdin.isatty()


def _keep_last_of(run_dir: Path) -> int:
    """The run's own ``checkpoint.keep_last`` (its config.toml), else the default."""
    from lmforge.config import CheckpointConfig, TrainingConfig

    try:
        return TrainingConfig.from_toml(run_dir / "config.toml").checkpoint.keep_last
    except LmforgeError:
        return CheckpointConfig().keep_last


@app.command("prune")
def prune_cmd(
    ctx: typer.Context,
    run: str = typer.Argument(
        None,
        help="Run to prune (default: the newest run).",
        autocompletion=complete_run_names,
        show_default=False,
    ),
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
    from lmforge.checkpoint.store import delete_checkpoint, plan_prune
    from lmforge.runs.names import resolve_run, runs_by_start

    ws = workspace(ctx)
    if run and all_runs:
        raise UsageError(
            "pass a RUN or --all, not both", "lmforge ckpt prune RUN, or lmforge ckpt prune --all"
        )
    if all_runs:
        run_dirs = [ws.run_dir(n) for n in runs_by_start(ws)]
    else:
        run_dirs = [resolve_run(ws, run or "latest")]
        if not run:
            info(
                ctx,
                f"Pruning the newest run, {escape(run_dirs[0].name)} (name a RUN or pass --all for others).",
            )
    plans = [plan_prune(ws, d, _keep_last_of(d) if keep_last is None else keep_last) for d in run_dirs]
    doomed = [item for p in plans for item in p.delete]
    freed = sum(p.freed_bytes for p in plans)
    report: dict[str, Any] = {
        "dry_run": dry_run,
        "runs": [
            {
                "run": p.run,
                "keep_last": p.keep_last,
                "delete": [i.to_dict() for i in p.delete],
                "keep": [c.to_dict() for c in p.keep],
                "refused": [i.to_dict() for i in p.refused],
            }
            for p in plans
        ],
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
            info(ctx, f"Dry run: would delete {len(doomed)} directories and free {fmt_bytes(freed)}.")
        return
    if not yes:
        if not _interactive():
            raise UsageError(
                f"not deleting {len(doomed)} checkpoint directories without confirmation "
                "(no terminal to ask on)",
                "pass --yes to delete, or --dry-run to only look",
            )
        if not typer.confirm(
            f"Delete {len(doomed)} directories ({fmt_bytes(freed)})?", default=False, err=True
        ):
            err_console.print("Nothing deleted.")
            raise typer.Exit(1)
    freed, failed = 0, []
    for item in doomed:
        try:
            freed += delete_checkpoint(ws, item.path)
            report["deleted"].append(str(item.path))
        except (LmforgeError, OSError) as exc:
            failed.append(f"{item.path}: {exc}")
    report["freed_bytes"] = freed
    if as_json:
        print_json(report)
    else:
        info(ctx, f"Deleted {len(report['deleted'])} directories, freed {fmt_bytes(freed)}.")
    if failed:
        raise LmforgeError(f"could not delete {len(failed)} directories: {'; '.join(failed)}")


def _print_plan(plans, dry_run: bool) -> None:
    table = Table(title="Would delete" if dry_run else "To delete", title_justify="left")
    for column in ("run", "name", "kind", "step", "size", "why"):
        table.add_column(column, justify="right" if column in ("step", "size") else "left")
    for p in plans:
        for i in p.delete:
            step = "-" if i.step is None else f"{i.step:,}"
            table.add_row(
                escape(i.run), escape(i.name), i.kind, step, fmt_bytes(i.size_bytes), escape(i.reason)
            )
    if table.row_count:
        out_console.print(table)
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
    ckpt: str = _ckpt_argument(),
    format: ExportFormat = typer.Option(
        ExportFormat.hf,
        "--format",
        "-f",
        help="hf: a transformers GPT2LMHeadModel directory; safetensors: lmforge weights + meta.json.",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Directory to write (must be empty or new).", file_okay=False
    ),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out directory."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Write a checkpoint as a standalone directory.

    [bold]--format hf[/bold] writes config.json, model.safetensors and generation_config.json that
    transformers.GPT2LMHeadModel.from_pretrained(DIR) loads with the same logits, GPT-2
    tokenizer files (vocab.json, merges.txt) when the checkpoint's tokenizer is available
    here, and lmforge.json (run, step, metrics, tokenizer identity, config).
    [bold]--format safetensors[/bold] writes lmforge's weights and meta.json: a light checkpoint
    any lmforge command accepts as a path. The directory is written beside --out and renamed
    into place, so a failure never leaves half a directory or damages an existing one.

    Examples:

      [bold]lmforge ckpt export best --format hf --out ./my-gpt2[/bold]

      [bold]lmforge ckpt export my-run:step-2000 --format safetensors --out /backups/step-2000[/bold]
    """
    from lmforge.interop.hf import export_checkpoint
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
        table.add_row(escape(name), fmt_bytes(size))
    out_console.print(table)
    if format == ExportFormat.hf:
        info(
            ctx,
            f"Load it with: transformers.GPT2LMHeadModel.from_pretrained({escape(repr(str(result.out)))})",
        )


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
    from lmforge.interop.hf import import_checkpoint

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
