"""The model levers of issue 26 on ``--arch modern``: value embeddings, residual/x0 lambdas and
U-net skips. Each one: causality, KV cache = no cache, its parameters (names, init, optimizer
group, counts, checkpoints with padded rows, a meta-device build), the config (refused on gpt2,
TOML, old configs, --dry-run), the export refused, and an exact resume with all three on."""

from __future__ import annotations

import json

import pytest
import torch
from resume_helpers import assert_same_curves, resume_to_end, train_until

from lmforge import TrainingManager
from lmforge.config import ModelConfig, OptimizerConfig, TrainingConfig
from lmforge.errors import ConfigError
from lmforge.model import ModernGPT
from lmforge.observe.reporting import Reporter
from lmforge.presets import resolve_config
from lmforge.train.optim import param_groups

LEVERS = ("value_embeds", "residual_lambdas", "unet_skips")
ALL_ON = {lever: True for lever in LEVERS}
# one lever at a time, and all three together
SETTINGS = [{lever: True} for lever in LEVERS] + [ALL_ON]
SETTING_IDS = [*LEVERS, "all"]


def _config(**changes) -> ModelConfig:
    base = dict(
        vocab_size=97,
        block_size=24,
        n_layer=3,  # odd: the middle block has no U-net skip, the value embeddings are on 0 and 2
        n_head=4,
        n_kv_head=2,
        n_embd=32,
        dropout=0.0,
        arch="modern",
        bias=False,
        qk_norm=True,
        logit_softcap=15.0,
    )
    return ModelConfig(**{**base, **changes})


def _randomised(model: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    # the zero-initialised projections, gates and head hide the levers; give everything values
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model.eval()


def _tiny_training_config(**levers) -> TrainingConfig:
    overrides = {("recipe",): "modern", **{("model", k): v for k, v in levers.items()}}
    return resolve_config(preset="tiny", overrides=overrides)


# ----------------------------------------------------------------------------- the model


@pytest.mark.parametrize("levers", SETTINGS, ids=SETTING_IDS)
def test_a_future_token_never_changes_an_earlier_logit(levers):
    model = _randomised(ModernGPT(_config(**levers)))
    idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(1))
    changed = idx.clone()
    changed[:, 9:] = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(2))
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.equal(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


@pytest.mark.parametrize("levers", SETTINGS, ids=SETTING_IDS)
def test_kv_cache_decoding_gives_the_full_forward_logits(levers):
    model = _randomised(ModernGPT(_config(**levers)))
    idx = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(3))
    full, _ = model(idx)
    for prompt in (1, 7):
        cache = model.new_kv_cache(2)
        logits, _ = model(idx[:, :prompt], kv_cache=cache)
        got = [logits[:, -1]]
        for t in range(prompt, 20):
            logits, _ = model(idx[:, t : t + 1], kv_cache=cache)
            got.append(logits[:, -1])
        torch.testing.assert_close(torch.stack(got, 1), full[:, prompt - 1 :], atol=1e-5, rtol=1e-5)


def test_every_lever_with_document_masking_keeps_causality_the_cache_and_the_documents():
    """All four model levers at once: the value embeddings, lambdas and skips carry nothing
    across an end-of-text token either, and decoding with the cache still equals a full forward."""
    eot = 5
    model = _randomised(ModernGPT(_config(**ALL_ON, document_masking=True, eot_token=eot)))
    idx = torch.randint(6, 97, (2, 20), generator=torch.Generator().manual_seed(5))
    idx[:, 8] = eot  # a document starts at position 8
    full, _ = model(idx)
    other_past = idx.clone()
    other_past[:, :8] = torch.randint(6, 97, (2, 8), generator=torch.Generator().manual_seed(6))
    other_future = idx.clone()
    other_future[:, 14:] = torch.randint(6, 97, (2, 6), generator=torch.Generator().manual_seed(7))
    assert torch.equal(model(other_past)[0][:, 8:], full[:, 8:])  # what came before the eot is unseen
    assert not torch.allclose(model(other_past)[0][:, :8], full[:, :8])
    assert torch.equal(model(other_future)[0][:, :14], full[:, :14])  # causality
    cache = model.new_kv_cache(2)
    logits, _ = model(idx[:, :3], kv_cache=cache)
    got = [logits[:, -1]]
    for t in range(3, 20):
        logits, _ = model(idx[:, t : t + 1], kv_cache=cache)
        got.append(logits[:, -1])
    torch.testing.assert_close(torch.stack(got, 1), full[:, 2:], atol=1e-5, rtol=1e-5)


def test_each_lever_changes_the_function():
    idx = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(4))
    plain, _ = _randomised(ModernGPT(_config()))(idx)
    for lever in LEVERS:
        model = _randomised(ModernGPT(_config(**{lever: True})))
        logits, _ = model(idx)
        assert not torch.allclose(logits, plain), lever


