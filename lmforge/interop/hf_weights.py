"""lmforge state dicts <-> ``transformers.GPT2LMHeadModel`` tensors, and safe loading of
a Hugging Face directory's weights.

lmforge's parameter names are GPT-2's, so the mapping renames nothing; it has three
twists:

- HF keeps GPT-2's ``Conv1D`` layers, whose weights are stored transposed
  (in_features, out_features) relative to ``nn.Linear``: ``c_attn``, ``c_proj``
  and ``c_fc`` weights are transposed on the way out and back on the way in.
- The LM head is tied to the token embedding: ``lm_head.weight`` is written by
  neither side and re-tied on load (``tie_word_embeddings: true``).
- HF GPT-2 always has biases; a model trained with ``bias = false`` is exported
  with zero biases, which computes exactly the same function.

Weights are read with ``safetensors`` or ``torch.load(weights_only=True)``, never
with a pickle load that could run code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from lmforge.config import ModelConfig
from lmforge.errors import CheckpointError, NotFoundError

HF_SAFETENSORS = "model.safetensors"
HF_SAFETENSORS_INDEX = "model.safetensors.index.json"
HF_PICKLE = "pytorch_model.bin"
HF_PICKLE_INDEX = "pytorch_model.bin.index.json"

# Linear layers HF GPT-2 implements as Conv1D, i.e. with transposed weights
_CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
# attention-mask buffers of older GPT-2 checkpoints (OpenAI's among them): not parameters
_BUFFERS = re.compile(r"\.attn\.(bias|masked_bias)$")


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
    check_weights({k: v for k, v in hf_sd.items() if not _BUFFERS.search(k)}, source)
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


# what an imported weight may be stored as; anything else (int8, bool, complex) would be
# cast to fp32 silently and compute something other than the model
WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_weights(tensors: dict[str, torch.Tensor], source: str) -> None:
    """Refuse, naming the first tensor, weights that are not floating point (a quantised
    or integer tensor is not lmforge's model) or that hold NaN or infinity (every
    evaluation and sample of the run would be refused later)."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{source}: {name} is not a tensor ({type(t).__name__})")
        if t.dtype not in WEIGHT_DTYPES:
            raise CheckpointError(
                f"{source}: tensor {name} is {str(t.dtype).removeprefix('torch.')}, not floating point",
                "import the unquantised fp32/fp16/bf16 weights",
            )
        if not bool(torch.isfinite(t).all()):
            raise CheckpointError(
                f"{source}: tensor {name} holds NaN or infinite values",
                "these weights are damaged (or diverged in training): import a good copy",
            )


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
            weight_map = _read_weight_map(path / index_name)
            tensors: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                if Path(shard).name != shard or shard in ("", ".", ".."):
                    raise CheckpointError(
                        f"{path / index_name}: shard name {shard!r} is not a plain file name"
                    )
                tensors.update(_load_weight_file(path / shard))
            return tensors
    raise NotFoundError(
        f"no weights in {path} (looked for {HF_SAFETENSORS} and {HF_PICKLE})",
        "point at a directory written by save_pretrained or `lmforge ckpt export --format hf`",
    )


def _read_weight_map(index: Path) -> dict[str, str]:
    """The ``weight_map`` of a sharded checkpoint's index (tensor name -> shard file),
    every name and file a string."""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{index} is not valid JSON ({exc})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(
            f"{index}: weight_map must be an object of tensor name -> shard file, "
            f"got {json.dumps(weight_map)[:80]}"
        )
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CheckpointError(
                f"{index}: weight_map[{json.dumps(name)}] must be a shard file name, "
                f"got {json.dumps(shard)[:80]}"
            )
    return weight_map


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
    loaded = safe_torch_load(file)
    if not isinstance(loaded, dict) or not all(isinstance(k, str) for k in loaded):
        raise CheckpointError(f"{file} does not hold a dictionary of named tensors")
    return loaded


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
