"""The parameter count ``ckpt show`` prints, read from the header of ``model.safetensors``
(no torch, any architecture): the model's total, a tied head counted once."""

from __future__ import annotations

import json
import struct

import pytest

from lmforge.checkpoint.meta import MODEL_FILE, stored_parameters

ARCHS = {"gpt2": {}, "gpt2-no-bias": {"bias": False}, "modern": {"arch": "modern", "bias": False}}


def save_tiny(path, **model_kw):
    """A real checkpoint of a tiny model (``build_model``: either architecture) at ``path``."""
    from lmforge.checkpoint.store import save_checkpoint
    from lmforge.config import ModelConfig, TrainingConfig
    from lmforge.data.tokenizer import bytes_tokenizer
    from lmforge.model import build_model

    dims = {"vocab_size": 257, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16, "dropout": 0.0}
    config = ModelConfig(**(dims | model_kw))
    model = build_model(config)
    meta = {
        "kind": "best",
        "run": "r",
        "step": 10,
        "tokens": 640,
        "val_loss": 4.0,
        "config": TrainingConfig(preset="tiny", tokenizer="bytes", model=config).to_dict(),
        "tokenizer": bytes_tokenizer().identity,
        "dataset": "wikitext-2",
    }
    save_checkpoint(path, model, meta)
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_stored_parameters_are_the_models_total(tmp_path, arch):
    model = save_tiny(tmp_path / "ckpt", **ARCHS[arch])
    assert stored_parameters(tmp_path / "ckpt") == model.get_num_params(non_embedding=False)


@pytest.mark.parametrize(
    "content",
    [
        struct.pack("<Q", 10**12) + b"{}",  # a header length no real file has
        struct.pack("<Q", 5) + b"{oops",  # not JSON
        struct.pack("<Q", 2) + b"[]",  # JSON, not a table of tensors
        struct.pack("<Q", 24) + b'{"w": {"shape": [2, -1]}}',  # a negative dimension
        b"abc",  # shorter than the length field
    ],
)
def test_stored_parameters_of_a_damaged_file_are_unknown(tmp_path, content):
    save_tiny(tmp_path / "ckpt")
    (tmp_path / "ckpt" / MODEL_FILE).write_bytes(content)
    assert stored_parameters(tmp_path / "ckpt") is None


def test_stored_parameters_without_weights_are_unknown(tmp_path):
    assert stored_parameters(tmp_path) is None


def test_show_prints_the_count_as_before(cli, make_ckpt_run):
    make_ckpt_run("r", [(10, "best")])  # a tiny GPT-2: 10,960 parameters (the tied head once)
    text = cli("ckpt", "show", "r:best")
    assert text.exit_code == 0, text.output
    assert "parameters (total)  10,960" in text.stdout
    assert json.loads(cli("ckpt", "show", "r:best", "--json").stdout)["parameters"] == 10_960


def test_show_counts_a_modern_model_from_its_weights(cli, tmp_path):
    # the count once came from GPT-2's shapes whatever the config said: wrong for --arch modern
    model = save_tiny(tmp_path / "modern", **ARCHS["modern"])
    total = model.get_num_params(non_embedding=False)
    shown = json.loads(cli("ckpt", "show", str(tmp_path / "modern"), "--json").stdout)
    assert shown["parameters"] == total == 14_368


def test_show_without_readable_weights_prints_a_dash(cli, tmp_path):
    save_tiny(tmp_path / "ckpt")
    (tmp_path / "ckpt" / MODEL_FILE).write_bytes(b"abc")
    text = cli("ckpt", "show", str(tmp_path / "ckpt"))
    assert text.exit_code == 0, text.output
    assert "parameters (total)  -" in text.stdout
    assert json.loads(cli("ckpt", "show", str(tmp_path / "ckpt"), "--json").stdout)["parameters"] is None
