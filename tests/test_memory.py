"""The training step's memory, estimated before the model exists (``lmforge.train.memory``):
the dry run counts activations, and a run that cannot fit is refused before it allocates."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.config import TrainingConfig
from lmforge.errors import LmforgeError
from lmforge.train import memory
from lmforge.train.memory import check_fits, step_memory

GiB = 2**30


def _config(**model) -> TrainingConfig:
    config = TrainingConfig()
    for key, value in model.items():
        setattr(config.model, key, value)
    return config


def test_activations_grow_with_the_context_and_checkpointing_cuts_them():
    base = step_memory(_config(), "bf16", device_type="cuda")
    long = step_memory(_config(block_size=100_000), "bf16", device_type="cuda")
    # gpt2 at batch 4 x 100,000 tokens: ~34 bytes x 768 x 12 blocks per token at 16 bits
    assert long.activations > 100 * GiB > 2 * base.total
    assert long.activations == pytest.approx(base.activations * 100_000 / 1024, rel=0.05)
    ckpt = step_memory(_config(block_size=100_000, gradient_checkpointing=True), "bf16", device_type="cuda")
    assert ckpt.activations < long.activations / 5
    assert step_memory(_config(), "fp32", device_type="cuda").activations > 1.9 * base.activations


def test_sharding_divides_the_training_state():
    one = step_memory(_config(), "fp32")
    four = step_memory(_config(), "fp32", world_size=4, sharded=True)
    assert four.state == pytest.approx(one.state / 4, rel=1e-6) and four.activations == one.activations


def test_a_run_that_cannot_fit_is_refused_naming_the_flag(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 16 * GiB)
    cpu = torch.device("cpu")
    with pytest.raises(LmforgeError) as info:
        check_fits(_config(block_size=100_000), cpu, "fp32")
    assert "does not fit" in info.value.message and "--block-size 100000" in info.value.message
    assert "16.0 GiB free" in info.value.message and "--block-size" in info.value.hint
    with pytest.raises(LmforgeError) as info:
        check_fits(_config(vocab_size=10**11), cpu, "fp32")
    assert info.value.hint == "lower --vocab-size"
    # two processes on one machine share its RAM
    fits = check_fits(_config(), cpu, "fp32")
    with pytest.raises(LmforgeError, match="per process"):
        check_fits(_config(), cpu, "fp32", local_processes=int(16 * GiB // fits.total) + 1)


def test_available_memory_is_known_here():
    free = memory.available_bytes(torch.device("cpu"))
    assert free is None or free > 0


def test_trainer_refuses_a_huge_vocabulary_before_allocating(train_workspace, tiny_train_config):
    from lmforge import TrainingManager
    from lmforge.observe.reporting import Reporter

    config = tiny_train_config(vocab_size=10**11)
    with pytest.raises(LmforgeError) as info:
        TrainingManager(config, train_workspace, reporter=Reporter())
    assert "does not fit" in info.value.message and info.value.hint == "lower --vocab-size"


def test_dry_run_counts_activations(cli):
    out = cli("train", "--preset", "gpt2", "--block-size", "100000", "--dry-run", "--json")
    assert out.exit_code == 0, out.stderr
    m = json.loads(out.stdout)["memory_bytes"]
    assert m["total"] < 4 * GiB  # weights, gradients and AdamW: what the dry run said before
    assert m["activations"] > 100 * GiB
    assert m["step"] == m["total"] + m["activations"] + m["loss"]  # fp32: no autocast copies
    table = cli("train", "--preset", "gpt2", "--dry-run")
    assert "memory: training step (per process)" in table.stdout
