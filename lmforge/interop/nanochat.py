"""The modern architecture <-> Hugging Face's ``NanoChatForCausalLM`` (transformers >= 5).

``NanoChatForCausalLM`` computes what ``ModernGPT`` computes, checked against
transformers' ``modeling_nanochat.py``:

- RMSNorm without a weight (``NanoChatRMSNorm``, in fp32), after the embedding, before
  each sub-block and at the end (the same ``norm`` twice);
- rotary embeddings in the halves layout (``rotate_half`` = ``cat(x2, -x1)``), base
  ``rope_theta``, then QK-norm ("RoPE -> Norm"), attention scaled by ``head_dim ** -0.5``;
- ``relu2`` MLP of ``intermediate_size``, no biases, an untied ``lm_head`` and
  ``final_logit_softcapping`` as ``c * tanh(logits / c)``; ``num_key_value_heads`` for GQA.

Where it cannot hold a lever, the export is refused (``qk_norm = false``: NanoChat always
normalises q and k; value embeddings, residual lambdas and U-net skips: it has none) and an
import refuses what ``ModernGPT`` cannot compute. The weights need no transposes (both store
``nn.Linear`` layouts); only the names differ.
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.interop.hf_config import (
    MAX_HEADS,
    MAX_LAYERS,
    MAX_POSITIONS,
    MAX_VOCAB,
    MAX_WIDTH,
    checked_model_config,
    read_bool,
    read_float,
    read_int,
)
from lmforge.interop.hf_weights import check_weights
from lmforge.model.modern import ROPE_THETA

MODEL_TYPE = "nanochat"

# lmforge name -> NanoChat name, with {i} the layer
_LAYER_NAMES = {
    "attn.c_q": "self_attn.q_proj",
    "attn.c_k": "self_attn.k_proj",
    "attn.c_v": "self_attn.v_proj",
    "attn.c_proj": "self_attn.o_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_TOP_NAMES = {"transformer.wte.weight": "model.embed_tokens.weight", "lm_head.weight": "lm_head.weight"}


# the levers NanoChatForCausalLM (transformers' modeling_nanochat.py) has no tensors or code for
_NOT_IN_NANOCHAT = {
    "value_embeds": "--value-embeds: NanoChatForCausalLM has no value embeddings",
    "residual_lambdas": "--residual-lambdas: NanoChatForCausalLM has no residual or x0 lambdas",
    "unet_skips": "--unet-skips: NanoChatForCausalLM has no skip connections between blocks",
    "document_masking": "--document-masking to NanoChatForCausalLM: its attention has no document mask",
}


def check_exportable(c: ModelConfig) -> None:
    """Refuse a config whose every lever ``NanoChatForCausalLM`` cannot hold."""
    if not c.qk_norm:
        raise ConfigError(
            "cannot export --no-qk-norm to NanoChatForCausalLM: it always normalises queries and keys",
            "export with --format safetensors (lmforge's own), or train with --qk-norm",
        )
    for lever, why in _NOT_IN_NANOCHAT.items():
        if getattr(c, lever):
            off = "--no-" + lever.replace("_", "-")
            raise ConfigError(
                f"cannot export {why}",
                f"export with --format safetensors (lmforge's own), or train with {off}",
            )


def nanochat_config(c: ModelConfig, eot_token: int | None = None) -> dict[str, Any]:
    """``config.json`` of a ``NanoChatForCausalLM`` computing the same function as ``ModernGPT(c)``."""
    check_exportable(c)
    return {
        "architectures": ["NanoChatForCausalLM"],
        "model_type": MODEL_TYPE,
        "vocab_size": c.vocab_size,
        "hidden_size": c.n_embd,
        "intermediate_size": 4 * c.n_embd,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "num_key_value_heads": c.kv_heads,
        "max_position_embeddings": c.block_size,
        "hidden_act": "relu2",
        "attention_dropout": 0.0,  # lmforge's dropout is on the residual branches, not the weights
        "rms_norm_eps": c.layer_norm_epsilon,
        "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA},
        "final_logit_softcapping": c.logit_softcap or None,
        "attention_bias": False,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": eot_token,
        "eos_token_id": eot_token,
        "pad_token_id": eot_token,
    }


def model_config_from_nanochat(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """The ``ModelConfig`` of a NanoChat ``config.json``; ``ConfigError`` naming the key for
    what ``ModernGPT`` cannot compute."""

    def unsupported(what: str) -> ConfigError:
        return ConfigError(
            f"{source}: {what}: lmforge's modern architecture cannot compute this model",
            "only relu2 NanoChat models with a 4 x hidden MLP, default rotary and no biases import",
        )

    hidden = read_int(hf, "hidden_size", source, MAX_WIDTH)
    act = hf.get("hidden_act", "relu2")
    if act != "relu2":
        raise unsupported(f"hidden_act {json.dumps(act)}")
    inner = hf.get("intermediate_size")
    if inner != 4 * hidden or not isinstance(inner, int):
        raise unsupported(f"intermediate_size = {json.dumps(inner)} (lmforge's MLP is {4 * hidden})")
    if read_bool(hf, "attention_bias", source, False):
        raise unsupported("attention_bias = true")
    if read_bool(hf, "tie_word_embeddings", source, False):
        raise unsupported("tie_word_embeddings = true")
    rope = hf.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise ConfigError(f"{source}: rope_parameters must be an object, got {json.dumps(rope)}")
    theta = rope.get("rope_theta", hf.get("rope_theta", ROPE_THETA))
    if rope.get("rope_type", "default") != "default" or theta != ROPE_THETA:
        raise unsupported(f"rope_parameters = {rope} (lmforge: default rotary, theta {ROPE_THETA:g})")
    heads = read_int(hf, "num_attention_heads", source, MAX_HEADS)
    if hidden % heads:
        raise ConfigError(
            f"{source}: hidden_size ({hidden}) must be a multiple of num_attention_heads ({heads})"
        )
    if "head_dim" in hf and hf["head_dim"] not in (None, hidden // heads):
        raise unsupported(f"head_dim = {json.dumps(hf['head_dim'])}")
    kv_heads = read_int(hf, "num_key_value_heads", source, MAX_HEADS, default=heads)
    if heads % kv_heads:
        raise ConfigError(
            f"{source}: num_key_value_heads ({kv_heads}) must divide num_attention_heads ({heads})"
        )
    return checked_model_config(
        source,
        vocab_size=read_int(hf, "vocab_size", source, MAX_VOCAB),
        block_size=read_int(hf, "max_position_embeddings", source, MAX_POSITIONS),
        n_layer=read_int(hf, "num_hidden_layers", source, MAX_LAYERS),
        n_head=heads,
        n_embd=hidden,
        dropout=0.0,
        bias=False,
        layer_norm_epsilon=read_float(hf, "rms_norm_eps", source, 1e-6, 1e-12, 1.0, "in [1e-12, 1]"),
        arch="modern",
        n_kv_head=kv_heads,
        qk_norm=True,
        # null or 0: no soft-cap
        logit_softcap=read_float(
            hf, "final_logit_softcapping", source, 0.0, 0.0, 1e6, ">= 0 (null for none)"
        ),
    )


def _hf_name(name: str) -> str:
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    m = re.fullmatch(r"transformer\.h\.(\d+)\.(attn\.c_\w+|mlp\.c_\w+)\.weight", name)
    if m is None or m.group(2) not in _LAYER_NAMES:
        raise ConfigError(f"no NanoChat name for lmforge tensor {name!r}")
    return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"


def to_nanochat_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """lmforge ``ModernGPT`` tensors (real vocabulary rows) -> ``NanoChatForCausalLM`` tensors."""
    return {_hf_name(k): v.to(torch.float32).contiguous() for k, v in state_dict.items()}


def from_nanochat_state_dict(
    tensors: dict[str, torch.Tensor], config: ModelConfig, source: str = "model.safetensors"
) -> dict[str, torch.Tensor]:
    """``NanoChatForCausalLM`` tensors -> lmforge state dict; every expected tensor must be there."""
    from lmforge.model.modern import ModernGPT

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in ModernGPT(config).state_dict().items()}
    check_weights(tensors, source)
    by_hf = {_hf_name(k): k for k in expected}
    out, missing = {}, []
    for hf_name, name in by_hf.items():
        t = tensors.get(hf_name)
        if t is None:
            missing.append(hf_name)
            continue
        if tuple(t.shape) != expected[name]:
            raise ConfigError(f"{source}: {hf_name} has shape {tuple(t.shape)}, expected {expected[name]}")
        out[name] = t.to(torch.float32).contiguous()
    if missing:
        raise ConfigError(f"{source}: missing NanoChat tensors {missing[:5]}")
    return out
