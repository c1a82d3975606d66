import json

import pytest
import torch

from lmforge.checkpoint.store import save_checkpoint
from lmforge.config import ModelConfig, TrainingConfig
from lmforge.errors import CheckpointError, NotFoundError
from lmforge.model.gpt import GPT
from lmforge.runs.names import resolve_checkpoint, resolve_run
from lmforge.workspace import Workspace


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=257, block_size=16, n_layer=1, n_head=1, n_embd=8, dropout=0.0))


def make_run(ws: Workspace, name: str, started_at: str, checkpoints: dict[str, int], model) -> None:
    run_dir = ws.run_dir(name)
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(
        json.dumps({"name": name, "started_at": started_at, "status": "finished"})
    )
    config = TrainingConfig(preset="tiny", tokenizer="bytes").to_dict()
    for ckpt, step in checkpoints.items():
        meta = {
            "kind": "best" if ckpt == "best" else "light",
            "run": name,
            "step": step,
            "tokens": step * 10,
            "val_loss": 1.0,
            "config": config,
            "tokenizer": {"name": "bytes"},
            "dataset": "d",
        }
        save_checkpoint(run_dir / "checkpoints" / ckpt, model, meta)


@pytest.fixture
def ws(tmp_path, tiny_model):
    ws = Workspace.resolve(tmp_path / "ws")
    # "old" started first but sorts after "new" by name: the order must come from run.json
    make_run(ws, "zz-old", "2024-01-01T00:00:00+00:00", {"step-100": 100, "best": 100}, tiny_model)
    make_run(
        ws, "aa-new", "2024-06-01T00:00:00+00:00", {"step-100": 100, "step-200": 200, "best": 150}, tiny_model
    )
    make_run(ws, "no-best", "2023-01-01T00:00:00+00:00", {"step-50": 50, "step-300": 300}, tiny_model)
    make_run(ws, "best-newest", "2022-01-01T00:00:00+00:00", {"step-10": 10, "best": 20}, tiny_model)
    # started last, but nothing to evaluate yet: skipped by best/latest
    ws.run_dir("just-started").mkdir()
    (ws.run_dir("just-started") / "run.json").write_text(
        json.dumps({"started_at": "2025-01-01T00:00:00+00:00"})
    )
    return ws


def ckpt(ws, run, name):
    return ws.run_dir(run) / "checkpoints" / name


@pytest.mark.parametrize(
    "spec,run,name",
    [
        ("best", "aa-new", "best"),
        ("latest", "aa-new", "step-200"),
        ("zz-old", "zz-old", "best"),
        ("zz-old:best", "zz-old", "best"),
        ("zz-old:latest", "zz-old", "step-100"),  # tie: the periodic one
        ("aa-new:step-100", "aa-new", "step-100"),
        ("no-best", "no-best", "step-300"),  # RUN without a best: its latest
        ("best-newest:latest", "best-newest", "best"),
        ("latest:step-100", "aa-new", "step-100"),
    ],
)
def test_names(ws, spec, run, name):
    assert resolve_checkpoint(ws, spec) == ckpt(ws, run, name)


def test_paths(ws, monkeypatch):
    path = ckpt(ws, "zz-old", "step-100")
    assert resolve_checkpoint(ws, str(path)) == path.resolve()
    assert resolve_checkpoint(ws, str(ws.run_dir("aa-new"))) == ckpt(ws, "aa-new", "best").resolve()
    monkeypatch.chdir(ws.run_dir("zz-old") / "checkpoints")
    assert resolve_checkpoint(ws, "./step-100") == path.resolve()


def test_unknown_names_list_what_exists(ws):
    with pytest.raises(NotFoundError, match="unknown checkpoint 'nope'") as info:
        resolve_checkpoint(ws, "nope")
    assert "aa-new" in info.value.hint and "RUN:step-N" in info.value.hint
    assert info.value.exit_code == 2
    with pytest.raises(NotFoundError, match="no checkpoint 'step-999'") as info:
        resolve_checkpoint(ws, "aa-new:step-999")
    assert "step-100" in info.value.hint and "step-200" in info.value.hint
    with pytest.raises(NotFoundError, match="no best checkpoint yet"):
        resolve_checkpoint(ws, "no-best:best")
    with pytest.raises(NotFoundError, match="has no complete checkpoints"):
        resolve_checkpoint(ws, "just-started")
    with pytest.raises(NotFoundError, match="does not exist"):
        resolve_checkpoint(ws, "/no/such/dir")


def test_incomplete_checkpoint_directory(ws):
    broken = ws.run_dir("zz-old") / "checkpoints" / "step-900"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="incomplete"):
        resolve_checkpoint(ws, str(broken))
    with pytest.raises(NotFoundError):  # never listed, so not a name either
        resolve_checkpoint(ws, "zz-old:step-900")


def test_empty_workspace(tmp_path):
    ws = Workspace.resolve(tmp_path / "empty")
    for spec in ("best", "latest", "some-run"):
        with pytest.raises(NotFoundError, match="no runs"):
            resolve_checkpoint(ws, spec)


def test_resolve_run(ws):
    assert resolve_run(ws, "latest") == ws.run_dir("just-started")
    assert resolve_run(ws, "zz-old") == ws.run_dir("zz-old")
    with pytest.raises(NotFoundError, match="unknown run 'x'") as info:
        resolve_run(ws, "x")
    assert "zz-old" in info.value.hint
