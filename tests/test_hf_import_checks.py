"""``ckpt import`` refuses what it cannot name back or compute (issue 27 items 4, 5, 13, 18):
reserved run names, non-finite or non-float tensors, and config.json / shard-index values of
the wrong type or absurd size, each with one line naming the key or tensor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.data.tokenizer import bytes_tokenizer
from lmforge.errors import LmforgeError, UsageError
from lmforge.interop import hf_export, hf_import
from lmforge.model import build_model
from lmforge.workspace import Workspace


def _hf_dir(path: Path, **kw) -> Path:
    """An HF directory (``config.json``, ``model.safetensors``, tokenizer files) of a tiny model."""
    dims = {"vocab_size": 257, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16, "dropout": 0.0}
    config = ModelConfig(**(dims | kw))
    torch.manual_seed(0)
    model = build_model(config)
    sd = {k: v for k, v in model.state_dict().items() if not (config.tied_head and k == "lm_head.weight")}
    path.mkdir(parents=True)
    hf_export.write_hf_dir(sd, config, path, tokenizer=bytes_tokenizer())
    return path


def _edit_config(path: Path, **changes) -> None:
    hf = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(hf | changes))


@pytest.fixture
def ws(workspace_dir):
    return Workspace.resolve(workspace_dir)


# ----------------------------------------------------------------------------- reserved names (item 4)


@pytest.mark.parametrize("name", ["latest", "best"])
def test_import_refuses_a_reserved_name(tmp_path, ws, cli, name):
    src = _hf_dir(tmp_path / "gpt")
    r = cli("ckpt", "import", str(src), "--as", name)
    assert r.exit_code == 2, r.output
    assert f"--as '{name}' is reserved" in r.stderr and "Traceback" not in r.stderr
    assert not ws.runs_dir.exists()
    named_so = _hf_dir(tmp_path / name)  # the default name comes from the directory's
    with pytest.raises(UsageError, match="is reserved"):
        hf_import.import_checkpoint(ws, named_so)
    assert hf_import.import_checkpoint(ws, named_so, name="mine").run == "mine"


def test_reserved_names_check_is_shared():
    from lmforge.runs.names import RESERVED_NAMES, check_new_run_name

    assert {"latest", "best"} <= RESERVED_NAMES
    assert check_new_run_name("run-1") == "run-1"
    for bad in ("latest", "best", "../x", ".hidden", ""):
        with pytest.raises(UsageError, match="--run"):
            check_new_run_name(bad)


# ----------------------------------------------------------------------------- weights (item 5)


def _rewrite_tensor(path: Path, name: str, change) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path / "model.safetensors"))
    tensors[name] = change(tensors[name])
    save_file(tensors, str(path / "model.safetensors"))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.index_fill(0, torch.tensor([1]), float("nan")), "holds NaN or infinite values"),
        (lambda t: t.index_fill(0, torch.tensor([0]), float("inf")), "holds NaN or infinite values"),
        (lambda t: t.to(torch.int8), "is int8, not floating point"),
    ],
)
@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_import_refuses_nonsense_weights(tmp_path, ws, change, message, arch):
    kw = {"arch": "modern", "bias": False, "qk_norm": True} if arch == "modern" else {}
    src = _hf_dir(tmp_path / "gpt", **kw)
    name = "transformer.h.1.mlp.c_fc.weight" if arch == "gpt2" else "model.layers.1.mlp.fc1.weight"
    _rewrite_tensor(src, name, change)
    with pytest.raises(LmforgeError, match=f"tensor {name} {message}"):
        hf_import.import_checkpoint(ws, src, name="x")
    assert not ws.runs_dir.exists()


# ----------------------------------------------------------------------------- config.json (items 5, 13, 18)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"n_layer": 10_000_000}, "n_layer must be between 1 and 1,024, got 10000000"),
        ({"n_layer": 0}, "n_layer must be between 1"),
        ({"n_embd": "wide"}, 'n_embd must be an integer, got "wide"'),
        ({"n_head": 2.0}, "n_head must be an integer, got 2.0"),
        ({"vocab_size": None}, "vocab_size must be an integer, got null"),
        ({"n_positions": [16]}, "n_positions must be an integer, got \\[16\\]"),
        ({"layer_norm_epsilon": "1e-5"}, 'layer_norm_epsilon must be a finite number, got "1e-5"'),
        ({"resid_pdrop": [0.1]}, "resid_pdrop must be a finite number"),
        ({"resid_pdrop": 2.0}, "resid_pdrop must be in \\[0, 1\\)"),
        ({"tie_word_embeddings": "true"}, 'tie_word_embeddings must be true or false, got "true"'),
        ({"n_inner": "64"}, "n_inner"),
        ({"n_head": 3}, "n_embd must be a multiple of n_head \\(3\\)"),
    ],
)
def test_import_refuses_bad_gpt2_config_values(tmp_path, ws, change, message):
    src = _hf_dir(tmp_path / "gpt")
    _edit_config(src, **change)
    with pytest.raises(LmforgeError, match=message) as info:
        hf_import.import_checkpoint(ws, src, name="x")
    assert "config.json" in info.value.message and "\n" not in info.value.message
    assert not ws.runs_dir.exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_key_value_heads": 2.7}, "num_key_value_heads must be an integer, got 2.7"),
        ({"num_key_value_heads": "2"}, "num_key_value_heads must be an integer"),
        ({"num_hidden_layers": 10_000_000}, "num_hidden_layers must be between 1 and 1,024"),
        ({"final_logit_softcapping": -5.0}, "final_logit_softcapping must be >= 0"),
        ({"final_logit_softcapping": "15"}, "final_logit_softcapping must be a finite number"),
        ({"rms_norm_eps": None, "rope_parameters": [1]}, "rope_parameters must be an object"),
        ({"num_attention_heads": 0}, "num_attention_heads must be between 1"),
        ({"attention_bias": "no"}, "attention_bias must be true or false"),
    ],
)
def test_import_refuses_bad_nanochat_config_values(tmp_path, ws, change, message):
    src = _hf_dir(tmp_path / "nc", arch="modern", bias=False, qk_norm=True)
    _edit_config(src, **change)
    with pytest.raises(LmforgeError, match=message) as info:
        hf_import.import_checkpoint(ws, src, name="x")
    assert "config.json" in info.value.message and "--logit-softcap" not in info.value.message


def test_absurd_config_fails_at_once_from_the_cli(tmp_path, cli):
    import time

    src = _hf_dir(tmp_path / "gpt")
    _edit_config(src, n_layer=10_000_000)
    start = time.perf_counter()
    r = cli("ckpt", "import", str(src), "--as", "x")
    assert time.perf_counter() - start < 5
    assert r.exit_code == 2 and "n_layer must be between 1 and 1,024" in r.stderr
    assert "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- shard index (item 13)


@pytest.mark.parametrize(
    "index, message",
    [
        ([1, 2], "weight_map must be an object"),
        ({"weight_map": ["model-1.safetensors"]}, "weight_map must be an object"),
        ({"weight_map": {"transformer.wte.weight": None}}, "must be a shard file name, got null"),
        ({"weight_map": {"transformer.wte.weight": ["a"]}}, "must be a shard file name"),
        ({"weight_map": {"transformer.wte.weight": ".."}}, "is not a plain file name"),
    ],
)
def test_import_refuses_a_bad_shard_index(tmp_path, ws, index, message):
    src = _hf_dir(tmp_path / "gpt")
    (src / "model.safetensors").rename(src / "model-1.safetensors")
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(LmforgeError, match=message):
        hf_import.import_checkpoint(ws, src, name="x")
