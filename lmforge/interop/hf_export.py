"""``ckpt export``: a checkpoint as a Hugging Face GPT-2 directory or a light lmforge one.

``hf`` writes ``config.json``, ``model.safetensors`` and ``generation_config.json``
(what ``transformers.AutoModelForCausalLM.from_pretrained`` loads with the same logits,
as ``GPT2LMHeadModel``, or ``NanoChatForCausalLM`` for the modern architecture),
GPT-2 tokenizer files when the checkpoint's tokenizer is available, and
``lmforge.json``: what the export knows beyond HF's config (run, step, metrics,
tokenizer identity, training config), so an import gets it all back.
``safetensors`` writes lmforge's own ``model.safetensors`` + ``meta.json``.

Either way the directory is built beside ``--out`` and renamed into place
(``fileio.staged_dir``): a failure never leaves half an export or damages what
``--out`` held, and of two exports racing to the same new ``--out`` one wins whole and
the other fails. Every export writes the marker ``EXPORT_MARKER``; ``--force`` replaces
only a directory holding it and nothing but the files an export writes, never the
workspace, a directory above it, a home directory or a directory with other files. No
``--out`` inside the workspace's ``runs/`` or ``datasets/`` is accepted at all: a light
checkpoint there looks just like an export.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmforge import __version__
from lmforge.config import ModelConfig, TrainingConfig
from lmforge.errors import LmforgeError, UsageError
from lmforge.fileio import is_disk_full, staged_dir, write_json
from lmforge.interop.hf_config import HF_CONFIG, hf_config
from lmforge.interop.hf_tokenizer import TOKENIZER_FILE_NAMES, hf_tokenizer_files
from lmforge.interop.hf_weights import HF_SAFETENSORS, to_hf_state_dict
from lmforge.units import now_iso

if TYPE_CHECKING:
    from lmforge.data.tokenizer import Tokenizer
    from lmforge.workspace import Workspace

EXPORT_FORMATS = ("hf", "safetensors")
LMFORGE_JSON = "lmforge.json"  # what an hf export knows beyond HF's config: run, step, tokenizer identity
GENERATION_CONFIG = "generation_config.json"
# Written last by every export: what tells a previous export (that --force may replace)
# from a checkpoint, which holds the same meta.json + model.safetensors.
EXPORT_MARKER = ".lmforge-export"


@dataclass
class ExportResult:
    out: Path
    format: str
    files: dict[str, int]  # name -> bytes
    notes: list[str] = field(default_factory=list)
    # the transformers class config.json names (hf format): GPT2LMHeadModel, NanoChatForCausalLM
    model_class: str | None = None


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    format: str = "hf",
    *,
    workspace: Workspace | None = None,
    force: bool = False,
) -> ExportResult:
    """Export the checkpoint directory ``checkpoint`` to ``out``.

    ``hf``: a directory ``transformers.AutoModelForCausalLM.from_pretrained`` loads with the
    same logits, plus GPT-2 tokenizer files when the checkpoint's tokenizer is available
    here, and ``lmforge.json`` (run, step, metrics, tokenizer identity, config).
    ``safetensors``: lmforge's own weights and ``meta.json``, a standalone light
    checkpoint that every lmforge command accepts as a path.
    A non-empty ``out`` is replaced only with ``force``.
    """
    from lmforge.checkpoint.store import read_meta

    if format not in EXPORT_FORMATS:
        raise UsageError(f"unknown export format {format!r}", f"choose one of: {', '.join(EXPORT_FORMATS)}")
    ckpt = Path(checkpoint)
    read_meta(ckpt)  # a damaged checkpoint fails here, before --out is looked at
    out = Path(out).expanduser().absolute()
    replace = _check_out(out, ckpt, force, workspace)
    try:
        with staged_dir(out, replace=replace) as tmp:
            files, notes = _write_export(ckpt, out, format, tmp, workspace)
            model_class = _model_class(tmp) if format == "hf" else None
    except FileExistsError as exc:
        if exc.filename != str(out):
            raise
        # another export (or anything else) filled --out while this one was written
        raise UsageError(
            f"--out {out} was filled by another writer while this export ran; this export was not written",
            "look at what is there now, or export to another --out",
        ) from None
    return ExportResult(out, format, files, notes, model_class)


def _model_class(out_dir: Path) -> str | None:
    """The class ``config.json``'s ``architectures`` names."""
    hf = json.loads((out_dir / HF_CONFIG).read_text(encoding="utf-8"))
    return (hf.get("architectures") or [None])[0]


