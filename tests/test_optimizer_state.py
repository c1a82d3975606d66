"""The optimizer state in ``trainer.pt`` (``lmforge.train.state``): format 2 keyed by parameter
name through torch's distributed-checkpoint helpers; format 1 (torch.optim's integer ids, what
earlier lmforge wrote) still loads, and a run resumed from such a checkpoint trains on exactly as
the uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge import TrainingManager
from lmforge.checkpoint import store as ckpt
from lmforge.config import ModelConfig, OptimizerConfig
from lmforge.errors import CheckpointError
from lmforge.model import build_model
from lmforge.observe.reporting import Reporter
from lmforge.train.optim import build_optimizer
from lmforge.train.state import OPTIMIZER_FORMAT, load_optimizer_state, optimizer_state

CPU = torch.device("cpu")
CFG = ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


def _trained(optimizer_name: str, arch: str = "gpt2"):
    torch.manual_seed(0)
    cfg = CFG if arch == "gpt2" else ModelConfig(**{**CFG.__dict__, "arch": "modern", "bias": False})
    model = build_model(cfg)
    config = OptimizerConfig(optimizer=optimizer_name)
    optimizer, _ = build_optimizer(model, config, CPU, torch.float32)
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        x = torch.randint(0, 64, (2, 16), generator=g)
        _, loss = model(x, x.roll(-1, 1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer, config


def _tensors(optimizer):
    out = {}
    for part in (optimizer.muon, optimizer.adamw) if hasattr(optimizer, "muon") else (optimizer,):
        for group in part.param_groups:
            for p in group["params"]:
                for name, t in part.state[p].items():
                    out[(id(p), name)] = t
    return out


@pytest.mark.parametrize("optimizer_name", ["adamw", "muon"])
def test_both_formats_load_to_the_same_state(optimizer_name):
    if optimizer_name == "muon" and not hasattr(torch.optim, "Muon"):
        pytest.skip("torch.optim.Muon needs PyTorch 2.9")
    arch = "modern" if optimizer_name == "muon" else "gpt2"
    model, optimizer, config = _trained(optimizer_name, arch)
    new = optimizer_state(model, optimizer)
    assert new["format_version"] == OPTIMIZER_FORMAT
    by_name = new["muon"] if optimizer_name == "muon" else new
    assert any(name.startswith("transformer.h.0.") for name in by_name["state"])  # keyed by name
    old = optimizer.state_dict()  # format 1: what earlier lmforge saved
    assert "format_version" not in old
    for saved in (new, old):
        fresh, _ = build_optimizer(model, config, CPU, torch.float32)
        load_optimizer_state(model, fresh, saved)
        want, got = _tensors(optimizer), _tensors(fresh)
        assert want.keys() == got.keys() and want
        for key in want:
            assert torch.equal(want[key], got[key]), key
        if optimizer_name == "muon":
            assert fresh.updates == optimizer.updates == 2


def test_a_newer_format_is_refused():
    model, optimizer, config = _trained("adamw")
    state = optimizer_state(model, optimizer) | {"format_version": OPTIMIZER_FORMAT + 1}
    with pytest.raises(CheckpointError, match="newer than this lmforge reads"):
        load_optimizer_state(model, build_optimizer(model, config, CPU)[0], state)


def test_a_checkpoint_before_the_first_update_leaves_the_optimizer_new():
    torch.manual_seed(0)
    model = build_model(CFG)
    optimizer, _ = build_optimizer(model, OptimizerConfig(), CPU)
    assert optimizer_state(model, optimizer) == {"format_version": OPTIMIZER_FORMAT}
    assert not optimizer.state  # saving made no state (torch would step once with zero gradients)
    load_optimizer_state(model, optimizer, {"format_version": OPTIMIZER_FORMAT})
    assert not optimizer.state


def test_a_format_1_checkpoint_resumes_exactly(train_workspace, tiny_train_config):
    def config(run):
        return tiny_train_config(steps=6, full_interval=3, eval_interval=100, sample_tokens=0, run=run)

    TrainingManager(config("straight"), train_workspace, reporter=Reporter()).train()
    first = TrainingManager(config("old"), train_workspace, reporter=Reporter())
    first.train()
    # step-3's optimizer state rewritten as earlier lmforge wrote it (integer ids), step-6 removed
    run_dir = train_workspace / "runs" / "old"
    path = run_dir / "checkpoints" / "step-3"
    state = torch.load(path / "trainer.pt", weights_only=True)
    assert state["optimizer"]["format_version"] == OPTIMIZER_FORMAT
    load_optimizer_state(first.model, first.optimizer, state["optimizer"])
    state["optimizer"] = first.optimizer.state_dict()
    torch.save(state, path / "trainer.pt")
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps(meta | ckpt.file_records(path)))
    import shutil

    shutil.rmtree(run_dir / "checkpoints" / "step-6")

    result = TrainingManager(None, train_workspace, resume="old", reporter=Reporter()).train()
    assert result.step == 6
    resumed = ckpt.load_state_dict(run_dir / "checkpoints" / "step-6")
    straight = ckpt.load_state_dict(train_workspace / "runs" / "straight" / "checkpoints" / "step-6")
    for key, value in straight.items():
        assert torch.equal(resumed[key], value), key  # bitwise the uninterrupted run's weights
