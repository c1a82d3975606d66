"""Checkpoints: one directory per checkpoint, one file per concern, metadata last.

```
checkpoints/step-2000/
  model.safetensors   # weights, fp32 (the tied lm_head.weight is not stored; re-tied on load)
  trainer.pt          # full checkpoints only: optimizer, scaler, step, RNG, data position ...
  meta.json           # written last: the completion marker, readable by a person
```

A save writes everything into ``.tmp-<name>-<random>/`` beside the target,
fsyncs each file, writes ``meta.json`` last, then renames the directory into
place. A crash (or a full disk) at any point before the rename leaves the
previous checkpoint untouched and nothing that looks complete: a directory
without ``meta.json`` is never loaded, listed or counted.

``trainer.pt`` holds only tensors and plain containers, so it loads with
``torch.load(weights_only=True)``: a file that needs code to unpickle is
refused instead of executed.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from lmforge.checkpoint.meta import FORMAT_VERSION, META_FILE, MODEL_FILE, TRAINER_FILE, read_meta
from lmforge.config import TrainingConfig
from lmforge.errors import CheckpointError, LmforgeError
from lmforge.fileio import TMP_PREFIX, apply_umask, fsync_dir, fsync_file, install_dir, write_json_atomic
from lmforge.units import now_iso

TIED_KEYS = ("lm_head.weight",)  # the same tensor as transformer.wte.weight
WTE_KEY = "transformer.wte.weight"


# ----------------------------------------------------------------------------- saving


def model_state(
    model: nn.Module | dict[str, torch.Tensor], vocab_size: int | None = None
) -> dict[str, torch.Tensor]:
    """The weights to store: fp32, contiguous, on the CPU, tied copies left out, and the token
    embedding cut to the real ``vocab_size`` rows (a model padded for speed stores what an
    unpadded one would). ``model`` may also be a (gathered, full) state dict."""
    if isinstance(model, nn.Module):
        vocab_size = vocab_size or getattr(getattr(model, "config", None), "vocab_size", None)
        model = model.state_dict()
    state = {k: v.detach() for k, v in model.items() if k not in TIED_KEYS}
    if vocab_size and WTE_KEY in state and state[WTE_KEY].size(0) > vocab_size:
        state[WTE_KEY] = state[WTE_KEY][:vocab_size]
    return {k: v.to("cpu", torch.float32).contiguous() for k, v in state.items()}


def pad_vocab_rows(state: dict[str, torch.Tensor], rows: int) -> dict[str, torch.Tensor]:
    """``state`` with the token embedding padded with zero rows up to ``rows`` (a stored
    checkpoint has the real rows; a model padded for speed has more)."""
    wte = state.get(WTE_KEY)
    if wte is None or wte.size(0) >= rows:
        return state
    pad = torch.zeros(rows - wte.size(0), *wte.shape[1:], dtype=wte.dtype, device=wte.device)
    return {**state, WTE_KEY: torch.cat([wte, pad])}


def _model_rows(model: nn.Module) -> int:
    wte = getattr(getattr(model, "transformer", None), "wte", None)
    return wte.weight.size(0) if wte is not None else 0


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | dict[str, torch.Tensor],
    meta: dict[str, Any],
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory at ``path`` atomically and return ``path``.

    ``meta`` holds the fields of ``meta.json`` (kind, run, step, tokens, val_loss,
    config, tokenizer, dataset); ``format_version``, ``created_at``, ``lmforge_version``
    and the byte sizes of the files are added here. An existing checkpoint at ``path``
    (``best``) stays intact until the new one is complete. ``model`` is the model or its
    full state dict (gathered from the shards of an FSDP model).
    """
    from safetensors.torch import save_file

    from lmforge import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        vocab = ((meta.get("config") or {}).get("model") or {}).get("vocab_size")
        save_file(model_state(model, vocab), str(tmp / MODEL_FILE), metadata={"format": "pt"})
        fsync_file(tmp / MODEL_FILE)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_FILE)
            fsync_file(tmp / TRAINER_FILE)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        full_meta = {
            "format_version": FORMAT_VERSION,
            **meta,
            "created_at": now_iso(),
            "lmforge_version": __version__,
            "files": files,
        }
        # meta.json last: its presence is what makes the directory a checkpoint
        write_json_atomic(tmp / META_FILE, full_meta)
        fsync_dir(tmp)
        apply_umask(tmp)  # safetensors leaves model.safetensors 0600
        install_dir(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise CheckpointError(
                f"the disk is full: could not save the checkpoint {path}",
                "free some space (e.g. `lmforge ckpt prune`) and resume; the previous checkpoint is intact",
            ) from exc
        raise CheckpointError(f"could not save the checkpoint {path}: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# ----------------------------------------------------------------------------- loading


def _check_sizes(path: Path, meta: dict[str, Any], names: tuple[str, ...]) -> None:
    for name, size in meta.get("files", {}).items():
        if name not in names:
            continue
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint file {f} is missing")
        if f.stat().st_size != size:
            raise CheckpointError(
                f"checkpoint file {f} is truncated or changed ({f.stat().st_size} bytes, expected {size})"
            )


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The stored weights of a checkpoint (without the tied head)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_meta(path)
    _check_sizes(path, meta, (MODEL_FILE,))
    try:
        return load_file(str(path / MODEL_FILE))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint file {path / MODEL_FILE} is corrupt: {exc}") from exc


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], where: str | Path = "checkpoint") -> None:
    """Copy ``state`` into ``model`` (every key but the tied head must match)."""
    state = pad_vocab_rows(state, _model_rows(model))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise CheckpointError(f"{where} does not fit the model: {exc}") from exc
    missing = [k for k in missing if k not in TIED_KEYS]
    if missing or unexpected:
        raise CheckpointError(
            f"{where} does not fit the model: missing {missing[:5]}, unexpected {list(unexpected)[:5]}"
        )


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """``(model, config, meta)``: the GPT of a checkpoint in eval mode on ``device``."""
    from lmforge.model.gpt import GPT

    path = Path(path)
    meta = read_meta(path)
    try:
        config = TrainingConfig.from_dict(meta["config"], source=str(path / META_FILE))
    except LmforgeError as exc:
        raise CheckpointError(f"{path / META_FILE} holds an invalid config: {exc.message}") from exc
    state = load_state_dict(path)
    # built on the meta device: no time spent on a random init that is overwritten at once
    with torch.device("meta"):
        model = GPT(config.model)
    state = pad_vocab_rows(state, _model_rows(model))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path / MODEL_FILE} does not fit its config: {exc}") from exc
    missing = [k for k in missing if k not in TIED_KEYS]
    if missing or unexpected:
        raise CheckpointError(
            f"{path / MODEL_FILE} does not fit its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.lm_head.weight = model.transformer.wte.weight  # re-tie
    model.to(device)
    model.eval()
    return model, config, meta


def load_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    """``trainer.pt`` of a full checkpoint, loaded without running any pickled code."""
    path = Path(path)
    meta = read_meta(path)
    file = path / TRAINER_FILE
    if meta.get("kind") != "full" or not file.is_file():
        raise CheckpointError(
            f"checkpoint {path} is a {meta.get('kind')} checkpoint without training state",
            "resume needs a full checkpoint; start a new run from these weights with --init-from",
        )
    _check_sizes(path, meta, (TRAINER_FILE,))
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for code in the pickle, RuntimeError for corruption
        raise CheckpointError(
            f"refusing to load {file}: it is corrupt or holds more than tensors and plain data "
            f"({type(exc).__name__})",
            "only load checkpoints you trust; this one may have been tampered with",
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{file} does not hold lmforge training state")
    return state
