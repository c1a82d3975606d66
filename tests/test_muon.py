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


def _muon_pair(ns_dtype):
    """torch.optim.Muon and lmforge's MuonNS over two copies of the same modern model."""
    torch.manual_seed(0)
    config = OptimizerConfig(optimizer="muon", lr=0.02, weight_decay=0.1, min_lr=0.0, muon_momentum_warmup=0)
    theirs_model, ours_model = _modern(), _modern()
    ours_model.load_state_dict(theirs_model.state_dict())
    for model in (theirs_model, ours_model):  # a non-zero start: the zero-init projections too
        for p in model.parameters():
            p.data.normal_(0, 0.02, generator=torch.Generator().manual_seed(p.numel()))
    start = [p.detach().clone() for p in theirs_model.parameters()]
    theirs, _ = build_optimizer(theirs_model, config, CPU)
    ours, _ = build_optimizer(ours_model, config, CPU, ns_dtype=ns_dtype)
    x = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(1))
    for model, opt in ((theirs_model, theirs), (ours_model, ours)):
        for _ in range(3):
            model(x, x)[1].backward()
            opt.step()
            opt.zero_grad()
    return (theirs_model, theirs), (ours_model, ours), start


def test_muon_ns_in_bf16_is_torch_muon_bit_for_bit():
    from lmforge.train.optim import _muon_with_ns_dtype

    def trained(make):
        model = _modern()
        for p in model.parameters():
            p.data.normal_(0, 0.02, generator=torch.Generator().manual_seed(p.numel()))
        matrices = param_groups(model, 0.1, OptimizerConfig(optimizer="muon"))[0][0]["params"]
        opt = make([{"params": matrices, "weight_decay": 0.1}])
        for step in range(3):
            for p in matrices:
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step + p.numel()))
            opt.step()
        return matrices, opt

    ref, ref_opt = trained(lambda g: torch.optim.Muon(g, lr=0.02, momentum=0.95))
    mine, my_opt = trained(
        lambda g: _muon_with_ns_dtype(torch.optim.Muon)(g, lr=0.02, momentum=0.95, ns_dtype=torch.bfloat16)
    )
    for a, b in zip(ref, mine, strict=True):  # the same weights and momentum buffers, bit for bit
        assert torch.equal(a, b)
        assert torch.equal(ref_opt.state[a]["momentum_buffer"], my_opt.state[b]["momentum_buffer"])


def test_muon_ns_in_fp32_is_close_to_torch_and_shares_its_state():
    (theirs_model, theirs), (ours_model, ours), start = _muon_pair(torch.float32)
    assert type(theirs.muon) is torch.optim.Muon and type(ours.muon).__name__ == "MuonNS"
    params = zip(theirs_model.named_parameters(), ours_model.parameters(), start, strict=True)
    for (name, a), b, a0 in params:
        # bf16 against fp32 orthogonalisation: three steps of training end within 10%
        assert (a - b).norm() <= 0.1 * (a - a0).norm(), name
    # a checkpoint moves between the two (a run resumed on a CPU with or without bf16)
    theirs.load_state_dict(ours.state_dict())
    ours.load_state_dict(theirs.state_dict())
    assert ours.updates == theirs.updates == 3


def test_orthogonalise_pushes_singular_values_toward_one():
    from lmforge.train.optim import orthogonalise

    spread = torch.diag(torch.logspace(-2, 1, 16))  # singular values over three decades
    g = torch.randn(64, 16, generator=torch.Generator().manual_seed(0)) @ spread
    out = orthogonalise(g, (3.4445, -4.7750, 2.0315), 5, 1e-7, torch.float32)
    assert out.shape == g.shape and out.dtype == torch.float32
    s = torch.linalg.svdvals(out)
    assert s.max() < 1.3 and s.max() / s.min() < 5  # ... brought within a factor of a few of 1
    in_bf16 = orthogonalise(g, (3.4445, -4.7750, 2.0315), 5, 1e-7, torch.bfloat16)
    assert in_bf16.dtype == torch.bfloat16 and (in_bf16.float() - out).norm() < 0.05 * out.norm()


def test_newton_schulz_runs_in_fp32_on_a_cpu_without_fast_bf16(monkeypatch, tmp_path):
    import lmforge.device as device

    monkeypatch.setattr(device, "_SPEEDUPS", {})
    old = "model name : Old CPU\nflags : fpu sse avx2\n"
    monkeypatch.setattr(device, "_read_cpuinfo", lambda: old)
    assert device.newton_schulz_dtype(CPU, tmp_path) == torch.float32  # no bf16 instructions
    for speedup, expected in ((2.4, torch.bfloat16), (0.9, torch.float32)):  # flags, then measured
        new = f"model name : CPU {speedup}\nflags : avx2 avx512_bf16\n"
        monkeypatch.setattr(device, "_read_cpuinfo", lambda new=new: new)
        device.cpu_bf16(new, measure=lambda speedup=speedup: speedup, cache_dir=tmp_path)  # cached
        assert device.newton_schulz_dtype(CPU, tmp_path) == expected
    assert device.newton_schulz_dtype(torch.device("meta")) == torch.bfloat16  # not a CPU: torch's
