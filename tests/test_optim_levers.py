"""The Muon levers of issue 26: cautious weight decay, Polar Express coefficients and NorMuon.
Each one's numerics on hand-made or random tensors, torch.optim.Muon kept where all are off,
NorMuon's state in the checkpoint, the config (refusals, TOML, --dry-run) and an exact resume."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from resume_helpers import assert_same_curves, resume_to_end, train_until

from lmforge import TrainingManager
from lmforge.config import ModelConfig, OptimizerConfig, TrainingConfig
from lmforge.errors import ConfigError
from lmforge.model import build_model
from lmforge.observe.reporting import Reporter
from lmforge.presets import resolve_config
from lmforge.train.optim import (
    MUON_LEVERS_OFF,
    NORMUON_BETA2,
    NORMUON_EPS,
    POLAR_EXPRESS_COEFFICIENTS,
    _muon_with_ns_dtype,
    build_optimizer,
    cautious_decay_,
    newton_schulz,
    normuon_normalise,
    orthogonalise,
)

CPU = torch.device("cpu")
MUON_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's
LEVERS_ON = {"cautious_wd": True, "ns_coefficients": "polar-express", "normuon": True}


def test_cautious_decay_only_where_update_and_weight_share_a_sign():
    p = torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, 6.0]])
    update = torch.tensor([[0.5, 0.5, -1.0], [-1.0, 0.0, 2.0]])
    cautious_decay_(p, update, 0.1)
    # same sign: decayed by 10%; opposite sign or a zero update: untouched
    assert torch.equal(p, torch.tensor([[0.9, -2.0, 3.0], [-3.6, 5.0, 5.4]]))


def test_polar_express_gets_singular_values_closer_to_one_than_muon_in_five_steps():
    g = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    assert len(POLAR_EXPRESS_COEFFICIENTS) == 5
    muon = torch.linalg.svdvals(orthogonalise(g, MUON_COEFFICIENTS, 5, 1e-7, torch.float32))
    polar = torch.linalg.svdvals(newton_schulz(g, POLAR_EXPRESS_COEFFICIENTS, 1e-7, torch.float32, 0.02))
    muon_error, polar_error = (muon - 1).abs().max(), (polar - 1).abs().max()
    assert muon_error > 0.25  # torch's quintic leaves ~[0.68, 1.1]
    assert polar_error < 0.15 and polar_error < muon_error / 2
    wide = newton_schulz(g.T, POLAR_EXPRESS_COEFFICIENTS, 1e-7, torch.float32, 0.02)
    assert torch.allclose(wide, newton_schulz(g, POLAR_EXPRESS_COEFFICIENTS, 1e-7, torch.float32, 0.02).T)


def test_normuon_evens_the_rows_and_keeps_the_update_norm():
    gen = torch.Generator().manual_seed(0)
    update = torch.randn(8, 16, generator=gen) * torch.logspace(-1, 1, 8).unsqueeze(1)  # rows 100x apart
    second = torch.zeros(8, 1)
    out = normuon_normalise(update, second, NORMUON_BETA2, NORMUON_EPS)
    rms = out.square().mean(dim=1).sqrt()
    assert torch.allclose(rms, rms.mean().expand(8), rtol=1e-5)  # every row the same RMS
    assert out.norm() == pytest.approx(update.norm().item(), rel=1e-6)  # the RMS Muon's lr expects
    assert torch.allclose(second, (1 - NORMUON_BETA2) * update.square().mean(dim=1, keepdim=True))
    # later steps: a running mean, so a row that jumps is only partly evened out
    again = normuon_normalise(update * torch.tensor([[4.0]] + [[1.0]] * 7), second, NORMUON_BETA2, 1e-10)
    rms = again.square().mean(dim=1).sqrt()
    b = NORMUON_BETA2  # row 0's mean square is b (1 - b) m + (1 - b) 16 m, the others' (1 - b) m (b + 1)
    expected = 4 / ((b * (1 - b) + (1 - b) * 16) / ((1 - b) * (1 + b))) ** 0.5
    assert (rms[0] / rms[1:]).tolist() == pytest.approx([expected] * 7, rel=1e-4)
    assert 1.3 < expected < 1.4  # between 4 (no normalising) and 1 (all the way)


def _matrices(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=gen) * 0.02) for shape in ((32, 16), (16, 48))]


def _steps(opt, params, steps, first=0):
    for step in range(first, first + steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step * 100 + p.numel()))
        opt.step()


def _muon_ns(params, **levers):
    return _muon_with_ns_dtype(torch.optim.Muon)(
        [{"params": params, "weight_decay": 0.1}], lr=0.02, momentum=0.95, ns_dtype=torch.bfloat16, **levers
    )


def test_levers_off_is_torch_muon_bit_for_bit_and_each_lever_changes_the_step():
    ref = _matrices()
    _steps(torch.optim.Muon([{"params": ref, "weight_decay": 0.1}], lr=0.02, momentum=0.95), ref, 3)
    off = _matrices()
    _steps(_muon_ns(off, **MUON_LEVERS_OFF), off, 3)
    assert all(torch.equal(a, b) for a, b in zip(ref, off, strict=True))
    for lever, value in (
        ("cautious_wd", True),
        ("ns_coefficients_schedule", "polar-express"),
        ("normuon", True),
    ):
        on = _matrices()
        _steps(_muon_ns(on, **{**MUON_LEVERS_OFF, lever: value}), on, 3)
        assert not torch.equal(on[0], ref[0]), lever


def test_cautious_wd_in_the_muon_step_decays_only_the_agreeing_entries():
    start = _matrices()
    results = {}
    for name, wd, cautious in (("none", 0.0, False), ("plain", 0.1, False), ("cautious", 0.1, True)):
        params = [torch.nn.Parameter(p.detach().clone()) for p in start]
        opt = _muon_with_ns_dtype(torch.optim.Muon)(
            [{"params": params, "weight_decay": wd}],
            lr=0.02,
            momentum=0.95,
            ns_dtype=torch.float32,
            cautious_wd=cautious,
        )
        _steps(opt, params, 1)
        results[name] = params
    for p0, none, plain, cautious in zip(start, *results.values(), strict=True):
        update = p0 - none  # the step without decay: lr * the orthogonalised update
        agree = (update * p0) > 0
        assert 0 < agree.sum() < agree.numel()
        assert torch.allclose(cautious[agree], plain[agree]) and torch.equal(cautious[~agree], none[~agree])


def test_build_optimizer_keeps_torch_muon_unless_a_lever_is_on():
    model = build_model(
        ModelConfig(vocab_size=97, block_size=16, n_layer=1, n_head=2, n_embd=16, arch="modern", bias=False)
    )
    opt, _ = build_optimizer(model, OptimizerConfig(optimizer="muon"), CPU)
    assert type(opt.muon) is torch.optim.Muon
    for lever, value in LEVERS_ON.items():
        opt, _ = build_optimizer(model, OptimizerConfig(optimizer="muon", **{lever: value}), CPU)
        assert type(opt.muon).__name__ == "MuonNS" and opt.muon.ns_dtype == torch.bfloat16
    opt, _ = build_optimizer(model, OptimizerConfig(optimizer="muon", **LEVERS_ON), CPU, torch.float32)
    assert (opt.muon.ns_coefficients_schedule, opt.muon.normuon, opt.muon.cautious_wd) == (
        "polar-express",
        True,
        True,
    )


def test_normuon_second_moment_is_saved_and_restored():
    levers = {"ns_coefficients_schedule": "polar-express", "normuon": True, "cautious_wd": True}
    straight = _matrices()
    _steps(_muon_ns(straight, **levers), straight, 4)
    first = _matrices()
    opt = _muon_ns(first, **levers)
    _steps(opt, first, 2)
    state = opt.state_dict()
    moments = [s["second_moment"] for s in state["state"].values()]
    assert [m.shape for m in moments] == [(32, 1), (16, 1)] and all(m.abs().sum() > 0 for m in moments)
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in first]
    again = _muon_ns(resumed, **levers)
    again.load_state_dict(state)
    _steps(again, resumed, 2, first=2)
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed, strict=True))


def test_levers_need_muon_with_a_one_line_error():
    for lever, value in LEVERS_ON.items():
        flag = "--" + lever.replace("_", "-")
        with pytest.raises(ConfigError, match=f"{flag} needs --optimizer muon") as e:
            resolve_config(overrides={("optim", lever): value})
        assert "\n" not in e.value.message
    with pytest.raises(ConfigError, match="--normuon needs --optimizer muon"):
        resolve_config(overrides={("recipe",): "gpt2", ("optim", "normuon"): True})
    with pytest.raises(ConfigError, match="ns_coefficients"):
        resolve_config(overrides={("recipe",): "modern", ("optim", "ns_coefficients"): "cubic"})


@pytest.mark.parametrize("on", [True, False])
def test_levers_round_trip_through_toml(tmp_path, on):
    levers = LEVERS_ON if on else {"cautious_wd": False, "ns_coefficients": "muon", "normuon": False}
    c = resolve_config(
        preset="tiny", overrides={("recipe",): "modern", **{("optim", k): v for k, v in levers.items()}}
    )
    path = tmp_path / "levers.toml"
    path.write_text(c.to_toml())
    back = TrainingConfig.from_toml(path)
    assert back == c and {k: getattr(back.optim, k) for k in levers} == levers
    assert resolve_config(path) == c


def test_dry_run_shows_the_levers(cli):
    r = cli("train", "--preset", "tiny", "--recipe", "modern", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    optim = json.loads(r.stdout)["config"]["optim"]
    assert (optim["cautious_wd"], optim["ns_coefficients"], optim["normuon"]) == (False, "muon", False)
    flags = ["--cautious-wd", "--weight-decay", "0.1", "--ns-coefficients", "polar-express", "--normuon"]
    r = cli("train", "--preset", "tiny", "--recipe", "modern", *flags, "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    optim = json.loads(r.stdout)["config"]["optim"]
    assert (optim["cautious_wd"], optim["ns_coefficients"], optim["normuon"]) == (True, "polar-express", True)
    r = cli("train", "--preset", "tiny", "--normuon", "--dry-run")
    assert r.exit_code != 0 and "--normuon needs --optimizer muon" in r.stderr


def test_resume_with_every_lever_on_is_the_straight_run_bitwise(train_workspace, tiny_train_config):
    from lmforge.checkpoint.store import load_trainer_state

    def config(run):
        return tiny_train_config(
            steps=8,
            eval_interval=4,
            sample_tokens=0,
            run=run,
            recipe="modern",
            lr=0.02,
            min_lr=0.0,
            muon_momentum_warmup=4,
            weight_decay=0.1,
            **LEVERS_ON,
        )

    TrainingManager(config("straight"), train_workspace, reporter=Reporter()).train()
    first = train_until(config("halves"), train_workspace, 4)
    assert type(first.optimizer.muon).__name__ == "MuonNS" and first.optimizer.muon.normuon
    saved = TrainingConfig.from_toml(train_workspace / "runs" / "halves" / "config.toml")
    assert {k: getattr(saved.optim, k) for k in LEVERS_ON} == LEVERS_ON
    ckpt = train_workspace / "runs" / "halves" / "checkpoints" / "step-4"
    muon_state = load_trainer_state(ckpt)["optimizer"]["muon"]["state"]
    assert muon_state and all(s["second_moment"].abs().sum() > 0 for s in muon_state.values())
    resume_to_end(train_workspace, "halves")
    assert_same_curves(train_workspace, "halves", "straight")


def test_a_lever_can_be_turned_on_or_off_at_a_resume():
    plain = _matrices()
    torch_muon = torch.optim.Muon([{"params": plain, "weight_decay": 0.1}], lr=0.02, momentum=0.95)
    _steps(torch_muon, plain, 2)
    # torch's checkpoint into NorMuon: the momentum carries over, the second moments start at zero
    on = [torch.nn.Parameter(p.detach().clone()) for p in plain]
    normuon = _muon_ns(on, **{**MUON_LEVERS_OFF, "normuon": True})
    normuon.load_state_dict(torch_muon.state_dict())
    _steps(normuon, on, 1, first=2)
    assert all("second_moment" in normuon.state[p] and "momentum_buffer" in normuon.state[p] for p in on)
    # and back: torch.optim.Muon carries the second moments along unused
    state = normuon.state_dict()
    bare = copy.deepcopy(state)
    for s in bare["state"].values():
        del s["second_moment"]
    stepped = []
    for saved in (state, bare):
        params = [torch.nn.Parameter(p.detach().clone()) for p in on]
        back = torch.optim.Muon([{"params": params, "weight_decay": 0.1}], lr=0.02, momentum=0.95)
        back.load_state_dict(saved)
        _steps(back, params, 1, first=3)
        stepped.append(params)
    assert all(torch.equal(a, b) for a, b in zip(*stepped, strict=True))
