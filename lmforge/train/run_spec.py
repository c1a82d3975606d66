"""What a run is: the rules for new, resumed and initialised runs, in one place.

``resolve_run`` resolves what to train, for the CLI (``--config``, ``--preset``, options,
``--resume``, ``--init-from``) and the Python API (``TrainingManager(config, resume=...,
init_from=...)``) alike, into a ``RunSpec``: the config, the run to continue, the
checkpoint to start from. It needs neither the data nor a device, so ``--dry-run``
and ``--nproc`` use it before anything starts. ``check_run_start`` then checks the spec
against the dataset and the run directory, just before training.

A run is a directory ``runs/<name>/``. Names are generated as
``<preset>-<data>-<yyyymmdd-hhmmss>`` unless given; an existing name is only ever
continued with ``--resume``, never overwritten. A resumed run takes its config from
its ``config.toml``; options given with ``--resume`` may change how it trains (steps,
lr, eval and checkpoint intervals, device, dtype...) but not what it is (the
architecture, the tokenizer, the data and its order). A run started ``--init-from`` a
checkpoint takes the checkpoint's architecture and must use its tokenizer.

May import ``config``, ``presets``, ``workspace``, ``checkpoint``, ``runs`` and ``data``; never
torch at import time (the CLI resolves a run before it imports torch).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import CUDA_VOCAB_MULTIPLE, ModelConfig, TrainingConfig, with_overrides
from lmforge.errors import ConfigError, UsageError
from lmforge.presets import apply_preset, resolve_config
from lmforge.workspace import RunDir, Workspace

# Fields that define what a run is: changing them on --resume would not continue the same run.
# The data fields and batch size fix the order of the batches the data position counts.
FIXED_ON_RESUME: tuple[tuple[str, ...], ...] = (
    ("tokenizer",),
    ("data", "name"),
    ("data", "stride"),
    ("data", "sampling"),
    ("train", "batch_size"),
    ("train", "seed"),
    # the optimizer state's layout (Muon + AdamW groups or AdamW's) and what the run is called
    ("recipe",),
    ("optim", "optimizer"),
)
# The model's shape (dropout and gradient checkpointing may change).
ARCHITECTURE_FIELDS = (
    "vocab_size",
    "block_size",
    "n_layer",
    "n_head",
    "n_embd",
    "bias",
    "layer_norm_epsilon",
    "arch",
    "n_kv_head",
    "qk_norm",
    "document_masking",
    "logit_softcap",
    "value_embeds",
    "residual_lambdas",
    "unet_skips",
)
_DEFAULT_VOCAB = ModelConfig().vocab_size


@dataclass
class RunSpec:
    """What to train: the resolved config, and where the run starts from."""

    config: TrainingConfig
    resume_dir: Path | None = None  # continue this run from its newest full checkpoint
    init_from: Path | None = None  # start a new run from this checkpoint's weights
    init_meta: dict[str, Any] | None = None  # that checkpoint's meta.json
    warnings: list[str] = dataclasses.field(default_factory=list)  # lmforge.train.fit's, to show


def resolve_run(
    workspace: Workspace,
    config: TrainingConfig | None = None,
    *,
    config_file: str | Path | None = None,
    preset: str | None = None,
    overrides: dict[tuple[str, ...], Any] | None = None,
    resume: str | Path | None = None,
    init_from: str | Path | None = None,
) -> RunSpec:
    """The ``RunSpec`` of a run, from a whole ``config`` (the Python API; on ``resume`` it
    defaults to the run's own) or from ``config_file``, ``preset`` and ``overrides`` (the CLI).

    ``resume``: a run name, ``latest`` or a run directory. ``init_from``: a checkpoint name
    (``lmforge.runs.names``) or directory. Whatever would change a resumed run's architecture,
    tokenizer or data, or an initialised run's architecture, is refused here."""
    if resume is not None and init_from is not None:
        raise UsageError(
            "--resume and --init-from cannot be used together",
            "--resume continues a run; --init-from starts a new one from a checkpoint's weights",
        )
    overrides = dict(overrides or {})
    if resume is not None:
        if config_file:
            raise UsageError(
                "--config cannot be combined with --resume",
                "a resumed run keeps its config.toml; change single values with options such as --steps",
            )
        if ("run",) in overrides:
            raise UsageError("--run cannot be combined with --resume", f"use --resume {overrides[('run',)]}")
        run_dir = find_run(workspace, resume)
        check_not_running(run_dir)  # before `--nproc` launches anything (check_run_start checks again)
        if config is None:
            config = resume_config(run_dir, overrides, preset)
        else:
            config = check_resumed_config(run_dir, config)
        return _fitted(RunSpec(_private_copy(config), resume_dir=run_dir))

    if init_from is None:
        config = config if config is not None else resolve_config(config_file, preset, overrides)
        spec = RunSpec(_private_copy(config))
    else:
        spec = _initialised(find_checkpoint(workspace, init_from), config, config_file, preset, overrides)
    if spec.config.run:  # refused here, so that --dry-run refuses it too
        check_run_name(spec.config.run)
    return _fitted(spec)


def _initialised(
    path: Path,
    config: TrainingConfig | None,
    config_file: str | Path | None,
    preset: str | None,
    overrides: dict[tuple[str, ...], Any],
) -> RunSpec:
    """A new run from the weights of the checkpoint at ``path``: its architecture, and (unless a
    whole ``config`` is given) the training defaults of its preset and recipe."""
    from lmforge.checkpoint.meta import read_meta

    meta = read_meta(path)
    if config is not None:
        # a whole config: its architecture gives way to the checkpoint's, the rest is the caller's
        chosen = {
            ("preset",): config.preset,
            ("model", "dropout"): config.model.dropout,
            ("model", "gradient_checkpointing"): config.model.gradient_checkpointing,
        }
    else:
        # the checkpoint's preset and recipe bring their training defaults (under a file and options)
        base_preset, base_recipe = _preset_and_recipe(meta, where=f"checkpoint {path}")
        config = resolve_config(
            config_file, preset, overrides, base_preset=base_preset, base_recipe=base_recipe
        )
        chosen = {**overrides, ("preset",): preset} if preset else overrides
    config = init_config(config, meta, chosen, where=f"checkpoint {path}")
    return RunSpec(_private_copy(config), init_from=path, init_meta=meta)


def check_run_start(workspace: Workspace, spec: RunSpec, dataset: Any) -> RunSpec:
    """``spec`` checked against ``dataset`` (its tokenizer and vocabulary) and the run
    directory (a resumed run is not being trained and has a checkpoint to go on from; a new
    one gets its name, which must be free). Nothing is written."""
    config = _private_copy(spec.config)
    identity = dict(dataset.tokenizer_identity)
    config.tokenizer = identity.get("name", config.tokenizer)
    from lmforge.data.store import check_tokenizer_match

    if spec.init_from is not None:
        recorded = (spec.init_meta or {}).get("tokenizer") or {}
        check_tokenizer_match(identity, recorded, f"checkpoint {spec.init_from}")
    if spec.resume_dir is not None:
        from lmforge.runs.record import RunRecord

        check_not_running(spec.resume_dir)
        recorded = RunRecord.read(spec.resume_dir).get("tokenizer")
        if recorded:
            check_tokenizer_match(identity, recorded, f"run {spec.resume_dir.name}")
    fixed = spec.init_from is not None or spec.resume_dir is not None
    config.model = resolve_vocab(config.model, int(dataset.vocab_size), dataset.name, fixed)
    config.model = resolve_eot(config.model, int(dataset.eot_token), dataset.name)
    if spec.resume_dir is not None:
        check_resume_point(spec.resume_dir, config.train.steps)
        config.run = spec.resume_dir.name
    else:
        config.run = config.run or generate_run_name(workspace, config)
        check_new_run(workspace, config.run)
    return dataclasses.replace(spec, config=config)


def _fitted(spec: RunSpec) -> RunSpec:
    """``spec`` with ``lmforge.train.fit``'s adjustments and warnings."""
    from lmforge.train.fit import fit_to_run

    config, warnings = fit_to_run(spec.config, resumed=spec.resume_dir is not None)
    return dataclasses.replace(spec, config=config, warnings=warnings)


def _private_copy(config: TrainingConfig) -> TrainingConfig:
    return TrainingConfig.from_dict(config.to_dict())  # validated; the caller's stays untouched


# ----------------------------------------------------------------------------- names


def check_run_name(name: str) -> str:
    """``name`` when it may name a new run: valid, and not a reserved word such as ``latest``."""
    from lmforge.runs.names import check_new_run_name

    return check_new_run_name(name)


def generate_run_name(
    workspace: Workspace, config: TrainingConfig, now: datetime.datetime | None = None
) -> str:
    """``<preset>-<data>-<yyyymmdd-hhmmss>`` (local time), with ``-2``, ``-3`` ... on a clash."""
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    data = re.sub(r"[^A-Za-z0-9._-]+", "-", config.data.name).strip("-") or "data"
    base = f"{config.preset}-{data}-{stamp}"
    name, n = base, 1
    while workspace.run_dir(name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def check_new_run(workspace: Workspace, name: str) -> Path:
    """The directory of a new run ``name``; an existing one is refused (nothing is overwritten)."""
    check_run_name(name)
    path = workspace.run_dir(name)
    if path.exists():
        raise UsageError(
            f"run {name!r} already exists in {workspace.runs_dir}",
            f"continue it with `lmforge train --resume {name}`, or pick another --run",
        )
    return path


def find_run(workspace: Workspace, spec: str | Path) -> Path:
    """A run name, ``latest`` or a run directory (a ``Path``, or a directory holding a
    ``config.toml``) -> the run directory."""
    path = Path(spec)
    if isinstance(spec, Path) or RunDir(path).config_file.is_file():
        return path.resolve()
    from lmforge.runs.names import resolve_run

    return resolve_run(workspace, str(spec))


def find_checkpoint(workspace: Workspace, spec: str | Path) -> Path:
    """A checkpoint name (``lmforge.runs.names``) or a ``Path`` -> the checkpoint directory."""
    if isinstance(spec, Path):
        return spec
    from lmforge.runs.names import resolve_checkpoint

    return resolve_checkpoint(workspace, spec)


# ----------------------------------------------------------------------------- resume


def check_not_running(run_dir: Path) -> None:
    """Refuse to resume a run that a live process is still training: its lock is held (the
    trainer takes it before anything else, so this also catches one that has just started),
    or its run.json says running under a live process."""
    from lmforge.fileio import lock_held
    from lmforge.runs.listing import run_info

    lock_file = RunDir(run_dir).lock_file
    if lock_held(lock_file):
        raise UsageError(
            f"run {run_dir.name!r} is already being trained by another process (it holds {lock_file})",
            "wait for it to finish or stop it (Ctrl-C saves a checkpoint), then resume",
        )
    info = run_info(run_dir)
    if info.status == "running" and info.pid != os.getpid():
        raise UsageError(
            f"run {run_dir.name!r} is still being trained by process {info.pid}",
            "stop that process first (Ctrl-C saves a checkpoint), then resume",
        )


def _flat(d: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


def config_diff(old: dict[str, Any], new: dict[str, Any], keys=None) -> list[str]:
    """``["model.n_layer: 4 -> 6", ...]`` for the leaves that differ (optionally only ``keys``)."""
    a, b = _flat(old), _flat(new)
    paths = sorted(set(a) | set(b)) if keys is None else list(keys)
    return [f"{'.'.join(p)}: {a.get(p)!r} -> {b.get(p)!r}" for p in paths if a.get(p) != b.get(p)]


def architecture_diff(old: TrainingConfig, new: TrainingConfig) -> list[str]:
    """Differences in the model's shape (dropout and gradient checkpointing may change)."""
    return config_diff(old.to_dict(), new.to_dict(), [("model", k) for k in ARCHITECTURE_FIELDS])


def _refuse_changes(run_dir: Path, saved: TrainingConfig, new: TrainingConfig, hint: str) -> TrainingConfig:
    changed = architecture_diff(saved, new) + config_diff(saved.to_dict(), new.to_dict(), FIXED_ON_RESUME)
    if changed:
        raise ConfigError(
            f"cannot resume run {run_dir.name!r} with a different architecture, tokenizer or data: "
            + "; ".join(changed),
            hint,
        )
    # padding is part of the saved optimizer state's shapes: the run keeps its own
    model = dataclasses.replace(new.model, pad_vocab_multiple=saved.model.pad_vocab_multiple)
    return dataclasses.replace(new, run=run_dir.name, model=model)


def _saved_config(run_dir: Path) -> TrainingConfig:
    path = RunDir(run_dir).config_file
    if not path.is_file():
        raise UsageError(
            f"run {run_dir.name!r} has no {path.name}; it cannot be resumed",
            "start a new run, or --init-from one of its checkpoints",
        )
    from lmforge.tomlfile import load_toml

    hint = (
        f"every checkpoint's meta.json holds the run's config: restore {path.name} from it, or "
        f"start a new run from its weights with `--init-from {run_dir.name}:latest`"
    )
    try:
        data = load_toml(path)
    except ConfigError as exc:
        raise ConfigError(f"run {run_dir.name!r} cannot be resumed: {exc.message}", hint) from None
    if not isinstance(data.get("data"), dict) or not data["data"].get("name"):
        # an empty file (a write cut short) would otherwise resume with the defaults: another run
        what = "is empty" if not data else "names no dataset ([data] name)"
        raise ConfigError(f"run {run_dir.name!r} cannot be resumed: its {path} {what}", hint)
    return TrainingConfig.from_dict(data, source=str(path))


def resume_config(
    run_dir: Path, overrides: dict[tuple[str, ...], Any] | None = None, preset: str | None = None
) -> TrainingConfig:
    """The config of the run in ``run_dir`` with ``preset`` and ``overrides`` applied; refused with
    a readable diff when they would change the architecture, the tokenizer or the data order."""
    saved = _saved_config(run_dir)
    overrides = dict(overrides or {})
    overrides.pop(("run",), None)
    preset = overrides.pop(("preset",), None) or preset
    new = apply_preset(saved, preset) if preset and preset != saved.preset else saved
    new = with_overrides(new, overrides) if overrides else new
    hint = (
        "drop those options to resume, or start a new run from its weights with "
        f"`--init-from {run_dir.name}:latest`"
    )
    return _refuse_changes(run_dir, saved, new, hint)


def check_resumed_config(run_dir: Path, config: TrainingConfig) -> TrainingConfig:
    """A caller's own whole config for a resumed run: only the non-architecture fields may differ."""
    hint = "resume with the run's own config (config=None), or start a new run with init_from"
    return _refuse_changes(run_dir, _saved_config(run_dir), config, hint)


def check_resume_point(run_dir: Path, steps: int) -> None:
    """A resumed run needs a full checkpoint, short of ``steps``."""
    from lmforge.checkpoint.listing import latest_full

    skipped: list[str] = []
    latest = latest_full(run_dir, skipped)
    if latest is None:
        damaged = f" ({'; '.join(skipped)})" if skipped else ""
        raise UsageError(
            f"run {run_dir.name!r} has no full checkpoint to resume from{damaged}", next_step_hint(run_dir)
        )
    if latest.step >= steps:
        raise UsageError(
            f"run {run_dir.name!r} is already at step {latest.step} of {steps}",
            f"raise --steps above {latest.step} to train further",
        )


def next_step_hint(run_dir: Path) -> str:
    """How to go on with a stopped run, by what it has on disk: resume from a full checkpoint,
    start a new run from the weights of another checkpoint, or start again."""
    from lmforge.checkpoint.listing import latest_full, list_checkpoints

    name = run_dir.name
    full = latest_full(run_dir)
    if full is not None:
        return f"continue it from step {full.step} with `lmforge train --resume {name}`"
    if list_checkpoints(run_dir):
        return (
            "it has no full checkpoint (no optimizer state) to resume; start a new run from its "
            f"newest weights with `lmforge train --init-from {name}:latest`"
        )
    return "it stopped before its first checkpoint: nothing to go on from; start the run again"


# ----------------------------------------------------------------------------- init-from, vocabulary


def _preset_and_recipe(meta: dict[str, Any], where: str) -> tuple[str, str]:
    """The preset and recipe a checkpoint was trained with (gpt2 for names this lmforge lacks)."""
    from lmforge.presets import PRESETS, RECIPES

    saved = TrainingConfig.from_dict(meta["config"], source=f"{where}/meta.json")
    preset = saved.preset if saved.preset in PRESETS else "gpt2"
    return preset, saved.recipe if saved.recipe in RECIPES else "gpt2"


def init_config(
    config: TrainingConfig,
    checkpoint_meta: dict[str, Any],
    overrides: dict[tuple[str, ...], Any] | None = None,
    where: str = "the checkpoint",
) -> TrainingConfig:
    """``config`` for a new run that starts from a checkpoint's weights: the architecture (and,
    unless given in ``overrides``, the preset name, dropout and gradient checkpointing) come from
    the checkpoint. An architecture option that disagrees with it is refused."""
    saved = TrainingConfig.from_dict(checkpoint_meta["config"], source=f"{where}/meta.json")
    overrides = overrides or {}
    for name in ARCHITECTURE_FIELDS:
        value = overrides.get(("model", name))
        have = getattr(saved.model, name)
        if value is None or value == have:
            continue
        if name == "block_size" and value > have:
            raise UsageError(
                f"--block-size {value} is larger than the context of {have} tokens of {where}",
                f"use --block-size {have} (the architecture comes from the checkpoint)",
            )
        raise UsageError(
            f"--{name.replace('_', '-')} {value} differs from {where} ({have})",
            "with --init-from the architecture comes from the checkpoint; drop that option",
        )
    model = dataclasses.replace(
        saved.model,
        dropout=overrides.get(("model", "dropout"), saved.model.dropout),
        gradient_checkpointing=overrides.get(
            ("model", "gradient_checkpointing"), saved.model.gradient_checkpointing
        ),
    )
    preset = config.preset if ("preset",) in overrides else saved.preset
    return dataclasses.replace(config, preset=preset, model=model)


def resolve_vocab(model: ModelConfig, data_vocab: int, dataset: str, fixed: bool) -> ModelConfig:
    """The model's vocabulary comes from the dataset's tokenizer unless ``fixed`` (a resumed or
    initialised run's). A larger one is kept (e.g. 50304, padded for faster matmuls); a smaller
    one cannot embed the data."""
    vocab = model.vocab_size
    if not fixed and vocab == _DEFAULT_VOCAB:
        return dataclasses.replace(model, vocab_size=data_vocab)
    if vocab < data_vocab:
        where = "the checkpoint's" if fixed else "--vocab-size"
        raise UsageError(
            f"{where} vocabulary of {vocab} is smaller than the {data_vocab} token ids of "
            f"dataset '{dataset}'",
            "leave --vocab-size unset (it comes from the data), or use data of the model's tokenizer",
        )
    return model


def resolve_eot(model: ModelConfig, data_eot: int, dataset: str) -> ModelConfig:
    """The model's end-of-text id (where ``--document-masking`` starts a document) is the dataset
    tokenizer's, kept in the model config so that a checkpoint's eval and generate use it too."""
    if model.eot_token not in (-1, data_eot):
        raise ConfigError(
            f"--eot-token {model.eot_token} differs from dataset '{dataset}''s end-of-text id {data_eot}",
            "leave --eot-token unset: a run takes its data's",
        )
    return dataclasses.replace(model, eot_token=data_eot)


def replaced_by_data(chosen: TrainingConfig, started: TrainingConfig, dataset: str) -> list[str]:
    """Warnings for what ``check_run_start`` replaced in the config the user chose (``chosen``) to
    fit the dataset: a tokenizer other than the default that is not the data's (and with it
    the vocabulary). The default tokenizer and vocabulary giving way to the data's is the
    documented rule and not warned about."""
    default = TrainingConfig().tokenizer
    if chosen.tokenizer in (default, started.tokenizer):
        return []
    vocab = chosen.model.vocab_size, started.model.vocab_size
    also = f" (and the vocabulary {vocab[0]} -> {vocab[1]})" if vocab[0] != vocab[1] else ""
    return [
        f"tokenizer {chosen.tokenizer!r} of the config replaced by dataset '{dataset}''s "
        f"{started.tokenizer!r}{also}: a run uses its data's tokenizer"
    ]


def pad_vocab(model: ModelConfig, device_type: str, resumed: bool) -> ModelConfig:
    """``pad_vocab_multiple = 0`` ("auto"): padded rows on CUDA, none elsewhere; a resumed run
    keeps what it was started with."""
    if model.pad_vocab_multiple != 0 or resumed:
        return model
    multiple = CUDA_VOCAB_MULTIPLE if device_type == "cuda" else 1
    return dataclasses.replace(model, pad_vocab_multiple=multiple)
