"""The learning-rate schedule and the AdamW parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.config import ModelConfig, OptimizerConfig
from lmforge.model.gpt import GPT
from lmforge.train.optim import build_optimizer, param_groups
from lmforge.train.schedule import CosineSchedule


def test_warmup_peak_and_end():
    s = CosineSchedule(lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=110)
    assert s(0) == pytest.approx(1e-4)  # the first update already moves
    assert s(4) == pytest.approx(5e-4)
    assert s(9) == pytest.approx(1e-3)  # the last warmup update is at the peak
    assert s(10) == pytest.approx(1e-3)
    assert s(60) == pytest.approx(1e-4 + 0.5 * 9e-4)  # halfway through the decay
    assert s(110) == pytest.approx(1e-4)
    assert s(10_000) == pytest.approx(1e-4)
    decay = [s(i) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))


def test_no_warmup_and_constant():
    assert CosineSchedule(1e-3, 1e-4, 0, 100)(0) == pytest.approx(1e-3)
    flat = CosineSchedule(1e-3, 1e-3, 5, 50)
    assert {round(flat(i), 12) for i in range(5, 80)} == {1e-3}
    assert math.isclose(CosineSchedule(1e-3, 0.0, 10, 10)(10), 0.0)


def test_param_groups_decay_only_matrices():
    model = GPT(ModelConfig(vocab_size=257, block_size=16, n_layer=2, n_head=2, n_embd=16))
    groups, counts = param_groups(model, weight_decay=0.1)
    decay, no_decay = groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed == {
        f"transformer.h.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"} <= not_decayed
    assert all(n.endswith(".bias") or "ln" in n or "wte" in n or "wpe" in n for n in not_decayed)
    # the tied head is the embedding: counted once, every parameter in exactly one group
    total = sum(p.numel() for p in model.parameters())
    assert counts.decay_params + counts.no_decay_params == total
    assert counts.decay_tensors == 8 and counts.no_decay_tensors == len(not_decayed)


def test_optimizer_is_adamw_with_config_values():
    model = GPT(ModelConfig(vocab_size=257, block_size=16, n_layer=1, n_head=2, n_embd=16))
    opt, _ = build_optimizer(
        model, OptimizerConfig(lr=1e-3, beta2=0.99, weight_decay=0.05), torch.device("cpu")
    )
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["betas"] == (0.9, 0.99)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]


def test_resume_warnings_name_the_saved_schedule_and_any_change():
    from lmforge.train.schedule import WSDSchedule

    wsd = WSDSchedule(1e-3, 1e-4, 2, 32, 0.25)
    cosine = CosineSchedule(1e-3, 1e-4, 2, 32)
    # another schedule at the same --steps: the past changed, and the message names the saved one
    message = cosine.resume_warning(wsd.state_dict(), 10)
    assert message.startswith("the run was trained on wsd (") and "on cosine (" in message
    assert "other learning rates" in message
    assert "trained on wsd" in CosineSchedule(1e-3, 1e-4, 2, 64).resume_warning(wsd.state_dict(), 10)
    # only the decay fraction, before the decay: the steps to come change
    later = WSDSchedule(1e-3, 1e-4, 2, 32, 0.5).resume_warning(wsd.state_dict(), 10)
    assert "the learning rates change from step 18 on" in later
    assert wsd.resume_warning(wsd.state_dict(), 10) is None and cosine.resume_warning(None, 10) is None
