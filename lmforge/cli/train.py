"""``lmforge train``: parse options into a TrainingConfig (or a run's own, on --resume), hand it
to the ``TrainingManager``, print the summary."""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from lmforge.cli.common import err_console, out_console, print_json, state, workspace
from lmforge.cli.complete import complete_checkpoint_names, complete_run_names
from lmforge.cli.config_options import with_config_options


@with_config_options
def train(
    ctx: typer.Context,
    config_file: str = typer.Option(
        None, "--config", help="TOML file with config values.", show_default=False
    ),
    resume: str = typer.Option(
        None,
        "--resume",
        help="Continue a run (a name or 'latest') from its newest full checkpoint; options may change "
        "steps, lr, intervals, device, dtype, but not the architecture or data.",
        show_default=False,
        autocompletion=complete_run_names,
    ),
    init_from: str = typer.Option(
        None,
        "--init-from",
        help="Start a new run from a checkpoint's weights and architecture "
        "(best, latest, RUN, RUN:step-N or a path).",
        show_default=False,
        autocompletion=complete_checkpoint_names,
    ),
    nproc: int = typer.Option(
        None,
        "--nproc",
        min=1,
        help="Train in N processes on this machine (one per GPU): launches torchrun for you. "
        "Under torchrun itself, leave it out.",
        show_default=False,
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and costs, then exit."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan (--dry-run) or the summary as JSON."),
    overrides: dict | None = None,
) -> None:
    """Train a GPT-2-style model on a prepared dataset.

    Ctrl-C or SIGTERM finishes the current step, saves a full checkpoint and exits
    (130 / 143); continue with --resume. A second Ctrl-C aborts at once without
    saving. Progress goes to stderr (a live view on a terminal, plain lines otherwise),
    the summary to stdout; metrics, samples and checkpoints to runs/<run>/ in the
    workspace.

    Several GPUs: --nproc N (or torchrun --nproc_per_node N -m lmforge -- train ...), with
    --strategy ddp (default) or fsdp; --batch-size is per process. Checkpoints load on
    any number of processes.

    Examples:

      [bold]lmforge train --steps 300000[/bold]   (GPT-2 small on WikiText-103)

      [bold]lmforge train --preset tiny --data wikitext-2[/bold]   (a CPU run: 200 steps, minutes)

      [bold]lmforge train --resume latest --steps 4000[/bold]   (continue the newest run, for longer)

      [bold]lmforge train --init-from tiny-run:best --data my-corpus --run tuned[/bold]   (start from weights)

      [bold]lmforge train --preset gpt2-medium --dry-run[/bold]   (sizes, FLOPs and memory only)

      [bold]lmforge train --nproc 8 --strategy fsdp --preset gpt2-xl[/bold]   (8 GPUs, sharded)
    """
    from lmforge.distributed import launched_by_torchrun
    from lmforge.errors import UsageError

    if nproc is not None and launched_by_torchrun():
        raise UsageError(
            "--nproc cannot be used under torchrun", "torchrun already chose the processes: drop --nproc"
        )
    from lmforge.train.run_spec import resolve_run

    overrides = dict(overrides or {})
    preset = overrides.pop(("preset",), None)
    run_name = overrides.get(("run",))
    if isinstance(run_name, str) and not run_name.strip():  # the config reads "" as "not given"
        raise UsageError(f"--run {run_name!r} is empty", "name the run, or leave --run out to get a name")
    ws = workspace(ctx)
    run_spec = resolve_run(
        ws, config_file=config_file, preset=preset, overrides=overrides, resume=resume, init_from=init_from
    )
    config = run_spec.config
    if dry_run:
        for message in run_spec.warnings:  # a run reports them as it starts
            err_console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False)
        _warn_if_not_prepared(ws, config.data.name)
        from lmforge.train.dry_run import dry_run_report

        world_size = nproc or int(os.environ.get("WORLD_SIZE", 1))
        report = dry_run_report(config, world_size=world_size)
        from lmforge.train.estimate import dry_run_facts

        # this machine's answer: the dtype auto picks, the fit check, the time estimate
        report["this_machine"] = dry_run_facts(config, world_size, cache_dir=ws.cache_dir)
        if as_json:
            print_json(report)
        else:
            _print_plan(report)
        return

    if nproc is not None and nproc > 1:
        from lmforge.launch import launch

        # the same command line in nproc processes (the options were checked above, once)
        raise typer.Exit(launch(nproc, _without_nproc(sys.argv[1:])))

    from lmforge.device import resolve_device
    from lmforge.distributed import process_group
    from lmforge.train.trainer import TrainingManager

    with process_group(resolve_device(config.train.device)) as group:
        reporter = _reporter(ctx) if group.is_main else None
        manager = TrainingManager(
            workspace=ws,
            spec=run_spec,
            reporter=reporter,
            rank=group.rank,
            world_size=group.world_size,
        )
        try:
            result = manager.train()
        except KeyboardInterrupt as exc:  # a second Ctrl-C: nothing saved, run.json says aborted
            if group.is_main:
                from lmforge.train.run_spec import next_step_hint

                err_console.print(
                    f"[bold red]Aborted:[/bold red] run {manager.run_name} stopped without saving; "
                    f"{next_step_hint(manager.run_dir)}",
                    highlight=False,
                    soft_wrap=True,
                )
            raise typer.Exit(getattr(exc, "exit_code", 130)) from None
        except RuntimeError as exc:  # a collective failed: another rank was killed or crashed
            from lmforge.distributed import is_lost_peer, lost_peer_error

            if not (group.enabled and is_lost_peer(exc)):
                raise
            raise lost_peer_error(exc, group.rank) from exc
    if group.is_main:
        if as_json:
            print_json(result.to_dict())
        else:
            from lmforge.observe.dashboard import summary_table

            out_console.print(summary_table(result))
    if group.enabled:  # a rank of a multi-process run: everything is written, leave at once
        from lmforge.distributed import leave_rank

        leave_rank(result.exit_code)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def _warn_if_not_prepared(ws, name: str) -> None:
    """A dry run needs no data, but says so when the real run would stop at the dataset."""
    from lmforge.data.store import open_dataset
    from lmforge.errors import NotFoundError

    try:
        open_dataset(ws, name)
    except NotFoundError as exc:
        err_console.print(
            f"[yellow]warning:[/yellow] {escape(exc.message)}; a dry run needs no data, but a run "
            f"would stop here: {escape(exc.hint or '')}",
            highlight=False,
            soft_wrap=True,
        )