def test_the_levers_parameters_names_and_initial_values():
    model = ModernGPT(_config(**ALL_ON, pad_vocab_multiple=64))  # 97 -> 128 rows
    names = dict(model.named_parameters())
    added = {
        n: tuple(p.shape) for n, p in names.items() if not n.startswith(("transformer.h.", "transformer.wte"))
    }
    assert added == {
        "resid_lambdas": (3,),
        "x0_lambdas": (3,),
        "skip_weights": (1,),
        "transformer.value_embeds.0.weight": (128, 16),  # alternating layers, the last included
        "transformer.value_embeds.2.weight": (128, 16),
        "lm_head.weight": (128, 32),
    }
    assert [n for n in names if "ve_gate" in n] == [
        "transformer.h.0.attn.ve_gate.weight",
        "transformer.h.2.attn.ve_gate.weight",
    ]
    assert names["transformer.h.0.attn.ve_gate.weight"].shape == (2, 12)  # a gate per kv head
    assert all(not names[n].any() for n in names if n.endswith("ve_gate.weight"))  # 2 * sigmoid(0) = 1
    for i in (0, 2):
        table = names[f"transformer.value_embeds.{i}.weight"]
        assert not table[97:].any() and table[:97].std().item() == pytest.approx(0.125, rel=0.1)  # as c_v
    assert torch.equal(model.resid_lambdas, torch.ones(3))
    torch.testing.assert_close(model.x0_lambdas, torch.tensor([0.2, 0.125, 0.05]))
    assert torch.equal(model.skip_weights, torch.ones(1))
    # with every lever off, nothing is added
    plain = ModernGPT(_config())
    assert not any(
        n.startswith(("resid", "x0", "skip", "transformer.value")) or "ve_gate" in n
        for n, _ in plain.named_parameters()
    )


def test_a_meta_device_build_gets_the_initial_values_from_init_weights():
    direct = ModernGPT(_config(**ALL_ON, pad_vocab_multiple=64))
    with torch.device("meta"):
        model = ModernGPT(_config(**ALL_ON, pad_vocab_multiple=64))
    assert model.resid_lambdas.is_meta  # nothing initialised yet
    model.to_empty(device="cpu")
    for p in model.parameters():
        p.data.fill_(float("nan"))  # what to_empty leaves may be anything
    model.init_weights()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    for name in ("resid_lambdas", "x0_lambdas", "skip_weights", "transformer.h.2.attn.ve_gate.weight"):
        assert torch.equal(model.get_parameter(name), direct.get_parameter(name)), name
    assert not model.transformer.value_embeds["2"].weight[97:].any()


def test_padded_value_embedding_rows_stay_zero_and_are_not_stored(tmp_path):
    from lmforge.checkpoint.meta import stored_parameters
    from lmforge.checkpoint.store import load_model, model_state, save_checkpoint

    config = _config(**ALL_ON, pad_vocab_multiple=64)
    model = ModernGPT(config)
    with torch.no_grad():  # give the zero-initialised ones values, and the scalars others than 1
        for name, p in model.named_parameters():
            if name.endswith(("c_proj.weight", "ve_gate.weight", "lambdas", "skip_weights")):
                p.normal_(0.0, 0.1)
            elif name == "lm_head.weight":
                p[:97].normal_(0.0, 0.1)
    model.train()
    idx = torch.randint(0, 97, (2, 12))
    _, loss = model(idx, idx)
    loss.backward()
    assert not model.transformer.value_embeds["0"].weight.grad[97:].any()  # padded ids never looked up
    state = model_state(model)
    assert state["transformer.value_embeds.0.weight"].shape == (97, 16)
    meta = {
        "kind": "light",
        "run": "r",
        "step": 1,
        "tokens": 24,
        "val_loss": None,
        "config": TrainingConfig(preset="tiny", run="r", tokenizer="bytes", model=config).to_dict(),
        "tokenizer": {"name": "bytes", "sha256": "x"},
        "dataset": "wikitext-2",
    }
    path = save_checkpoint(tmp_path / "step-1", model, meta)
    assert stored_parameters(path) == model.get_num_params(non_embedding=False)
    loaded, _, _ = load_model(path)  # built on the meta device, loaded with assign
    model.eval()
    for name, p in model.named_parameters():
        assert torch.equal(loaded.get_parameter(name), p), name  # padded rows back as zeros
    assert torch.equal(loaded(idx)[0], model(idx)[0])


def test_parameter_counts_and_flops_leave_the_lookups_out_of_the_matmuls():
    config = _config(**ALL_ON, pad_vocab_multiple=64)
    model = ModernGPT(config)
    padding = 128 - 97
    everything = sum(p.numel() for p in model.parameters())
    assert model.get_num_params() == everything - padding * (32 + 32 + 16 + 16)  # wte, head, 2 tables
    linears = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    matmuls = linears - padding * 32  # the head's padded rows
    scalars = 3 + 3 + 1
    assert model.get_num_params() - model.lookup_params() == matmuls + scalars
    assert model.flops_per_token() == 6 * (matmuls + scalars) + 12 * 3 * 32 * 24


