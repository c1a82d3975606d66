"""lmforge's ``ModelConfig`` <-> the ``config.json`` of a ``transformers`` GPT-2.

Only what lmforge's GPT computes maps across: GPT-2's tanh GELU, a 4 x n_embd MLP,
tied embeddings, no per-layer attention scaling. Anything else is refused with a
``ConfigError`` naming the key, rather than imported as a model that computes
something different. Every value read is type- and range-checked here (``read_int``,
``read_float``, ``read_bool``), before anything is allocated: a string, a list, a null,
``2.7`` heads or ten million layers is one line naming the key, not a traceback or
minutes of allocation.
"""

from __future__ import annotations

import json
import math
from typing import Any

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.presets import PRESETS

HF_CONFIG = "config.json"

# HF activations that compute GPT-2's tanh-approximated GELU (lmforge's MLP)
SUPPORTED_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")


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


# Upper bounds on the sizes an import accepts: far above every GPT-2 or NanoChat release
# (GPT-2 XL has 48 layers of width 1600 and 1024 positions; vocabularies reach a few hundred
# thousand), low enough that a hostile config.json is refused at once.
MAX_LAYERS = 1024
MAX_HEADS = 1024
MAX_WIDTH = 65536
MAX_VOCAB = 2**22
MAX_POSITIONS = 2**20

_REQUIRED = object()


def _bad(source: str, key: str, what: str, value: Any) -> ConfigError:
    return ConfigError(f"{source}: {key} must be {what}, got {json.dumps(value)}", f"fix {key} in {source}")


def read_int(hf: dict[str, Any], key: str, source: str, high: int, default: Any = _REQUIRED) -> int:
    """``hf[key]`` as an integer in [1, high] (``default`` when the key is absent or null)."""
    value = hf.get(key)
    if value is None and default is not _REQUIRED:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(source, key, "an integer", value)
    if not 1 <= value <= high:
        raise _bad(source, key, f"between 1 and {high:,}", value)
    return value


def read_float(
    hf: dict[str, Any], key: str, source: str, default: float, low: float, high: float, what: str
) -> float:
    """``hf[key]`` as a finite number in [low, high] (``default`` when absent or null);
    ``what`` says the range in words for the error."""
    value = hf.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(source, key, "a finite number", value)
    if not low <= value <= high:
        raise _bad(source, key, what, value)
    return float(value)


def read_bool(hf: dict[str, Any], key: str, source: str, default: bool) -> bool:
    """``hf[key]`` as true or false (``default`` when absent or null)."""
    value = hf.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(source, key, "true or false", value)
    return value


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
        if read_bool(hf, key, source, ok) != ok:
            raise unsupported(f"{key} = {json.dumps(hf[key])}")
    n_embd = read_int(hf, "n_embd", source, MAX_WIDTH)
    n_head = read_int(hf, "n_head", source, MAX_HEADS)
    if n_embd % n_head:
        raise _bad(source, "n_embd", f"a multiple of n_head ({n_head})", n_embd)
    n_inner = hf.get("n_inner")
    if n_inner is not None and (n_inner != 4 * n_embd or not isinstance(n_inner, int)):
        raise unsupported(f"n_inner = {json.dumps(n_inner)} (lmforge's MLP is 4 x n_embd = {4 * n_embd})")
    return checked_model_config(
        source,
        vocab_size=read_int(hf, "vocab_size", source, MAX_VOCAB),
        block_size=read_int(hf, "n_positions", source, MAX_POSITIONS),
        n_layer=read_int(hf, "n_layer", source, MAX_LAYERS),
        n_head=n_head,
        n_embd=n_embd,
        dropout=read_float(hf, "resid_pdrop", source, 0.1, 0.0, 0.999, "in [0, 1)"),
        bias=True,
        layer_norm_epsilon=read_float(hf, "layer_norm_epsilon", source, 1e-5, 1e-12, 1.0, "in [1e-12, 1]"),
    )


def checked_model_config(source: str, **fields: Any) -> ModelConfig:
    """``ModelConfig(**fields)``; what it still refuses is reported against ``source``
    (its own messages name the training flags)."""
    try:
        return ModelConfig(**fields)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc.message}", f"fix {source}") from None


def preset_for(model_config: ModelConfig) -> str:
    """The preset with the same architecture (vocab size aside), else ``gpt2``
    (a run config records the dims anyway; the preset name is a label)."""
    dims = ("n_layer", "n_head", "n_embd", "block_size")
    for name, preset in PRESETS.items():
        if all(getattr(preset, d) == getattr(model_config, d) for d in dims):
            return name
    return "gpt2"