def _write_export(
    ckpt: Path, out: Path, format: str, tmp: Path, workspace: Workspace | None
) -> tuple[dict[str, int], list[str]]:
    """Fill the staging directory ``tmp``; return its files (name -> bytes) and notes."""
    from lmforge.checkpoint.store import load_model, model_state

    try:
        model, config, meta = load_model(ckpt, device="cpu")
        state_dict = model_state(model)  # without the tied head and any padded vocabulary rows
        if format == "hf":
            notes = _export_hf(state_dict, config, meta, ckpt, tmp, workspace)
        else:
            notes = _export_safetensors(state_dict, meta, ckpt, tmp)
        write_json(tmp / EXPORT_MARKER, {"format": format, "exported_at": now_iso()})
    except Exception as exc:
        # judged here, before staged_dir deletes what the failed write took
        if isinstance(exc, LmforgeError) or not is_disk_full(exc, tmp):
            raise
        raise LmforgeError(
            f"the disk is full: could not export to {out}",
            "free some space and export again; --out was left as it was",
        ) from exc
    files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.name != EXPORT_MARKER}
    return files, notes


def _export_file_names() -> frozenset[str]:
    """Every name an export of either format writes (a directory holding only these, with
    the weights, is a previous export that ``--force`` may replace)."""
    from lmforge.checkpoint.store import META_FILE, MODEL_FILE

    names = {HF_CONFIG, HF_SAFETENSORS, GENERATION_CONFIG, LMFORGE_JSON, META_FILE, MODEL_FILE, EXPORT_MARKER}
    return frozenset(names | set(TOKENIZER_FILE_NAMES))


def _home_dirs() -> set[Path]:
    homes = {Path.home()}
    try:
        import pwd  # every user's home, not only ours (absent on Windows)

        homes |= {Path(u.pw_dir) for u in pwd.getpwall() if u.pw_dir not in ("", "/")}
    except (ImportError, OSError):
        pass
    return {h.resolve() for h in homes}


def _not_replaceable(out: Path, workspace: Workspace | None) -> str | None:
    """Why ``--force`` must not replace the existing, non-empty directory ``out``, or None
    when it is a previous export."""
    from lmforge.workspace import Workspace

    resolved = out.resolve()
    ws = (workspace or Workspace.resolve()).root.resolve()
    if ws.is_relative_to(resolved):
        return (
            f"it is the lmforge workspace {ws}" if ws == resolved else f"it holds the lmforge workspace {ws}"
        )
    for home in _home_dirs():
        if home.is_relative_to(resolved):
            return "it is a home directory" if home == resolved else f"it holds the home directory {home}"
    known = _export_file_names()
    others = sorted(p.name for p in out.iterdir() if p.name not in known or p.is_symlink() or not p.is_file())
    if others:
        shown = ", ".join(others[:5]) + (f" (+{len(others) - 5} more)" if len(others) > 5 else "")
        return f"it holds files that are not from an export: {shown}"
    if not (out / HF_SAFETENSORS).is_file():
        return "it holds no exported model.safetensors"
    if not (out / EXPORT_MARKER).is_file():
        return f"it has no {EXPORT_MARKER} marker (exports written by lmforge have one)"
    return None


def _inside_workspace_data(out: Path, workspace: Workspace | None) -> Path | None:
    """The workspace's ``runs/`` or ``datasets/`` when ``out`` lies inside (or is) one of
    them; else None. Their checkpoints and datasets are never an export's to replace."""
    from lmforge.workspace import Workspace

    ws = workspace or Workspace.resolve()
    resolved = out.resolve()
    for area in (ws.runs_dir, ws.datasets_dir):
        if resolved.is_relative_to(area.resolve()):
            return area
    return None


