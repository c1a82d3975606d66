"""``lmforge eval --tasks``: lm-eval-harness tasks on an lmforge checkpoint, and their saved results.

The tasks run through ``lm_eval_adapter.LmforgeLM`` (no export needed), on the
checkpoint's device and dtype. lm-eval-harness is the optional extra
``[eval]``: without it ``--tasks`` stops at once with the install line.

Offline, lm-eval's datasets come from the Hugging Face cache or from a task
YAML that points at local files (``dataset_path: json`` with
``dataset_kwargs: {data_files: ...}``) in ``--tasks-dir``. When the Hub does
not answer, the process is switched to the Hub's offline mode before lm-eval
loads anything, so a dataset that is not local fails in one line instead of a
stack of retries.

Every task YAML in ``--tasks-dir`` must parse (``check_task_yamls``): lm-eval passes over
one that does not, and its task would look unknown.

Results are saved beside the checkpoint as ``evals/<time>-<task>.json`` through
``lmforge.runs.evals``, where ``ckpt show`` and ``runs show`` read them.

Imports ``options`` and ``errors``; ``runs.evals``, ``data.hub``, ``device``, lm-eval, torch
and the rest of ``eval`` only inside functions, so the option checks run before any of them
is loaded.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.errors import DataError, NotFoundError, UsageError
from lmforge.eval.options import EvalOptions

if TYPE_CHECKING:
    import torch.nn as nn

    from lmforge.data.tokenizer import Tokenizer
    from lmforge.eval.evaluate import ProgressFactory
    from lmforge.workspace import Workspace

INSTALL_LINE = 'pip install "lmforge[eval]"'


@dataclass(frozen=True)
class TaskRow:
    """One metric of one lm-eval task on one checkpoint."""

    checkpoint: str
    task: str
    metric: str
    value: float | None
    stderr: float | None
    filter: str = "none"
    samples: int | None = None
    num_fewshot: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def require_lm_eval() -> None:
    """Fail at once, with the install line, when the ``[eval]`` extra is missing."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UsageError("--tasks needs lm-eval-harness, which is not installed", INSTALL_LINE) from None


def parse_tasks(spec: str) -> list[str]:
    tasks = list(dict.fromkeys(t.strip() for t in spec.split(",") if t.strip()))
    if not tasks:
        raise UsageError(f"--tasks names no task: {spec!r}", "e.g. --tasks hellaswag,arc_easy")
    return tasks


def check_task_options(limit: int | None, num_fewshot: int | None, tasks_dir: str | None) -> None:
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be >= 1, got {limit}")
    if num_fewshot is not None and num_fewshot < 0:
        raise UsageError(f"--num-fewshot must be >= 0, got {num_fewshot}")
    if tasks_dir is not None:
        if not Path(tasks_dir).expanduser().is_dir():
            raise UsageError(
                f"--tasks-dir {tasks_dir} is not a directory", "a folder of lm-eval task YAML files"
            )
        check_task_yamls(Path(tasks_dir).expanduser())


# folders lm-eval's task index passes over
_SKIPPED_DIRS = ("__pycache__", ".ipynb_checkpoints")


def check_task_yamls(folder: Path) -> None:
    """Every ``*.yaml`` under ``folder`` (the files lm-eval indexes) must parse: lm-eval logs a
    broken one and passes over it, so its task would be reported as unknown. The error names
    the file and line. Tags such as lm-eval's ``!function`` are accepted without being run."""
    import yaml

    class AnyTagLoader(yaml.SafeLoader):
        pass

    AnyTagLoader.add_multi_constructor("", lambda loader, suffix, node: None)
    hint = "fix it, or move it out of --tasks-dir (lm-eval reads every .yaml file in the folder)"
    for path in sorted(folder.rglob("*.yaml")):
        if any(part in _SKIPPED_DIRS for part in path.relative_to(folder).parts):
            continue
        try:
            yaml.load(path.read_text(encoding="utf-8"), Loader=AnyTagLoader)  # noqa: S506 (a safe loader)
        except UnicodeDecodeError:
            raise UsageError(f"task YAML {path} is not UTF-8 text", hint) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            where = f", line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise UsageError(f"task YAML {path}{where} does not parse: {problem}", hint) from None


def _offline_if_unreachable() -> None:
    """Before lm-eval (and ``datasets``) are imported: offline mode when the Hub is down."""
    from lmforge.data.hub import _hub_reachable, hub_offline

    if not hub_offline() and _hub_reachable() is not None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"


def _task_manager(tasks: list[str], tasks_dir: str | None):
    from lm_eval.tasks import TaskManager

    include = str(Path(tasks_dir).expanduser()) if tasks_dir else None
    if include:
        # indexing only the user's folder takes milliseconds; lm-eval's own ~15k tasks take seconds
        manager = TaskManager(verbosity="ERROR", include_defaults=False, include_path=include)
        if all(t in manager.all_tasks for t in tasks):
            return manager
    manager = TaskManager(verbosity="ERROR", include_path=include)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise NotFoundError(
            f"unknown lm-eval task{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}",
            "`lm_eval ls tasks` lists them; your own task YAMLs go in a folder passed with --tasks-dir DIR",
        )
    return manager