def _without_nproc(args: list[str]) -> list[str]:
    """``args`` minus ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _reporter(ctx: typer.Context):
    """A live view on a terminal; plain lines in a log or a pipe; with --quiet warnings only."""
    from lmforge.observe.dashboard import PlainReporter, RichReporter

    quiet = state(ctx).quiet
    if err_console.is_terminal and not quiet:
        return RichReporter(err_console)
    return PlainReporter(quiet=quiet)


def _print_plan(report: dict[str, Any]) -> None:
    from lmforge.tomlfile import dumps_toml

    out_console.print(dumps_toml(report["config"]), highlight=False, markup=False)
    table = Table(title="Plan", show_header=False)
    p, m = report["parameters"], report["memory_bytes"]
    rows = [
        ("parameters (total)", f"{p['total']:,}"),
        ("without position embeddings", f"{p['without_position_embeddings']:,}"),
        ("non-embedding", f"{p['non_embedding']:,}"),
        ("tokens per optimizer step", f"{report['tokens_per_step']:,}"),
        ("tokens in total", f"{report['total_tokens']:,}"),
        ("FLOPs per token", f"{report['flops_per_token']:.3e}"),
        ("FLOPs per step", f"{report['flops_per_step']:.3e}"),
        ("memory: weights + grads + AdamW", f"{m['total'] / 2**30:.2f} GiB"),
        ("memory: activations (a micro-batch)", f"{m['activations'] / 2**30:.2f} GiB"),
        ("memory: training step (per process)", f"{m['step'] / 2**30:.2f} GiB"),
    ]
    if report["config"]["model"].get("document_masking"):
        rows.append(("attention", "within documents: never across an end-of-text token (--document-masking)"))
    here = report.get("this_machine") or {}
    if "error" in here:
        rows.append(("on this machine", f"n/a: {here['error']}"))
    elif here:
        from lmforge.units import format_bytes, format_duration

        rows.append(("device, dtype", f"{here['device']}, {here['dtype']} ({here['dtype_reason']})"))
        if here["fits"] is None:
            fit = "free memory unknown"
        else:
            verdict = "fits" if here["fits"] else f"does NOT fit ({here['fit_hint']})"
            need, free = format_bytes(here["step_memory_bytes"]), format_bytes(here["free_bytes"])
            fit = f"{need} of {free} free: {verdict}"
        rows.append(("memory check", fit))
        measured = f"{here['matmul_flops'] / 1e9:,.0f} GFLOP/s in a {here['dtype']} matmul here"
        rows.append(("estimated time", f"~{format_duration(here['estimate_s'])} ({measured})"))
    for key, value in rows:
        table.add_row(key, value)
    out_console.print(table)
    if here.get("advice"):
        err_console.print(f"[yellow]warning:[/yellow] {escape(here['advice'])}", highlight=False)
