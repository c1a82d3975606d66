"""lmforge's ``ModelConfig`` <-> the ``config.json`` of a ``transformers`` GPT-2.

Only what lmforge's GPT computes maps across: GPT-2's tanh GELU, a 4 x n_embd MLP,
tied embeddings, no per-layer attention scaling. Anything else is refused with a
``ConfigError`` naming the key, rather than imported as a model that computes
something different.
"""

from __future__ import annotations

import json
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
