"""Checkpoint directories: round trip, atomic saves, refusing unsafe pickles, listing and pruning."""

from __future__ import annotations

import errno
import json
import pickle

import pytest
import torch

from lmforge.checkpoint import store as ckpt
from lmforge.checkpoint.listing import CheckpointInfo, list_checkpoints
from lmforge.checkpoint.prune import prunable
from lmforge.config import ModelConfig, TrainingConfig
from lmforge.errors import CheckpointError
from lmforge.model.gpt import GPT


def _model(seed=0):
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=257, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0))


def _meta(model, kind="light", step=10, val_loss=None):
    config = TrainingConfig(preset="tiny", run="r", tokenizer="bytes", model=model.config)
    return {
        "kind": kind,
        "run": "r",
        "step": step,
        "tokens": step * 64,
        "val_loss": val_loss,
        "config": config.to_dict(),
        "tokenizer": {"name": "bytes", "sha256": "x"},
        "dataset": "wikitext-2",
    }


def _state(step=10):
    return {
        "step": step,
        "optimizer": {"state": {}, "param_groups": []},
        "rng": {"torch": torch.get_rng_state()},
    }


def test_round_trip(tmp_path):
    model = _model()
    path = ckpt.save_checkpoint(tmp_path / "checkpoints" / "step-10", model, _meta(model, "full"), _state())
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "model.safetensors", "trainer.pt"]
    meta = ckpt.read_meta(path)
    assert meta["format_version"] == 1 and meta["kind"] == "full" and meta["step"] == 10
    assert meta["files"]["model.safetensors"] == (path / "model.safetensors").stat().st_size
    loaded, config, _ = ckpt.load_model(path)
    assert config.model == model.config and not loaded.training
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # re-tied
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    state = ckpt.load_trainer_state(path)
    assert state["step"] == 10 and torch.equal(state["rng"]["torch"], torch.get_rng_state())


def test_light_checkpoint_has_no_trainer_state(tmp_path):
    model = _model()
    path = ckpt.save_checkpoint(tmp_path / "step-5", model, _meta(model))
    assert not (path / "trainer.pt").exists()
    with pytest.raises(CheckpointError, match="without training state"):
        ckpt.load_trainer_state(path)


def test_crash_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    old, new = _model(0), _model(1)
    target = tmp_path / "checkpoints" / "best"
    ckpt.save_checkpoint(target, old, _meta(old, "best", step=10, val_loss=3.0))
    before = (target / "model.safetensors").read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        ckpt.save_checkpoint(target, new, _meta(new, "best", step=20), _state(20))
    # the old one is untouched, and nothing else looks like a checkpoint
    assert (target / "model.safetensors").read_bytes() == before
    assert ckpt.read_meta(target)["step"] == 10
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["best"]
    assert [c.name for c in list_checkpoints(tmp_path)] == ["best"]


def test_full_disk_is_a_clear_error(tmp_path, monkeypatch):
    model = _model()
    target = tmp_path / "checkpoints" / "step-10"
    ckpt.save_checkpoint(target, model, _meta(model, "full"), _state())

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(CheckpointError, match="disk is full") as info:
        ckpt.save_checkpoint(target, model, _meta(model, "full", step=10), _state())
    assert "previous checkpoint is intact" in info.value.hint
    assert ckpt.read_meta(target)["step"] == 10
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-10"]


def test_incomplete_directory_is_never_loaded_or_listed(tmp_path):
    model = _model()
    good = ckpt.save_checkpoint(tmp_path / "checkpoints" / "step-10", model, _meta(model))
    half = tmp_path / "checkpoints" / "step-20"
    half.mkdir()
    (half / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="incomplete"):
        ckpt.load_model(half)
    assert [c.name for c in list_checkpoints(tmp_path)] == ["step-10"]


def test_truncated_weights_are_reported(tmp_path):
    model = _model()
    path = ckpt.save_checkpoint(tmp_path / "step-10", model, _meta(model))
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        ckpt.load_model(path)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_trainer_state_is_refused(tmp_path):
    model = _model()
    path = ckpt.save_checkpoint(tmp_path / "step-10", model, _meta(model, "full"), _state())
    with open(path / "trainer.pt", "wb") as fh:
        pickle.dump({"step": 10, "payload": _Exploit()}, fh, protocol=2)
    meta = json.loads((path / "meta.json").read_text())
    meta["files"]["trainer.pt"] = (path / "trainer.pt").stat().st_size
    meta["sha256"]["trainer.pt"] = ckpt.sha256_file(path / "trainer.pt")  # a tamperer updates it too
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="refusing to load"):
        ckpt.load_trainer_state(path)


def _info(name, kind, step):
    return CheckpointInfo(
        path=__import__("pathlib").Path(name),
        run="r",
        name=name,
        kind=kind,
        step=step,
        tokens=0,
        val_loss=None,
        size_bytes=1,
        created_at="",
    )


def test_prune_policy_keeps_best_and_newest_full():
    cps = [
        _info("step-100", "full", 100),
        _info("step-200", "light", 200),
        _info("step-300", "light", 300),
        _info("step-400", "light", 400),
        _info("best", "best", 150),
    ]
    assert [c.name for c in prunable(cps, keep_last=2)] == ["step-200"]
    assert [c.name for c in prunable(cps, keep_last=1)] == ["step-200", "step-300"]
    cps.append(_info("step-500", "full", 500))
    assert [c.name for c in prunable(cps, keep_last=2)] == ["step-100", "step-200", "step-300"]


def test_prune_in_a_run_leaves_fresh_temporary_dirs(tmp_path):
    model = _model()
    for step, kind in ((10, "full"), (20, "light"), (30, "light")):
        ckpt.save_checkpoint(tmp_path / "checkpoints" / f"step-{step}", model, _meta(model, kind, step), None)
    (tmp_path / "checkpoints" / ".tmp-step-40-abcd").mkdir()
    names = [c.name for c in prunable(list_checkpoints(tmp_path), keep_last=1)]
    assert names == ["step-20"]
