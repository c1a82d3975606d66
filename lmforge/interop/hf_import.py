"""``ckpt import``: a Hugging Face GPT-2 directory (or an lmforge checkpoint directory)
as a new run of the workspace with one checkpoint, ``best``.

The tokenizer to record comes, in this order, from the ``lmforge.json`` of an lmforge
export, from the directory's ``vocab.json`` + ``merges.txt`` (GPT-2's and the bytes
tokenizer are recognized; other ranks are saved to the workspace's ``tokenizers/``),
else GPT-2's is assumed for a 50257-token vocabulary. The run directory is built
beside its final place and renamed in (``fileio.staged_dir``): it appears whole or
not at all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmforge import __version__
from lmforge.config import ModelConfig, TrainingConfig
from lmforge.errors import ConfigError, LmforgeError, NotFoundError, UsageError
from lmforge.fileio import staged_dir, write_bytes_atomic
from lmforge.interop.hf_config import HF_CONFIG, model_config_from_hf, preset_for
from lmforge.interop.hf_export import LMFORGE_JSON
from lmforge.interop.hf_tokenizer import install_exported_tokenizer, ranks_from_hf_tokenizer
from lmforge.interop.hf_weights import HF_PICKLE, HF_SAFETENSORS, from_hf_state_dict, load_hf_weights
from lmforge.runs.names import check_new_run_name
from lmforge.runs.record import RunRecord
from lmforge.units import now_iso
from lmforge.workspace import RunDir

if TYPE_CHECKING:
    from lmforge.model.gpt import GPT
    from lmforge.workspace import Workspace

IMPORTED_CHECKPOINT = "best"  # the one checkpoint of an imported run


@dataclass
class ImportResult:
    run: str
    checkpoint: Path
    preset: str
    tokenizer: dict[str, Any]
    parameters: int
    notes: list[str] = field(default_factory=list)


def import_checkpoint(workspace: Workspace, src: str | os.PathLike, name: str | None = None) -> ImportResult:
    """Import a Hugging Face GPT-2 directory (``config.json`` + ``model.safetensors`` or
    ``pytorch_model.bin``), or an lmforge checkpoint directory, as the run
    ``runs/<name>/`` with one checkpoint, ``best``, so ``eval NAME``, ``generate NAME``
    and ``train --init-from NAME`` work on it. The run appears whole or not at all."""
    from lmforge.checkpoint.store import FORMAT_VERSION, META_FILE, load_model, save_checkpoint

    src = Path(src).expanduser()
    if not src.is_dir():
        raise NotFoundError(
            f"{src} is not a directory", "pass the directory holding config.json and the weights"
        )
    name = name or _name_from_dir(src)
    check_new_run_name(name, option="--as")
    run = workspace.run(name)
    if run.path.exists():
        raise UsageError(
            f"run {name!r} already exists in {workspace.runs_dir}", "pick another name with --as NAME"
        )

    notes: list[str] = []
    if (src / HF_CONFIG).is_file():
        model, config, identity, notes = _read_hf_dir(src, name, workspace)
    elif (src / META_FILE).is_file():
        model, config, meta = load_model(src)
        identity = meta.get("tokenizer") or {}
        config = dataclasses.replace(config, run=name)
    else:
        present = ", ".join(sorted(p.name for p in src.iterdir())[:8]) or "nothing"
        raise UsageError(
            f"{src} is neither a Hugging Face model directory nor an lmforge checkpoint "
            f"(it holds: {present})",
            f"expected {HF_CONFIG} with {HF_SAFETENSORS} or {HF_PICKLE}",
        )

    now = now_iso()
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": IMPORTED_CHECKPOINT,
        "run": name,
        "step": 0,
        "tokens": 0,
        "val_loss": None,
        "config": config.to_dict(),
        "tokenizer": identity,
        "dataset": None,
        "created_at": now,
        "lmforge_version": __version__,
        "imported_from": str(src.resolve()),
    }
    try:
        with staged_dir(run.path, replace=False) as tmp:
            staged = RunDir(tmp)
            staged.config_file.write_text(config.to_toml(), encoding="utf-8")
            imported = {
                "name": name,
                "status": "finished",
                "started_at": now,
                "ended_at": now,
                "tokenizer": identity,
                "pid": None,  # nothing ran: no process or host to record
                "host": None,
                "lmforge_version": __version__,
                "imported_from": str(src.resolve()),
            }
            RunRecord(tmp, imported).update()
            save_checkpoint(staged.checkpoint(IMPORTED_CHECKPOINT), model, meta)
    except FileExistsError as exc:
        if exc.filename != str(run.path):
            raise
        # someone else took the name while the model was read
        raise UsageError(f"run {name!r} already exists", "pick another name with --as NAME") from None
    return ImportResult(
        name,
        run.checkpoint(IMPORTED_CHECKPOINT),
        config.preset,
        identity,
        model.get_num_params(False),
        notes,
    )


def _name_from_dir(src: Path) -> str:
    """A run name from the directory's name: runs of other characters become ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", src.resolve().name).strip("-.") or "imported"


