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

``meta.json`` records each file's size and SHA-256; a load checks both (flipped
bytes are refused, not loaded) and refuses weights that are NaN or infinite.
Hashing reads every byte: ``LMFORGE_SKIP_CHECKSUMS=1`` skips it for huge files
(sizes are still checked). Checkpoints from before the checksums load on sizes.
"""

from __future__ import annotations

import hashlib
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
from lmforge.fileio import (
    TMP_PREFIX,
    apply_umask,
    fsync_dir,
    fsync_file,
    install_dir,
    is_disk_full,
    write_json_atomic,
)
from lmforge.units import is_count, now_iso

TIED_KEYS = ("lm_head.weight",)  # the same tensor as transformer.wte.weight (GPT-2; not --arch modern)
WTE_KEY = "transformer.wte.weight"
VOCAB_KEYS = (WTE_KEY, "lm_head.weight")  # a row per token id (the head's only when untied)
VALUE_EMBEDS_PREFIX = "transformer.value_embeds."  # --value-embeds: a row per token id too, per layer
# what a resume reads of trainer.pt without a default (and "rng" or "rng_per_rank")
TRAINER_KEYS = ("optimizer", "step", "tokens", "loader")
SKIP_CHECKSUMS_ENV = "LMFORGE_SKIP_CHECKSUMS"  # "1": load without hashing (sizes still checked)


# ----------------------------------------------------------------------------- saving


def model_state(
    model: nn.Module | dict[str, torch.Tensor], vocab_size: int | None = None, tied: bool | None = None
) -> dict[str, torch.Tensor]:
    """The weights to store: fp32, contiguous, on the CPU, tied copies left out, and the token
    embedding (an untied head, value-embedding tables) cut to the real ``vocab_size`` rows (a
    model padded for speed stores what an unpadded one would). ``model`` may also be a
    (gathered, full) state dict; ``tied`` (default: the model's ``config.tied_head``, else True)
    says whether its head is the embedding."""
    if isinstance(model, nn.Module):
        vocab_size = vocab_size or getattr(getattr(model, "config", None), "vocab_size", None)
        tied = _tied(model) if tied is None else tied
        model = model.state_dict()
    tied = True if tied is None else tied
    state = {k: v.detach() for k, v in model.items() if not (tied and k in TIED_KEYS)}
    for key in _vocab_keys(state):
        if vocab_size and state[key].size(0) > vocab_size:
            state[key] = state[key][:vocab_size]
    return {k: v.to("cpu", torch.float32).contiguous() for k, v in state.items()}


def pad_vocab_rows(state: dict[str, torch.Tensor], rows: int) -> dict[str, torch.Tensor]:
    """``state`` with the token embedding (an untied head, value embeddings) padded with zero
    rows up to ``rows`` (a stored checkpoint has the real rows; a model padded for speed has more)."""
    out = dict(state)
    for key in _vocab_keys(state):
        t = state[key]
        if t.size(0) < rows:
            pad = torch.zeros(rows - t.size(0), *t.shape[1:], dtype=t.dtype, device=t.device)
            out[key] = torch.cat([t, pad])
    return out


def _vocab_keys(state: dict[str, torch.Tensor]) -> list[str]:
    """The tensors of ``state`` with a row per token id (padded on CUDA, stored without the padding)."""
    return [k for k in state if k in VOCAB_KEYS or k.startswith(VALUE_EMBEDS_PREFIX)]


def _tied(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "tied_head", True)


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
        tied = ((meta.get("config") or {}).get("model") or {}).get("arch", "gpt2") == "gpt2"
        save_file(model_state(model, vocab, tied=tied), str(tmp / MODEL_FILE), metadata={"format": "pt"})
        fsync_file(tmp / MODEL_FILE)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_FILE)
            fsync_file(tmp / TRAINER_FILE)
        full_meta = {
            "format_version": FORMAT_VERSION,
            **meta,
            "created_at": now_iso(),
            "lmforge_version": __version__,
            **file_records(tmp),
        }
        # meta.json last: its presence is what makes the directory a checkpoint
        write_json_atomic(tmp / META_FILE, full_meta)
        fsync_dir(tmp)
        apply_umask(tmp)  # safetensors leaves model.safetensors 0600
        install_dir(tmp, path)
    except BaseException as exc:
        # judged before the cleanup frees the space the failed write took
        full = isinstance(exc, Exception) and is_disk_full(exc, path.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise CheckpointError(
                f"the disk is full: could not save the checkpoint {path}",
                "free some space (e.g. `lmforge ckpt prune`) and resume; the previous checkpoint is intact",
            ) from exc
        if isinstance(exc, OSError):
            raise CheckpointError(f"could not save the checkpoint {path}: {exc}") from exc
        raise
    return path


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def file_records(directory: Path) -> dict[str, dict[str, Any]]:
    """``meta.json``'s ``files`` (name -> bytes) and ``sha256`` (name -> hex digest) for the
    files in ``directory`` but ``meta.json`` (read back from the page cache just after
    writing: cheap next to the write)."""
    names = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != META_FILE)
    return {
        "files": {n: (directory / n).stat().st_size for n in names},
        "sha256": {n: sha256_file(directory / n) for n in names},
    }


# ----------------------------------------------------------------------------- loading


def _verify(verify: bool | None) -> bool:
    return os.environ.get(SKIP_CHECKSUMS_ENV, "") not in ("1", "true", "yes") if verify is None else verify


def _check_files(path: Path, meta: dict[str, Any], names: tuple[str, ...], verify: bool | None) -> None:
    """The sizes, and (``verify``; default: unless ``LMFORGE_SKIP_CHECKSUMS=1``) the SHA-256
    digests ``meta.json`` recorded for ``names``; a checkpoint without digests (older than
    them) is checked on sizes only."""
    digests = meta.get("sha256") if isinstance(meta.get("sha256"), dict) else {}
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
        if _verify(verify) and name in digests and sha256_file(f) != digests[name]:
            raise CheckpointError(
                f"checkpoint file {f} is corrupt: its SHA-256 differs from the one recorded at save time",
                "use another checkpoint (`lmforge ckpt list`); "
                f"{SKIP_CHECKSUMS_ENV}=1 skips the check at your own risk",
            )


def check_finite(state: dict[str, torch.Tensor], where: str | Path) -> None:
    """Refuse weights holding NaN or infinity: they evaluate to ``nan`` and cannot sample."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"{where} holds non-finite weights (NaN or infinity) in {name}",
                "the training diverged before this save or the file was damaged; use an earlier checkpoint",
            )


