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
from lmforge.errors import UsageError
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