def _dataset_error(tasks: list[str], exc: BaseException) -> DataError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return DataError(
        f"cannot load the dataset of task(s) {', '.join(tasks)}: {first}",
        ("the Hugging Face Hub is not reachable (offline mode); " if offline else "")
        + "point a task YAML at local copies (dataset_path: json, dataset_kwargs: {data_files: ...}) "
        "and pass its folder with --tasks-dir DIR",
    )


def run_tasks(
    model: nn.Module,
    tokenizer: Tokenizer,
    tasks: list[str],
    options: EvalOptions = EvalOptions(),
    *,
    checkpoint: str = "model",
    tasks_dir: str | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    progress: ProgressFactory | None = None,
) -> tuple[list[TaskRow], dict[str, Any]]:
    """Run lm-eval ``tasks`` on ``model`` (``options.batch_size`` requests per forward pass,
    under ``options.dtype``); the rows and what to save of lm-eval's result. ``progress``
    starts one bar per kind of request lm-eval sends (labelled ``checkpoint`` and the kind)."""
    check_task_options(limit, num_fewshot, tasks_dir)
    require_lm_eval()
    _offline_if_unreachable()
    from lm_eval import evaluator

    from lmforge.eval.lm_eval_adapter import LmforgeLM

    manager = _task_manager(tasks, tasks_dir)
    lm = LmforgeLM(
        model,
        tokenizer,
        batch_size=options.batch_size,
        dtype=options.dtype,
        progress=progress,
        label=checkpoint,
    )
    try:
        out = evaluator.simple_evaluate(
            model=lm,
            tasks=tasks,
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            log_samples=False,
            verbosity="ERROR",
        )
    # what `datasets` raises for a dataset it cannot get: FileNotFoundError (and its
    # DatasetNotFoundError), ConnectionError in offline mode, other OSErrors for bad files
    except (OSError, ConnectionError) as exc:
        raise _dataset_error(tasks, exc) from None
    rows = task_rows(checkpoint, out)
    saved = {
        "results": out.get("results", {}),
        "n-samples": out.get("n-samples", {}),
        "versions": out.get("versions", {}),
        "lm_eval_version": _lm_eval_version(),
    }
    return rows, saved


def _lm_eval_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def task_rows(checkpoint: str, out: dict[str, Any]) -> list[TaskRow]:
    """lm-eval's ``{"results": {task: {"acc,none": v, "acc_stderr,none": se}}}`` as rows."""
    rows = []
    for task, metrics in out.get("results", {}).items():
        samples = (out.get("n-samples", {}).get(task) or {}).get("effective")
        fewshot = (out.get("n-shot") or {}).get(task)
        for key, value in metrics.items():
            if "," not in key or key.split(",")[0].endswith("_stderr"):
                continue
            metric, filt = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            rows.append(
                TaskRow(checkpoint, task, metric, _number(value), _number(stderr), filt, samples, fewshot)
            )
    return rows


# ----------------------------------------------------------------------------- results beside the checkpoint


def save_task_results(
    checkpoint_dir: Path, rows: list[TaskRow], saved: dict[str, Any], settings: dict[str, Any]
) -> Path:
    """``<checkpoint>/evals/<time>-<task>.json`` (``lmforge.runs.evals``): the settings, the rows
    and lm-eval's results."""
    from lmforge.runs.evals import save_eval

    record = {**settings, "rows": [r.to_dict() for r in rows], "lm_eval": saved}
    return save_eval(checkpoint_dir, sorted({r.task for r in rows}), record)


def evaluate_tasks_checkpoint(
    workspace: Workspace,
    path: Path,
    tasks: list[str],
    options: EvalOptions = EvalOptions(device="auto", dtype="auto"),
    *,
    label: str | None = None,
    tasks_dir: str | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    save: bool = True,
    progress: ProgressFactory | None = None,
) -> tuple[list[TaskRow], Path | None]:
    """``lmforge eval CKPT --tasks ...``: load the checkpoint directory ``path`` (a name is
    resolved by the caller) and its own tokenizer, run the tasks, save the results beside it;
    the rows (labelled ``label``, default the path) and the saved file."""
    from lmforge.device import resolve_dtype
    from lmforge.eval.generate import load_for_generation

    check_task_options(limit, num_fewshot, tasks_dir)
    require_lm_eval()
    label = str(path) if label is None else label
    model, tokenizer, _ = load_for_generation(workspace, path, device=str(options.device or "auto"))
    precision = resolve_dtype(options.dtype, next(model.parameters()).device, workspace.cache_dir)
    options = replace(options, device=None, dtype=precision)  # None: the model's device
    rows, saved = run_tasks(
        model,
        tokenizer,
        tasks,
        options,
        checkpoint=label,
        tasks_dir=tasks_dir,
        limit=limit,
        num_fewshot=num_fewshot,
        progress=progress,
    )
    settings = {
        "checkpoint": label,
        "tasks": tasks,
        "limit": limit,
        "num_fewshot": num_fewshot,
        "batch_size": options.batch_size,
        "dtype": precision,
    }
    return rows, save_task_results(Path(path), rows, saved, settings) if save else None