def load_state_dict(path: str | os.PathLike, *, verify: bool | None = None) -> dict[str, torch.Tensor]:
    """The stored weights of a checkpoint (without the tied head), checked against the sizes
    and digests of ``meta.json`` (``verify``) and refused when not finite."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_meta(path)
    _check_files(path, meta, (MODEL_FILE,), verify)
    try:
        state = load_file(str(path / MODEL_FILE))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint file {path / MODEL_FILE} is corrupt: {exc}") from exc
    check_finite(state, path / MODEL_FILE)
    return state


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], where: str | Path = "checkpoint") -> None:
    """Copy ``state`` into ``model`` (every key but the tied head must match)."""
    _load_into(model, state, f"{where} does not fit the model")


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """``(model, config, meta)``: the model of a checkpoint in eval mode on ``device``."""
    from lmforge.model import build_model

    path = Path(path)
    meta = read_meta(path)
    try:
        config = TrainingConfig.from_dict(meta["config"], source=str(path / META_FILE))
    except LmforgeError as exc:
        raise CheckpointError(f"{path / META_FILE} holds an invalid config: {exc.message}") from exc
    state = load_state_dict(path)
    # built on the meta device: no time spent on a random init that is overwritten at once
    with torch.device("meta"):
        model = build_model(config.model)
    _load_into(model, state, f"{path / MODEL_FILE} does not fit its config", assign=True)
    model.to(device)
    model.eval()
    return model, config, meta


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], misfit: str, assign: bool = False) -> None:
    """The loaders' core: ``state`` (the real vocabulary rows, no tied head) padded to the
    model's rows and loaded; a key or shape that does not fit raises ``misfit: ...``.
    ``assign`` takes the tensors themselves (a model built on the meta device has none to copy
    into) and ties the head to the embedding again."""
    state = pad_vocab_rows(state, _model_rows(model))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=assign)
    except RuntimeError as exc:  # shape mismatch
        raise CheckpointError(f"{misfit}: {exc}") from exc
    tied = _tied(model)
    missing = [k for k in missing if not (tied and k in TIED_KEYS)]
    if missing or unexpected:
        raise CheckpointError(f"{misfit}: missing {missing[:5]}, unexpected {list(unexpected)[:5]}")
    if assign and tied:
        model.lm_head.weight = model.transformer.wte.weight  # re-tie


def load_trainer_state(path: str | os.PathLike, *, verify: bool | None = None) -> dict[str, Any]:
    """``trainer.pt`` of a full checkpoint, loaded without running any pickled code."""
    path = Path(path)
    meta = read_meta(path)
    file = path / TRAINER_FILE
    if meta.get("kind") != "full" or not file.is_file():
        raise CheckpointError(
            f"checkpoint {path} is a {meta.get('kind')} checkpoint without training state",
            "resume needs a full checkpoint; start a new run from these weights with --init-from",
        )
    _check_files(path, meta, (TRAINER_FILE,), verify)
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


def check_trainer_state(state: dict[str, Any], file: str | os.PathLike) -> dict[str, Any]:
    """``state`` (read from ``trainer.pt`` at ``file``) when it holds what a resume reads:
    a damaged or hand-made file is named here rather than a KeyError halfway through loading."""
    missing = [k for k in TRAINER_KEYS if k not in state]
    if "rng" not in state and not state.get("rng_per_rank"):
        missing.append("rng")
    bad = [k for k in ("step", "tokens") if k in state and not is_count(state[k])]
    if missing or bad:
        what = f"lacks {', '.join(missing)}" if missing else f"has a non-integer {', '.join(bad)}"
        raise CheckpointError(
            f"{file} is damaged: it {what}",
            "resume from another full checkpoint (`lmforge ckpt list`), or delete this one",
        )
    return state
