"""Muon for the block matrices, AdamW for the rest: the groups, their lrs, the momentum warmup,
the optimizer state round trip, and the WSD schedule."""

from __future__ import annotations

import pytest
import torch

from lmforge.config import ModelConfig, OptimizerConfig
from lmforge.model import build_model
from lmforge.train.optim import MuonAdamW, build_optimizer, param_groups
from lmforge.train.schedule import WSDSchedule, build_schedule

CPU = torch.device("cpu")


def _modern(**kw):
    base = dict(vocab_size=97, block_size=16, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
    kw = {"arch": "modern", "bias": False, "qk_norm": True, "logit_softcap": 15.0, **kw}
    return build_model(ModelConfig(**base, **kw))


def _names(model, group):
    names = {id(p): n for n, p in model.named_parameters()}
    return sorted(names[id(p)] for p in group["params"])


def test_muon_holds_exactly_the_2d_block_matrices():
    model = _modern(n_kv_head=2)
    config = OptimizerConfig(optimizer="muon", lr=0.02, embed_lr=0.2, head_lr=0.004, min_lr=0.0)
    groups, counts = param_groups(model, 0.0, config)
    assert [(g["name"], g["optimizer"], g["lr_scale"]) for g in groups] == [
        ("muon matrices", "muon", 1.0),
        ("adamw head", "adamw", pytest.approx(0.2)),
        ("adamw embeddings and vectors", "adamw", pytest.approx(10.0)),
    ]
    muon, head, embed = (_names(model, g) for g in groups)
    assert muon == sorted(
        f"transformer.h.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.c_q", "attn.c_k", "attn.c_v", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    )
    assert head == ["lm_head.weight"] and embed == ["transformer.wte.weight"]
    assert dict(counts.groups)["muon matrices"] == sum(p.numel() for g in groups[:1] for p in g["params"])

    opt, _ = build_optimizer(model, config, CPU)
    assert isinstance(opt, MuonAdamW) and isinstance(opt.muon, torch.optim.Muon)
    assert isinstance(opt.adamw, torch.optim.AdamW)
    assert len(opt.param_groups) == 3


def test_gpt2_adamw_groups_are_unchanged():
    model = build_model(ModelConfig(vocab_size=97, block_size=16, n_layer=1, n_head=2, n_embd=16))
    groups, _ = param_groups(model, 0.1)
    assert [(g["weight_decay"], g["lr_scale"]) for g in groups] == [(0.1, 1.0), (0.0, 1.0)]
    # GPT-2 with Muon: the tied embedding/head stays on AdamW, biases and LayerNorms too
    groups, _ = param_groups(model, 0.1, OptimizerConfig(optimizer="muon"))
    assert [g["name"] for g in groups] == ["muon matrices", "adamw embeddings and vectors"]
    assert "transformer.wte.weight" in _names(model, groups[1])


def test_momentum_warmup_and_state_round_trip():
    torch.manual_seed(0)
    model = _modern()
    config = OptimizerConfig(optimizer="muon", lr=0.02, muon_momentum_warmup=4, min_lr=0.0)
    opt, _ = build_optimizer(model, config, CPU)
    seen = []
    x = torch.randint(0, 97, (2, 16))
    for _ in range(3):
        _, loss = model(x, x)
        loss.backward()
        opt.step()
        seen.append(opt.muon.param_groups[0]["momentum"])
        opt.zero_grad()
    assert seen == pytest.approx([0.85, 0.875, 0.9])
    state = opt.state_dict()
    again, _ = build_optimizer(_modern(), config, CPU)
    again.load_state_dict(state)
    assert again.updates == 3 and again.current_momentum() == pytest.approx(0.925)
    with pytest.raises(Exception, match="AdamW's, not Muon"):
        again.load_state_dict(opt.adamw.state_dict())


def test_wsd_schedule_shape():
    s = WSDSchedule(lr=1.0, min_lr=0.1, warmup_steps=2, total_steps=20, decay_fraction=0.25)
    assert [s(i) for i in range(2)] == [0.5, 1.0]
    assert s.decay_start == 15 and s(14) == 1.0 and s(15) == 1.0
    assert s(19) == pytest.approx(1.0 + 0.8 * (0.1 - 1.0))
    assert s(20) == 0.1
    # more steps before the decay began: the same lr for every step taken so far
    longer = WSDSchedule(1.0, 0.1, 2, 40, 0.25)
    assert [longer(i) for i in range(15)] == [s(i) for i in range(15)]
    assert longer.resume_warning(s.state_dict(), 10) is None
    assert "decay had begun" in longer.resume_warning(s.state_dict(), 17)
    assert isinstance(build_schedule(OptimizerConfig(schedule="wsd"), 10), WSDSchedule)
