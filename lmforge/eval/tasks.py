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

Results are saved beside the checkpoint as ``evals/<time>-<task>.json``, where
``ckpt show`` and ``runs show`` find them (``saved_evals``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.errors import DataError, NotFoundError, UsageError

if TYPE_CHECKING:
    import torch.nn as nn

    from lmforge.data.tokenizer import Tokenizer
    from lmforge.workspace import Workspace

INSTALL_LINE = 'pip install "lmforge[eval]"'
EVALS_DIR = "evals"
# what lm-eval's datasets are when they are local files rather than a Hub repository
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")


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
    if tasks_dir is not None and not Path(tasks_dir).expanduser().is_dir():
        raise UsageError(f"--tasks-dir {tasks_dir} is not a directory", "a folder of lm-eval task YAML files")


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
    *,
    checkpoint: str = "model",
    tasks_dir: str | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    dtype: str = "fp32",
) -> tuple[list[TaskRow], dict[str, Any]]:
    """Run lm-eval ``tasks`` on ``model``; the rows and what to save of lm-eval's result."""
    check_task_options(limit, num_fewshot, tasks_dir)
    require_lm_eval()
    _offline_if_unreachable()
    from lm_eval import evaluator

    from lmforge.eval.lm_eval_adapter import LmforgeLM

    manager = _task_manager(tasks, tasks_dir)
    lm = LmforgeLM(model, tokenizer, batch_size=batch_size, dtype=dtype)
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
    """``<checkpoint>/evals/<time>-<task>.json``: the rows, the settings and lm-eval's results."""
    from lmforge import __version__
    from lmforge.fileio import write_json_atomic
    from lmforge.units import now_iso

    created = now_iso()
    tasks = sorted({r.task for r in rows}) or ["none"]
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", tasks[0]) + (f"+{len(tasks) - 1}" if len(tasks) > 1 else "")
    stamp = re.sub(r"[^0-9TZ]", "", created)
    path = checkpoint_dir / EVALS_DIR / f"{stamp}-{label}.json"
    path.parent.mkdir(exist_ok=True)
    record = {
        "format": "lmforge-eval",
        "created": created,
        "lmforge_version": __version__,
        **settings,
        "rows": [r.to_dict() for r in rows],
        "lm_eval": saved,
    }
    write_json_atomic(path, record)
    return path


def saved_evals(checkpoint_dir: str | os.PathLike, warnings: list[str] | None = None) -> list[dict[str, Any]]:
    """The saved task results of a checkpoint, oldest first: ``{"file", "created", "tasks",
    "rows"}`` each. An unreadable file is left out, and said in ``warnings`` (when given): one
    damaged file must not hide the others, but a person should learn it was passed over."""
    found = []
    for path in sorted((Path(checkpoint_dir) / EVALS_DIR).glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
            if warnings is not None:
                warnings.append(f"skipped {path}: not readable JSON ({exc})")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("rows", []), list):
            if warnings is not None:
                warnings.append(f"skipped {path}: not an lmforge eval record")
            continue
        rows = [r for r in record.get("rows") or [] if isinstance(r, dict)]
        created = record.get("created")
        found.append(
            {
                "file": path.name,
                "created": created if isinstance(created, str) else None,
                "tasks": sorted({str(r["task"]) for r in rows if r.get("task")}),
                "rows": rows,
            }
        )
    return found


def evaluate_tasks_checkpoint(
    workspace: Workspace,
    spec: str,
    tasks: list[str],
    *,
    tasks_dir: str | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "auto",
    save: bool = True,
) -> tuple[list[TaskRow], Path | None]:
    """``lmforge eval SPEC --tasks ...``: load the checkpoint and its own tokenizer, run the
    tasks, save the results beside it; the rows and the saved file."""
    from lmforge.device import resolve_dtype
    from lmforge.eval.generate import load_for_generation
    from lmforge.runs.names import resolve_checkpoint

    check_task_options(limit, num_fewshot, tasks_dir)
    require_lm_eval()
    path = resolve_checkpoint(workspace, spec)
    model, tokenizer, _ = load_for_generation(workspace, str(path), device=device)
    precision = resolve_dtype(dtype, next(model.parameters()).device, workspace.cache_dir)
    rows, saved = run_tasks(
        model,
        tokenizer,
        tasks,
        checkpoint=spec,
        tasks_dir=tasks_dir,
        limit=limit,
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        dtype=precision,
    )
    settings = {
        "checkpoint": spec,
        "tasks": tasks,
        "limit": limit,
        "num_fewshot": num_fewshot,
        "batch_size": batch_size,
        "dtype": precision,
    }
    return rows, save_task_results(path, rows, saved, settings) if save else None