def _check_out(out: Path, ckpt: Path, force: bool, workspace: Workspace | None = None) -> bool:
    """Refuse an ``out`` that is a file, that lies in the workspace's ``runs/`` or
    ``datasets/``, that is or holds the checkpoint being exported (replacing it would
    delete the source), or that is not empty without ``force``; with ``force``, one that is
    not a previous export (``_not_replaceable``). True when ``out`` holds a previous export
    to replace."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a directory", "pass a directory path")
    source = ckpt.resolve()
    if out.resolve() == source or source.is_relative_to(out.resolve()):
        raise UsageError(
            f"--out {out} would replace the checkpoint it is exported from", "pick another --out"
        )
    area = _inside_workspace_data(out, workspace)
    if area is not None:
        raise UsageError(
            f"--out {out} is inside the workspace's {area.name}/ folder, where runs and datasets live",
            "export to a directory outside the workspace's runs/ and datasets/",
        )
    if not (out.is_dir() and any(out.iterdir())):
        return False
    if not force:
        raise UsageError(
            f"--out {out} is not empty", "pass --force to replace it, or pick an empty directory"
        )
    why = _not_replaceable(out, workspace)
    if why:
        raise UsageError(
            f"--out {out} is not a previous export, so --force will not replace it: {why}",
            "pick an empty or new directory for --out",
        )
    return True


def write_hf_dir(
    state_dict: dict[str, torch.Tensor],
    model_config: ModelConfig,
    out_dir: Path,
    *,
    tokenizer: Tokenizer | None = None,
    eot_token: int | None = None,
    lmforge_info: dict[str, Any] | None = None,
) -> list[str]:
    """Write ``config.json``, ``model.safetensors``, ``generation_config.json``, the
    tokenizer files (when ``tokenizer`` is given and convertible) and ``lmforge.json``
    into the existing directory ``out_dir``; return notes for the user."""
    from safetensors.torch import save_file

    notes = []
    if tokenizer is not None:
        eot_token = tokenizer.eot_token
    if model_config.arch == "modern":  # NanoChatForCausalLM (lmforge.interop.nanochat)
        from lmforge.interop.nanochat import nanochat_config, to_nanochat_state_dict

        hf_json, tensors = nanochat_config(model_config, eot_token), to_nanochat_state_dict(state_dict)
    else:
        hf_json, tensors = hf_config(model_config, eot_token), to_hf_state_dict(state_dict, model_config)
    write_json(out_dir / HF_CONFIG, hf_json)
    save_file(tensors, str(out_dir / HF_SAFETENSORS), metadata={"format": "pt"})
    write_json(out_dir / GENERATION_CONFIG, {"bos_token_id": eot_token, "eos_token_id": eot_token})
    if tokenizer is not None:
        try:
            files = hf_tokenizer_files(tokenizer, model_config.block_size)
        except ValueError as exc:
            notes.append(f"tokenizer files not written: {exc}")
        else:
            for name, text in files.items():
                (out_dir / name).write_text(text, encoding="utf-8")
    if lmforge_info is not None:
        write_json(out_dir / LMFORGE_JSON, lmforge_info)
    return notes


def _source_info(meta: dict[str, Any], ckpt: Path) -> dict[str, Any]:
    return {
        "run": meta.get("run"),
        "checkpoint": ckpt.name,
        "path": str(ckpt.resolve()),
        "kind": meta.get("kind"),
        "step": meta.get("step"),
        "tokens": meta.get("tokens"),
        "val_loss": meta.get("val_loss"),
        "dataset": meta.get("dataset"),
        "created_at": meta.get("created_at"),
    }


def _export_hf(
    state_dict: dict[str, torch.Tensor],
    config: TrainingConfig,
    meta: dict[str, Any],
    ckpt: Path,
    out_dir: Path,
    workspace: Workspace | None,
) -> list[str]:
    from lmforge.data.tokenizer import tokenizer_from_identity

    identity = meta.get("tokenizer") or {}
    notes = []
    tokenizer = None
    try:
        tokenizer = tokenizer_from_identity(identity, workspace=workspace)
    except LmforgeError as exc:
        notes.append(f"tokenizer files not written ({exc.message}); lmforge.json records its identity")
    eot = tokenizer.eot_token if tokenizer is not None else _known_eot(identity, config.model.vocab_size)
    info = {
        "format": "hf",
        "lmforge_version": __version__,
        "exported_at": now_iso(),
        "source": _source_info(meta, ckpt),
        "tokenizer": identity,
        "config": config.to_dict(),
    }
    notes += write_hf_dir(
        state_dict, config.model, out_dir, tokenizer=tokenizer, eot_token=eot, lmforge_info=info
    )
    if not config.model.bias and config.model.arch == "gpt2":
        notes.append("the model has no biases; HF GPT-2 needs them, so zero biases were written")
    return notes


def _known_eot(identity: dict[str, Any], vocab_size: int) -> int | None:
    """The end-of-text id when the tokenizer itself is not available here: the built-in
    tokenizers' ids, else the last id (lmforge's tokenizers put end-of-text last)."""
    from lmforge.data.tokenizer import GPT2_NUM_RANKS

    name = identity.get("name")
    if name == "gpt2":
        return GPT2_NUM_RANKS
    if name == "bytes":
        return 256
    return None if vocab_size <= 0 else vocab_size - 1


def _export_safetensors(
    state_dict: dict[str, torch.Tensor], meta: dict[str, Any], ckpt: Path, out_dir: Path
) -> list[str]:
    from safetensors.torch import save_file

    from lmforge.checkpoint.store import META_FILE, MODEL_FILE, file_records

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    small = {"config": json.dumps(meta.get("config")), "tokenizer": json.dumps(meta.get("tokenizer"))}
    save_file(tensors, str(out_dir / MODEL_FILE), metadata={"format": "pt", **small})
    new_meta = {
        **{k: v for k, v in meta.items() if k not in ("files", "sha256")},
        "kind": "light",
        "exported_from": _source_info(meta, ckpt),
        **file_records(out_dir),  # the sizes and digests of this export's own weights
    }
    write_json(out_dir / META_FILE, new_meta)
    return []
