"""Hugging Face GPT-2 directories in and out.

lmforge's parameter names are GPT-2's, so the conversion to and from
``transformers.GPT2LMHeadModel`` is a rename-free mapping with three twists:

- HF keeps GPT-2's ``Conv1D`` layers, whose weights are stored transposed
  (in_features, out_features) relative to ``nn.Linear``: ``c_attn``, ``c_proj``
  and ``c_fc`` weights are transposed on the way out and back on the way in.
- The LM head is tied to the token embedding: ``lm_head.weight`` is written by
  neither side and re-tied on load (``tie_word_embeddings: true``).
- HF GPT-2 always has biases; a model trained with ``bias = false`` is exported
  with zero biases, which computes exactly the same function.

Tokenizers travel as GPT-2's byte-level BPE files (``vocab.json`` +
``merges.txt``), derived from tiktoken ranks: a token's string is its bytes
through GPT-2's ``bytes_to_unicode`` table, and the merges are recovered from
the ranks (each token of rank r is the one pair that BPE with ranks < r
leaves). Reading them back gives the same ranks and so the same identity.

``transformers`` is never imported here: the files are written directly, and
weights are read with ``safetensors`` or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmforge import __version__
from lmforge.config import PRESETS, ModelConfig, TrainingConfig
from lmforge.errors import CheckpointError, ConfigError, LmforgeError, NotFoundError, UsageError
from lmforge.fileio import fsync_file, write_json

if TYPE_CHECKING:
    from lmforge.data.tokenizer import Tokenizer
    from lmforge.workspace import Workspace

HF_CONFIG = "config.json"
HF_SAFETENSORS = "model.safetensors"
HF_SAFETENSORS_INDEX = "model.safetensors.index.json"
HF_PICKLE = "pytorch_model.bin"
HF_PICKLE_INDEX = "pytorch_model.bin.index.json"
LMFORGE_JSON = "lmforge.json"  # what an hf export knows beyond HF's config: run, step, tokenizer identity
EXPORT_FORMATS = ("hf", "safetensors")
ENDOFTEXT = "<|endoftext|>"

# HF activations that compute GPT-2's tanh-approximated GELU (lmforge's MLP)
SUPPORTED_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")
# Linear layers HF GPT-2 implements as Conv1D, i.e. with transposed weights
_CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
# attention-mask buffers of older GPT-2 checkpoints (OpenAI's among them): not parameters
_BUFFERS = re.compile(r"\.attn\.(bias|masked_bias)$")


# ----------------------------------------------------------------------------- configs


def hf_config(model_config: ModelConfig, eot_token: int | None = None) -> dict[str, Any]:
    """``config.json`` of a ``GPT2LMHeadModel`` computing the same function as ``GPT(model_config)``."""
    c = model_config
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_positions": c.block_size,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.dropout,
        "layer_norm_epsilon": c.layer_norm_epsilon,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eot_token,
        "eos_token_id": eot_token,
    }


def model_config_from_hf(hf: dict[str, Any], source: str = HF_CONFIG) -> ModelConfig:
    """The ``ModelConfig`` of a Hugging Face GPT-2 config; ``ConfigError`` naming the
    key for what lmforge's model cannot compute."""

    def unsupported(what: str) -> ConfigError:
        return ConfigError(
            f"{source}: {what}: lmforge's GPT cannot compute this model",
            "only GPT-2 architectures (model_type gpt2, gelu_new, tied embeddings) can be imported",
        )

    if hf.get("model_type") != "gpt2":
        raise unsupported(f"model_type is {hf.get('model_type')!r}, not 'gpt2'")
    act = hf.get("activation_function", "gelu_new")
    if act not in SUPPORTED_ACTIVATIONS:
        raise unsupported(f"activation_function {act!r} (supported: {', '.join(SUPPORTED_ACTIVATIONS)})")
    for key, ok in (
        ("scale_attn_by_inverse_layer_idx", False),
        ("scale_attn_weights", True),
        ("add_cross_attention", False),
        ("tie_word_embeddings", True),
    ):
        if key in hf and bool(hf[key]) != ok:
            raise unsupported(f"{key} = {json.dumps(hf[key])}")
    n_embd = _int(hf, "n_embd", source)
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise unsupported(f"n_inner = {hf['n_inner']} (lmforge's MLP is 4 x n_embd = {4 * n_embd})")
    dropout = hf.get("resid_pdrop", 0.1)
    return ModelConfig(
        vocab_size=_int(hf, "vocab_size", source),
        block_size=_int(hf, "n_positions", source),
        n_layer=_int(hf, "n_layer", source),
        n_head=_int(hf, "n_head", source),
        n_embd=n_embd,
        dropout=float(dropout),
        bias=True,
        layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)),
    )