def test_every_parameter_gets_a_gradient_and_recomputation_changes_nothing():
    model = _randomised(ModernGPT(_config(**ALL_ON))).train()
    idx = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(5))
    _, loss = model(idx, idx)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), [
        n for n, g in grads.items() if not g.abs().sum()
    ]
    model.zero_grad()
    model.config.gradient_checkpointing = True
    _, again = model(idx, idx)
    again.backward()
    assert torch.equal(again, loss)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_param_groups_put_each_new_parameter_where_intended(optimizer):
    from lmforge.train.optim import build_optimizer, set_hyperparameters

    model = ModernGPT(_config(**ALL_ON))
    config = OptimizerConfig(optimizer=optimizer, lr=0.02, weight_decay=0.1, embed_lr=0.2)
    groups, counts = param_groups(model, config.weight_decay, config)
    group_of = {id(p): g for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    # the tables: with the token embedding, at --embed-lr, never decayed
    table = group_of[id(params["transformer.value_embeds.0.weight"])]
    assert table is group_of[id(params["transformer.wte.weight"])]
    assert (table["optimizer"], table["lr_field"], table["weight_decay"]) == ("adamw", "embed_lr", 0.0)
    # the scalars: their own AdamW group at --scalar-lr (0 = --lr), never decayed
    scalars = group_of[id(params["resid_lambdas"])]
    assert [id(p) for p in scalars["params"]] == [
        id(params[n]) for n in ("resid_lambdas", "x0_lambdas", "skip_weights")
    ]
    assert (scalars["optimizer"], scalars["lr_field"], scalars["lr_scale"], scalars["weight_decay"]) == (
        "adamw",
        "scalar_lr",
        1.0,
        0.0,
    )
    assert counts.no_decay_tensors == 1 + 2 + 3  # wte, two tables, three scalar vectors
    # the gate is a matrix inside a block, as in nanochat: Muon's (or AdamW's decayed matrices)
    gate = group_of[id(params["transformer.h.2.attn.ve_gate.weight"])]
    assert (gate["optimizer"], gate["lr_field"]) == (optimizer, "lr")
    assert gate is group_of[id(params["transformer.h.2.attn.c_v.weight"])]
    # a resumed run's config decides the scalars' lr, and never decays them
    opt, _ = build_optimizer(model, config, torch.device("cpu"), torch.float32)
    set_hyperparameters(
        opt,
        OptimizerConfig(optimizer=optimizer, lr=0.02, weight_decay=0.1, scalar_lr=0.04),
        torch.device("cpu"),
    )
    (resumed,) = [g for g in opt.param_groups if g["lr_field"] == "scalar_lr"]
    assert (resumed["lr_scale"], resumed["weight_decay"]) == (2.0, 0.0)


# ----------------------------------------------------------------------------- the config


def test_the_levers_need_the_modern_architecture_with_a_one_line_error():
    for lever in LEVERS:
        flag = "--" + lever.replace("_", "-")
        with pytest.raises(ConfigError, match=f"{flag} needs --arch modern") as e:
            ModelConfig(**{lever: True})
        assert "\n" not in e.value.message
        with pytest.raises(ConfigError, match=f"{flag} needs --arch modern"):
            resolve_config(preset="tiny", overrides={("model", lever): True})
    with pytest.raises(ConfigError, match="--unet-skips needs --n-layer 2 or more, got 1"):
        _config(unet_skips=True, n_layer=1)
    with pytest.raises(ConfigError, match="--scalar-lr must be >= 0"):
        OptimizerConfig(scalar_lr=-1.0)


def test_the_modern_recipe_turns_on_the_measured_lever_only():
    """Value embeddings won the protocol (README, "Levers"); the lambdas and U-net skips did not."""
    gpt2 = resolve_config(preset="tiny", overrides={("recipe",): "gpt2"}).model
    modern = resolve_config(preset="tiny", overrides={("recipe",): "modern"}).model
    assert not any(getattr(gpt2, lever) for lever in LEVERS)
    assert {lever: getattr(modern, lever) for lever in LEVERS} == {
        "value_embeds": True,
        "residual_lambdas": False,
        "unet_skips": False,
    }
    assert not modern.document_masking


@pytest.mark.parametrize("on", [True, False])
def test_levers_round_trip_through_toml(tmp_path, on):
    levers = {lever: on for lever in LEVERS}
    c = _tiny_training_config(**levers)
    path = tmp_path / "levers.toml"
    path.write_text(c.to_toml())
    back = TrainingConfig.from_toml(path)
    assert back == c and {k: getattr(back.model, k) for k in LEVERS} == levers
    assert resolve_config(path) == c


def test_a_config_from_before_the_levers_loads_with_them_off():
    from lmforge.train.run_spec import ARCHITECTURE_FIELDS, architecture_diff

    old = _tiny_training_config().to_dict()
    for lever in LEVERS:
        del old["model"][lever]
    c = TrainingConfig.from_dict(old)
    assert not any(getattr(c.model, lever) for lever in LEVERS)
    # resume and --init-from compare them as part of the architecture
    assert set(LEVERS) <= set(ARCHITECTURE_FIELDS)
    assert architecture_diff(c, _tiny_training_config(value_embeds=True)) == [
        "model.value_embeds: False -> True"
    ]


def test_dry_run_shows_the_levers(cli):
    r = cli("train", "--preset", "tiny", "--recipe", "modern", "--no-value-embeds", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    off = json.loads(r.stdout)
    assert [off["config"]["model"][lever] for lever in LEVERS] == [False] * 3
    flags = ["--value-embeds", "--residual-lambdas", "--unet-skips"]
    r = cli("train", "--preset", "tiny", "--recipe", "modern", *flags, "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    on = json.loads(r.stdout)
    assert [on["config"]["model"][lever] for lever in LEVERS] == [True] * 3
    # the value-embedding tables (4 layers of tiny, 2 of them) are embeddings, not non-embedding
    c = on["config"]["model"]
    tables = 2 * c["vocab_size"] * c["n_embd"]
    assert (
        on["parameters"]["total"] - off["parameters"]["total"]
        == tables + 2 * c["n_layer"] + c["n_layer"] // 2 + 2 * 12 * c["n_head"]
    )
    assert (
        on["parameters"]["non_embedding"] - off["parameters"]["non_embedding"]
        == 2 * c["n_layer"] + c["n_layer"] // 2 + 2 * 12 * c["n_head"]
    )
    r = cli("train", "--preset", "tiny", "--value-embeds", "--dry-run")
    assert r.exit_code != 0 and "--value-embeds needs --arch modern" in r.stderr
    r = cli("train", "--preset", "tiny", "--recipe", "modern", "--value-embeds", "--dry-run")
    assert r.exit_code == 0 and "value_embeds = true" in r.stdout


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize(
    "lever, message",
    [
        ("value_embeds", "--value-embeds: NanoChatForCausalLM has no value embeddings"),
        ("residual_lambdas", "--residual-lambdas: NanoChatForCausalLM has no residual or x0 lambdas"),
        ("unet_skips", "--unet-skips: NanoChatForCausalLM has no skip connections between blocks"),
    ],
)
def test_hf_export_refuses_each_lever_with_one_line(tmp_path, lever, message):
    from lmforge.checkpoint.store import save_checkpoint
    from lmforge.interop.hf_export import export_checkpoint

    config = TrainingConfig(preset="tiny", run="r", tokenizer="bytes", model=_config(**{lever: True}))
    meta = {
        "kind": "light",
        "run": "r",
        "step": 1,
        "tokens": 24,
        "val_loss": None,
        "config": config.to_dict(),
        "tokenizer": {"name": "bytes", "sha256": "x"},
        "dataset": "wikitext-2",
    }
    ckpt = save_checkpoint(tmp_path / "step-1", ModernGPT(config.model), meta)
    with pytest.raises(ConfigError) as e:
        export_checkpoint(ckpt, tmp_path / "hf", "hf")
    assert e.value.message == f"cannot export {message}"
    assert not (tmp_path / "hf").exists()
    export_checkpoint(ckpt, tmp_path / "own", "safetensors")  # lmforge's own format holds it


# ----------------------------------------------------------------------------- training


def test_resume_with_every_lever_on_is_the_straight_run_bitwise(train_workspace, tiny_train_config):
    def config(run):
        return tiny_train_config(
            steps=8, eval_interval=4, sample_tokens=0, run=run, recipe="modern", **ALL_ON
        )

    TrainingManager(config("straight"), train_workspace, reporter=Reporter()).train()
    train_until(config("halves"), train_workspace, 4)
    saved = TrainingConfig.from_toml(train_workspace / "runs" / "halves" / "config.toml")
    assert {k: getattr(saved.model, k) for k in LEVERS} == ALL_ON
    resume_to_end(train_workspace, "halves")
    assert_same_curves(train_workspace, "halves", "straight")
    # the lambdas and skip weights were trained (not left at their initial values)
    from lmforge.checkpoint.store import load_model

    model, _, _ = load_model(train_workspace / "runs" / "halves" / "checkpoints" / "step-8")
    assert not torch.equal(model.resid_lambdas, torch.ones(2)) and not torch.equal(
        model.skip_weights, torch.ones(1)
    )