def _read_hf_dir(
    src: Path, name: str, workspace: Workspace
) -> tuple[GPT, TrainingConfig, dict[str, Any], list[str]]:
    from lmforge.model import build_model

    try:
        hf = json.loads((src / HF_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{src / HF_CONFIG} is not valid JSON ({exc})") from None
    if not isinstance(hf, dict):
        raise ConfigError(f"{src / HF_CONFIG} is not a JSON object")
    if hf.get("model_type") == "nanochat":  # the modern architecture (lmforge.interop.nanochat)
        from lmforge.interop.nanochat import from_nanochat_state_dict, model_config_from_nanochat

        model_config = model_config_from_nanochat(hf, source=str(src / HF_CONFIG))
        state_dict = from_nanochat_state_dict(load_hf_weights(src), model_config, source=str(src))
    else:
        model_config = model_config_from_hf(hf, source=str(src / HF_CONFIG))
        state_dict = from_hf_state_dict(load_hf_weights(src), model_config, source=str(src))

    info = _read_lmforge_json(src)
    identity, notes = _import_tokenizer(src, info, model_config.vocab_size, name, workspace)
    config = _config_from_lmforge_json(info, model_config, src)
    if config is None:
        config = TrainingConfig(
            preset=preset_for(model_config),
            run=name,
            tokenizer=identity.get("name", "gpt2"),
            model=model_config,
        )
    else:
        config = dataclasses.replace(config, run=name)

    with torch.device("meta"):  # no random init of weights that are replaced at once
        model = build_model(model_config)
    if model_config.tied_head:
        state_dict["lm_head.weight"] = state_dict["transformer.wte.weight"]
    model.load_state_dict(state_dict, strict=True, assign=True)
    if model_config.tied_head:
        model.lm_head.weight = model.transformer.wte.weight  # assign=True replaced both: tie them again
    model.eval()
    return model, config, identity, notes


def _config_from_lmforge_json(
    info: dict[str, Any] | None, model_config: ModelConfig, src: Path
) -> TrainingConfig | None:
    """The training config an lmforge hf export carries, when it describes these weights
    (so a round trip keeps the optimizer and data settings); else None."""
    if not info or not isinstance(info.get("config"), dict):
        return None
    try:
        config = TrainingConfig.from_dict(info["config"], source=str(src / LMFORGE_JSON))
    except LmforgeError:
        return None
    dims = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "layer_norm_epsilon")
    if any(getattr(config.model, d) != getattr(model_config, d) for d in dims):
        return None
    if model_config.arch != config.model.arch:
        return None
    # HF GPT-2 always has biases (zeros for a bias-free export): keep them
    return dataclasses.replace(config, model=dataclasses.replace(config.model, bias=model_config.bias))


def _read_lmforge_json(src: Path) -> dict[str, Any] | None:
    path = src / LMFORGE_JSON
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _import_tokenizer(
    src: Path, info: dict[str, Any] | None, vocab_size: int, name: str, workspace: Workspace
) -> tuple[dict[str, Any], list[str]]:
    """The tokenizer identity to record for an imported model (see the README's ``ckpt
    import``): lmforge.json's, else the one vocab.json + merges.txt describe, else GPT-2's
    for a 50257-token vocabulary."""
    from lmforge.data.tokenizer import GPT2_RANKS_SHA256, bytes_tokenizer, ranks_sha256

    if info and isinstance(info.get("tokenizer"), dict) and info["tokenizer"].get("name"):
        return info["tokenizer"], install_exported_tokenizer(src, info["tokenizer"], workspace)
    ranks = ranks_from_hf_tokenizer(src)
    if ranks is not None:
        sha = ranks_sha256(ranks)
        if sha == GPT2_RANKS_SHA256:
            return {"name": "gpt2", "sha256": sha}, []
        if sha == bytes_tokenizer().identity["sha256"]:
            return dict(bytes_tokenizer().identity), []
        return _store_ranks(ranks, sha, name, workspace)
    if vocab_size == 50257:
        return {"name": "gpt2", "sha256": GPT2_RANKS_SHA256}, [
            "no usable vocab.json/merges.txt: assuming GPT-2's tokenizer (vocabulary of 50257)"
        ]
    raise UsageError(
        f"cannot tell which tokenizer {src} was trained with (vocabulary of {vocab_size}, "
        "no usable vocab.json + merges.txt)",
        "add the model's GPT-2-style vocab.json and merges.txt to the directory",
    )


def _store_ranks(
    ranks: dict[bytes, int], sha: str, name: str, workspace: Workspace
) -> tuple[dict[str, Any], list[str]]:
    """Write a new tokenizer's ranks as ``tokenizers/<name>.tiktoken`` so that
    ``get_tokenizer(name)`` finds it."""
    from lmforge.data.tokenizer import ranks_file_bytes, tokenizer_from_ranks_file, workspace_ranks_file

    path = workspace_ranks_file(workspace, name)
    if path.exists():
        if tokenizer_from_ranks_file(path, name=name).identity["sha256"] != sha:
            raise UsageError(
                f"{path} exists with other ranks than the imported model's tokenizer",
                "import under another name with --as NAME",
            )
    else:
        workspace.ensure(workspace.tokenizers_dir)
        write_bytes_atomic(path, ranks_file_bytes(ranks))
    return {"name": name, "sha256": sha}, [f"the model's own tokenizer was saved as {path}"]