def _int(hf: dict[str, Any], key: str, source: str) -> int:
    value = hf.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(
            f"{source}: {key} must be an integer, got {value!r}", "is this a GPT-2 config.json?"
        )
    return value


def preset_for(model_config: ModelConfig) -> str:
    """The preset with the same architecture (vocab size aside), else ``gpt2``
    (a run config records the dims anyway; the preset name is a label)."""
    dims = ("n_layer", "n_head", "n_embd", "block_size")
    for name, preset in PRESETS.items():
        if all(getattr(preset, d) == getattr(model_config, d) for d in dims):
            return name
    return "gpt2"


# ----------------------------------------------------------------------------- weights


def lmforge_param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor lmforge stores for ``GPT(config)`` (``lm_head.weight``,
    the tied copy of ``wte``, left out)."""
    C, V = config.n_embd, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {
        "transformer.wte.weight": (V, C),
        "transformer.wpe.weight": (config.block_size, C),
    }
    layer = {
        "ln_1.weight": (C,),
        "ln_1.bias": (C,),
        "attn.c_attn.weight": (3 * C, C),
        "attn.c_attn.bias": (3 * C,),
        "attn.c_proj.weight": (C, C),
        "attn.c_proj.bias": (C,),
        "ln_2.weight": (C,),
        "ln_2.bias": (C,),
        "mlp.c_fc.weight": (4 * C, C),
        "mlp.c_fc.bias": (4 * C,),
        "mlp.c_proj.weight": (C, 4 * C),
        "mlp.c_proj.bias": (C,),
    }
    for i in range(config.n_layer):
        for name, shape in layer.items():
            shapes[f"transformer.h.{i}.{name}"] = shape
    shapes["transformer.ln_f.weight"] = (C,)
    shapes["transformer.ln_f.bias"] = (C,)
    if not config.bias:
        shapes = {k: v for k, v in shapes.items() if not k.endswith(".bias")}
    return shapes


def to_hf_state_dict(state_dict: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """lmforge state dict -> ``GPT2LMHeadModel`` tensors (fp32, contiguous, no ``lm_head``)."""
    sd = {k: v for k, v in state_dict.items() if k != "lm_head.weight"}
    _check_keys(sd, lmforge_param_shapes(config), "model")
    out: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        t = t.detach().to("cpu", torch.float32)
        out[name] = (t.t() if name.endswith(_CONV1D) else t).contiguous()
    if not config.bias:
        # HF GPT-2 always has biases; zeros compute the same function
        full = dataclasses.replace(config, bias=True)
        for name, shape in lmforge_param_shapes(full).items():
            if name.endswith(".bias"):
                out[name] = torch.zeros(shape, dtype=torch.float32)
    return out


def from_hf_state_dict(
    hf_sd: dict[str, torch.Tensor], config: ModelConfig, source: str = "weights"
) -> dict[str, torch.Tensor]:
    """``GPT2LMHeadModel`` / ``GPT2Model`` tensors -> lmforge state dict (fp32, no ``lm_head``).

    Accepts keys with or without the ``transformer.`` prefix (``GPT2Model`` checkpoints,
    like OpenAI's, have none) and ignores the attention-mask buffers of old checkpoints.
    """
    sd: dict[str, torch.Tensor] = {}
    lm_head = None
    for name, t in hf_sd.items():
        if name == "lm_head.weight":
            lm_head = t
            continue
        if _BUFFERS.search(name):
            continue
        if not name.startswith("transformer."):
            name = "transformer." + name
        t = t.detach().to("cpu", torch.float32)
        sd[name] = (t.t() if name.endswith(_CONV1D) else t).contiguous()
    _check_keys(sd, lmforge_param_shapes(config), source)
    if lm_head is not None and not torch.equal(lm_head.to(torch.float32), sd["transformer.wte.weight"]):
        raise CheckpointError(
            f"{source}: lm_head.weight differs from the token embedding (untied LM head)",
            "lmforge's GPT ties the LM head to wte; only tied GPT-2 models can be imported",
        )
    return sd


def _check_keys(sd: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], source: str) -> None:
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        raise CheckpointError(
            f"{source}: tensors do not match the config ({'; '.join(parts)})",
            "the weights and config.json must come from the same GPT-2 model",
        )
    for name, shape in expected.items():
        if tuple(sd[name].shape) != shape:
            raise CheckpointError(
                f"{source}: {name} has shape {tuple(sd[name].shape)}, the config implies {shape}",
                "the weights and config.json must come from the same GPT-2 model",
            )


def _few(names: list[str], n: int = 4) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def load_hf_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a Hugging Face model directory: ``model.safetensors`` (or its
    sharded index), else ``pytorch_model.bin`` (or its index) through
    ``torch.load(weights_only=True)``: a pickle that would run code is refused."""
    path = Path(path)
    for index_name, single in ((HF_SAFETENSORS_INDEX, HF_SAFETENSORS), (HF_PICKLE_INDEX, HF_PICKLE)):
        if (path / single).is_file():
            return _load_weight_file(path / single)
        if (path / index_name).is_file():
            try:
                weight_map = json.loads((path / index_name).read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{path / index_name} is not a valid weight index ({exc})") from None
            tensors: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                if Path(shard).name != shard:
                    raise CheckpointError(
                        f"{path / index_name}: shard name {shard!r} is not a plain file name"
                    )
                tensors.update(_load_weight_file(path / shard))
            return tensors
    raise NotFoundError(
        f"no weights in {path} (looked for {HF_SAFETENSORS} and {HF_PICKLE})",
        "point at a directory written by save_pretrained or `lmforge ckpt export --format hf`",
    )


def _load_weight_file(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise CheckpointError(f"weight file {file} is missing", "the directory is incomplete")
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(file))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{file} is not a readable safetensors file ({exc})") from None
    return safe_torch_load(file)


def safe_torch_load(file: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` on the CPU, with a clear error for pickles that
    would run code (refused, never executed) and for damaged files."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"refusing to load {file}: it contains pickled objects that could run code ({first})",
            "only load files from sources you trust; ask for a safetensors version of the weights",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{file} is damaged or not a PyTorch file ({type(exc).__name__}: {exc})"
        ) from None


# ----------------------------------------------------------------------------- tokenizer files


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (``encoder.py`` of the release)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _token_str(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The BPE merges, in rank order, that produce tiktoken ``ranks``: the token of
    rank r is the single pair that byte-pair merging with ranks < r leaves."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = _bpe(ranks, token, max_rank=rank)
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) is not one merge of lower-ranked tokens")
        merges.append((parts[0], parts[1]))
    return merges


def _bpe(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best_i, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best_i, best_rank = i, r
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def hf_tokenizer_files(tokenizer: Tokenizer, model_max_length: int) -> dict[str, str]:
    """``vocab.json``, ``merges.txt`` and the tokenizer config of a Hugging Face GPT-2
    tokenizer with the same token ids as ``tokenizer``. ``ValueError`` when its ranks are
    not a byte-level BPE (every single byte a token, every longer token one merge)."""
    ranks: dict[bytes, int] = tokenizer.encoding._mergeable_ranks
    if any(bytes([b]) not in ranks for b in range(256)):
        raise ValueError(f"tokenizer {tokenizer.name!r} does not have every single byte as a token")
    vocab = {_token_str(tok): rank for tok, rank in ranks.items()}
    vocab[ENDOFTEXT] = tokenizer.eot_token
    merges = recover_merges(ranks)
    special = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": model_max_length,
        "add_prefix_space": False,
        "add_bos_token": False,
        "errors": "replace",
        **special,
    }
    merges_txt = "#version: 0.2\n" + "".join(f"{_token_str(a)} {_token_str(b)}\n" for a, b in merges)
    return {
        "vocab.json": json.dumps(dict(sorted(vocab.items(), key=lambda kv: kv[1])), ensure_ascii=False),
        "merges.txt": merges_txt,
        "tokenizer_config.json": json.dumps(config, indent=2),
        "special_tokens_map.json": json.dumps(special, indent=2),
    }


def ranks_from_hf_tokenizer(path: str | os.PathLike) -> dict[bytes, int] | None:
    """tiktoken ranks equivalent to a directory's GPT-2 ``vocab.json`` + ``merges.txt``, or
    None when there are none or they are not representable (ids of the byte tokens
    first and of each merge's result in merge order, ``<|endoftext|>`` right after)."""
    path = Path(path)
    if not ((path / "vocab.json").is_file() and (path / "merges.txt").is_file()):
        return None
    try:
        vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
        lines = (path / "merges.txt").read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError):
        return None
    decoder = {c: b for b, c in bytes_to_unicode().items()}
    ranks: dict[bytes, int] = {}
    for tok, i in vocab.items():
        if tok == ENDOFTEXT:
            continue
        try:
            ranks[bytes(decoder[c] for c in tok)] = int(i)
        except KeyError:
            return None  # a special token other than <|endoftext|>
    n = len(ranks)
    if sorted(ranks.values()) != list(range(n)) or vocab.get(ENDOFTEXT) != n:
        return None
    if any(ranks.get(bytes([b]), 256) >= 256 for b in range(256)):
        return None
    merges = [ln.split(" ") for ln in lines if ln and not ln.startswith("#version")]
    if len(merges) != n - 256:
        return None
    for i, pair in enumerate(merges):
        if len(pair) != 2 or vocab.get(pair[0] + pair[1]) != 256 + i:
            return None
    return ranks


# ----------------------------------------------------------------------------- output directories


@contextmanager
def staged_output(
    out: str | os.PathLike, force: bool = False, protect: tuple[Path, ...] = ()
) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``out``; on success it replaces ``out``
    in one rename, on any failure it is removed and ``out`` is left as it was.

    A non-empty ``out`` is refused unless ``force``; so is an ``out`` that is, or holds,
    one of ``protect`` (the checkpoint being exported, which replacing would delete).
    """
    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a directory", "pass a directory path")
    for p in protect:
        p = Path(p).resolve()
        if out.resolve() == p or p.is_relative_to(out.resolve()):
            raise UsageError(
                f"--out {out} would replace the checkpoint it is exported from", "pick another --out"
            )
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(
            f"--out {out} is not empty", "pass --force to replace it, or pick an empty directory"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        yield tmp
        for f in tmp.iterdir():
            fsync_file(f)
        if out.exists() or out.is_symlink():
            old = out.parent / f".old-{out.name}-{uuid.uuid4().hex[:8]}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True) if not old.is_symlink() else old.unlink()
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    write_json(out_dir / HF_CONFIG, hf_config(model_config, eot_token))
    save_file(
        to_hf_state_dict(state_dict, model_config), str(out_dir / HF_SAFETENSORS), metadata={"format": "pt"}
    )
    write_json(out_dir / "generation_config.json", {"bos_token_id": eot_token, "eos_token_id": eot_token})
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


# ----------------------------------------------------------------------------- export / import


@dataclass
class ExportResult:
    out: Path
    format: str
    files: dict[str, int]  # name -> bytes
    notes: list[str] = field(default_factory=list)


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    format: str = "hf",
    *,
    workspace: Workspace | None = None,
    force: bool = False,
) -> ExportResult:
    """Export the checkpoint directory ``checkpoint`` to ``out``.

    ``hf``: a directory ``transformers.GPT2LMHeadModel.from_pretrained`` loads with the
    same logits, plus GPT-2 tokenizer files when the checkpoint's tokenizer is available
    here, and ``lmforge.json`` (run, step, metrics, tokenizer identity, config).
    ``safetensors``: lmforge's own weights and ``meta.json``, a standalone light
    checkpoint that every lmforge command accepts as a path.
    """
    from lmforge.checkpoint.store import load_model, model_state, read_meta

    if format not in EXPORT_FORMATS:
        raise UsageError(f"unknown export format {format!r}", f"choose one of: {', '.join(EXPORT_FORMATS)}")
    ckpt = Path(checkpoint)
    meta = read_meta(ckpt)
    with staged_output(out, force=force, protect=(ckpt,)) as tmp:
        model, config, meta = load_model(ckpt, device="cpu")
        state_dict = model_state(model)  # without the tied head and any padded vocabulary rows
        if format == "hf":
            notes = _export_hf(state_dict, config, meta, ckpt, tmp, workspace)
        else:
            notes = _export_safetensors(state_dict, meta, ckpt, tmp)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
    return ExportResult(Path(out).expanduser().absolute(), format, files, notes)


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


def _export_hf(state_dict, config: TrainingConfig, meta, ckpt: Path, out_dir: Path, workspace) -> list[str]:
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
        "exported_at": _now(),
        "source": _source_info(meta, ckpt),
        "tokenizer": identity,
        "config": config.to_dict(),
    }
    notes += write_hf_dir(
        state_dict, config.model, out_dir, tokenizer=tokenizer, eot_token=eot, lmforge_info=info
    )
    if not config.model.bias:
        notes.append("the model has no biases; HF GPT-2 needs them, so zero biases were written")
    return notes


def _known_eot(identity: dict[str, Any], vocab_size: int) -> int | None:
    name = identity.get("name")
    if name == "gpt2":
        return 50256
    if name == "bytes":
        return 256
    return None if vocab_size <= 0 else vocab_size - 1


def _export_safetensors(state_dict, meta: dict[str, Any], ckpt: Path, out_dir: Path) -> list[str]:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    small = {"config": json.dumps(meta.get("config")), "tokenizer": json.dumps(meta.get("tokenizer"))}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt", **small})
    new_meta = {
        **{k: v for k, v in meta.items() if k != "files"},
        "kind": "light",
        "exported_from": _source_info(meta, ckpt),
        "files": {"model.safetensors": (out_dir / "model.safetensors").stat().st_size},
    }
    write_json(out_dir / "meta.json", new_meta)
    return []


@dataclass
class ImportResult:
    run: str
    checkpoint: Path
    preset: str
    tokenizer: dict[str, Any]
    parameters: int
    notes: list[str] = field(default_factory=list)


_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def import_checkpoint(workspace: Workspace, src: str | os.PathLike, name: str | None = None) -> ImportResult:
    """Import a Hugging Face GPT-2 directory (``config.json`` + ``model.safetensors`` or
    ``pytorch_model.bin``), or an lmforge checkpoint directory, as the run
    ``runs/<name>/`` with one checkpoint, ``best``, so ``eval NAME``, ``generate NAME``
    and ``train --init-from NAME`` work on it. The run appears whole or not at all."""
    from lmforge.checkpoint.store import load_model, save_checkpoint

    src = Path(src).expanduser()
    if not src.is_dir():
        raise NotFoundError(
            f"{src} is not a directory", "pass the directory holding config.json and the weights"
        )
    name = name or re.sub(r"[^A-Za-z0-9._-]+", "-", src.resolve().name).strip("-.") or "imported"
    if not _RUN_NAME.match(name):
        raise UsageError(f"invalid run name {name!r}", "use letters, digits, '.', '_' and '-' (--as NAME)")
    run_dir = workspace.run_dir(name)
    if run_dir.exists():
        raise UsageError(
            f"run {name!r} already exists in {workspace.runs_dir}", "pick another name with --as NAME"
        )

    notes: list[str] = []
    if (src / HF_CONFIG).is_file():
        model, config, identity, notes = _read_hf_dir(src, name, workspace)
    elif (src / "meta.json").is_file():
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

    now = _now()
    meta = {
        "format_version": 1,
        "kind": "best",
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
    run_json = {
        "name": name,
        "status": "finished",
        "started_at": now,
        "ended_at": now,
        "step": 0,
        "total_steps": 0,
        "tokens": 0,
        "best_val_loss": None,
        "best_step": None,
        "dataset": None,
        "tokenizer": identity,
        "wandb_id": None,
        "pid": None,
        "lmforge_version": __version__,
        "error": None,
        "imported_from": str(src.resolve()),
    }
    workspace.ensure(workspace.runs_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-import-{name}-", dir=workspace.runs_dir))
    try:
        (tmp / "config.toml").write_text(config.to_toml(), encoding="utf-8")
        write_json(tmp / "run.json", run_json)
        save_checkpoint(tmp / "checkpoints" / "best", model, meta)
        if run_dir.exists():  # someone else took the name meanwhile
            raise UsageError(f"run {name!r} already exists", "pick another name with --as NAME")
        tmp.rename(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ImportResult(
        name, run_dir / "checkpoints" / "best", config.preset, identity, model.get_num_params(False), notes
    )


def _read_hf_dir(src: Path, name: str, workspace: Workspace):
    from lmforge.model.gpt import GPT

    try:
        hf = json.loads((src / HF_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{src / HF_CONFIG} is not valid JSON ({exc})") from None
    if not isinstance(hf, dict):
        raise ConfigError(f"{src / HF_CONFIG} is not a JSON object")
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
        model = GPT(model_config)
    state_dict["lm_head.weight"] = state_dict["transformer.wte.weight"]
    model.load_state_dict(state_dict, strict=True, assign=True)
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
    # HF GPT-2 always has biases (zeros for a bias-free export): keep them
    return dataclasses.replace(config, model=dataclasses.replace(config.model, bias=True))


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
        return info["tokenizer"], []
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


def _store_ranks(ranks: dict[bytes, int], sha: str, name: str, workspace: Workspace):
    """Write a new tokenizer's ranks as ``tokenizers/<name>.tiktoken`` so that
    ``get_tokenizer(name)`` finds it."""
    import base64

    path = workspace.tokenizers_dir / f"{name}.tiktoken"
    if path.exists():
        from lmforge.data.tokenizer import tokenizer_from_ranks_file

        if tokenizer_from_ranks_file(path, name=name).identity["sha256"] != sha:
            raise UsageError(
                f"{path} exists with other ranks than the imported model's tokenizer",
                "import under another name with --as NAME",
            )
    else:
        workspace.ensure(workspace.tokenizers_dir)
        lines = (
            base64.b64encode(t) + b" " + str(r).encode() + b"\n"
            for t, r in sorted(ranks.items(), key=lambda kv: kv[1])
        )
        tmp = path.with_name(f".tmp-{path.name}")
        tmp.write_bytes(b"".join(lines))
        tmp.replace(path)
    return {"name": name, "sha256": sha}, [f"the model's own tokenizer was saved as {path}"]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
