"""`--recipe modern` end to end: config resolution, training with Muon + WSD, exact resume,
DDP on gloo, eval, generate, ``ckpt show`` and the NanoChat export/import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from resume_helpers import assert_same_curves, curve, resume_to_end, train_until

from lmforge import TrainingManager
from lmforge.config import TrainingConfig
from lmforge.errors import ConfigError
from lmforge.observe.reporting import Reporter
from lmforge.presets import RECIPES, resolve_config

REPO = Path(__file__).resolve().parents[1]
# the modern recipe's own lrs (the tiny test settings' --lr 3e-3 is an AdamW lr)
MODERN = {"recipe": "modern", "lr": 0.02, "min_lr": 0.0, "muon_momentum_warmup": 4}


def _records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_recipe_sets_architecture_optimizer_and_schedule_and_options_win():
    c = resolve_config(preset="tiny", overrides={("recipe",): "modern"})
    assert (c.recipe, c.model.arch, c.model.bias, c.model.qk_norm, c.model.logit_softcap) == (
        "modern",
        "modern",
        False,
        True,
        15.0,
    )
    assert (c.optim.optimizer, c.optim.schedule, c.optim.lr) == ("muon", "wsd", 0.02)
    assert c.optim.decay_fraction == 1.0  # linear decay from the warmup's end (issue 26's protocol)
    assert resolve_config(preset="tiny", overrides={("recipe",): "gpt2"}).optim.decay_fraction == 0.2
    assert (c.model.n_layer, c.model.n_embd) == (4, 256)  # --preset still chooses the size
    big = resolve_config(preset="gpt2", overrides={("recipe",): "modern", ("optim", "schedule"): "cosine"})
    assert big.model.n_layer == 12 and big.optim.schedule == "cosine"  # one lever ablated
    assert resolve_config().model.arch == "gpt2" and resolve_config().optim.optimizer == "adamw"
    assert RECIPES["gpt2"].keys() == RECIPES["modern"].keys()


def test_recipe_toml_round_trip_and_recipe_beats_the_file(tmp_path):
    c = resolve_config(preset="tiny", overrides={("recipe",): "modern", ("model", "n_kv_head"): 2})
    path = tmp_path / "modern.toml"
    path.write_text(c.to_toml())
    assert 'recipe = "modern"' in path.read_text()
    assert TrainingConfig.from_toml(path) == c
    assert resolve_config(path) == c
    back = resolve_config(path, overrides={("recipe",): "gpt2", ("model", "n_kv_head"): 0})
    assert (back.recipe, back.model.arch, back.optim.optimizer, back.model.bias) == (
        "gpt2",
        "gpt2",
        "adamw",
        True,
    )
    # a file naming only the recipe gets all of its values
    short = tmp_path / "short.toml"
    short.write_text('recipe = "modern"\npreset = "tiny"\n')
    assert resolve_config(short).optim.optimizer == "muon"


def test_bad_combinations_are_refused_with_one_line():
    with pytest.raises(ConfigError, match=r"--n-kv-head \(3\) must divide --n-head \(4\)") as e:
        resolve_config(preset="tiny", overrides={("recipe",): "modern", ("model", "n_kv_head"): 3})
    assert "\n" not in e.value.message
    with pytest.raises(ConfigError, match="--strategy fsdp cannot be used with --optimizer muon"):
        resolve_config(overrides={("recipe",): "modern", ("train", "strategy"): "fsdp"})
    with pytest.raises(ConfigError, match="unknown recipe"):
        resolve_config(overrides={("recipe",): "llama"})


def test_dry_run_shows_the_resolved_recipe(cli):
    r = cli("train", "--preset", "tiny", "--recipe", "modern", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["config"]["recipe"] == "modern" and plan["config"]["optim"]["optimizer"] == "muon"
    gpt2 = json.loads(cli("train", "--preset", "tiny", "--dry-run", "--json").stdout)
    # untied head: one more vocab x width matrix, no position table; value embeddings on layers
    # 1 and 3 of 4: two more vocab x width tables and their gates (12 channels -> 4 heads)
    V, C, T = 50257, 256, 256
    assert (
        plan["parameters"]["total"] - gpt2["parameters"]["total"]
        == V * C
        - T * C
        - 4 * 13 * C
        - 2 * C  # + head, - positions, - per layer 2 LayerNorms + 4 biases, - ln_f
        + 2 * V * C
        + 2 * 12 * 4
    )
    assert plan["flops_per_token"] < gpt2["flops_per_token"] + 6 * V * C
    r = cli("train", "--recipe", "modern", "--n-kv-head", "5", "--dry-run")
    assert r.exit_code != 0 and "--n-kv-head (5) must divide --n-head (12)" in r.stderr


# "no fast bf16": a CPU without bf16 instructions, where Muon's Newton-Schulz runs in fp32 (MuonNS)
@pytest.mark.parametrize("cpu", ["this CPU", "no fast bf16"])
def test_muon_wsd_resume_with_more_steps_before_the_decay_is_the_longer_run_bitwise(
    train_workspace, tiny_train_config, cpu, monkeypatch
):
    import lmforge.device

    if cpu == "no fast bf16":
        monkeypatch.setattr(lmforge.device, "_read_cpuinfo", lambda: "model name : Old\nflags : avx2\n")

    def config(run, steps):
        return tiny_train_config(
            steps=steps, eval_interval=5, sample_tokens=0, run=run, decay_fraction=0.5, **MODERN
        )

    TrainingManager(config("straight", 20), train_workspace, reporter=Reporter()).train()
    # planned as 16 steps (decay from step 8), stopped at 6, resumed with --steps 20 (decay from 10):
    # the plateau simply goes on, and the run is the 20-step one exactly
    first = train_until(config("halves", 16), train_workspace, 6)
    if cpu == "no fast bf16":
        assert type(first.optimizer.muon).__name__ == "MuonNS" and first.dtype == "fp32"
    warnings = _Warnings()
    resume_to_end(train_workspace, "halves", {("train", "steps"): 20}, reporter=warnings)
    assert warnings.seen == []
    assert_same_curves(train_workspace, "halves", "straight")
    lrs = curve(train_workspace, "halves", "train", "lr")
    assert lrs == curve(train_workspace, "straight", "train", "lr")


def test_cosine_warns_when_more_steps_change_the_past_schedule(train_workspace, tiny_train_config):
    from lmforge.train.run_spec import resume_config

    cos = tiny_train_config(steps=6, sample_tokens=0, run="cos")
    TrainingManager(cos, train_workspace, reporter=Reporter()).train()
    warnings = _Warnings()
    longer = resume_config(train_workspace / "runs" / "cos", {("train", "steps"): 10})
    TrainingManager(longer, train_workspace, resume="cos", reporter=warnings).train()
    assert any("stretches the cosine decay" in w and "--schedule wsd" in w for w in warnings.seen)


class _Warnings(Reporter):
    def __init__(self):
        self.seen: list[str] = []

    def warning(self, message: str) -> None:
        self.seen.append(message)


def test_trains_evaluates_generates_shows_exports_and_imports(train_workspace, tiny_train_config, cli):
    transformers = pytest.importorskip("transformers")
    from lmforge.checkpoint.store import load_model
    from lmforge.interop import hf_export, hf_import
    from lmforge.workspace import Workspace

    # the value embeddings have no NanoChat tensors: the exported model is the recipe without them
    config = tiny_train_config(
        steps=8, eval_interval=4, sample_tokens=4, run="modern", n_kv_head=1, value_embeds=False, **MODERN
    )
    result = TrainingManager(config, train_workspace, reporter=Reporter()).train()
    assert result.status == "finished" and result.last_val_loss < 5.5
    ckpt = train_workspace / "runs" / "modern" / "checkpoints" / "step-8"

    shown = cli("ckpt", "show", "modern:step-8", "--json")
    assert shown.exit_code == 0, shown.stderr
    assert '"recipe": "modern"' in shown.stdout
    assert "recipe" in cli("ckpt", "show", "modern:step-8").stdout
    ev = cli("eval", "modern:step-8", "--json")
    assert ev.exit_code == 0, ev.stderr
    gen = cli("generate", "modern:step-8", "The", "--max-tokens", "6", "--greedy")
    assert gen.exit_code == 0, gen.stderr

    out = train_workspace / "hf-modern"
    hf_export.export_checkpoint(ckpt, out, "hf", workspace=Workspace.resolve(train_workspace))
    hf = json.loads((out / "config.json").read_text())
    assert hf["model_type"] == "nanochat" and hf["hidden_act"] == "relu2"
    assert (hf["final_logit_softcapping"], hf["tie_word_embeddings"], hf["num_key_value_heads"]) == (
        15.0,
        False,
        1,
    )
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert type(theirs).__name__ == "NanoChatForCausalLM"
    model, _, _ = load_model(ckpt)
    idx = torch.randint(0, 257, (2, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(idx)[0]
        assert (ours - theirs(idx).logits).abs().max().item() < 1e-4

    imported = hf_import.import_checkpoint(Workspace.resolve(train_workspace), out, name="back")
    back, back_config, _ = load_model(imported.checkpoint)
    assert back_config.model.arch == "modern" and back_config.recipe == "modern"
    with torch.no_grad():
        assert torch.equal(back(idx)[0], ours)

    # a gpt2 run next to the modern one: one plot, and the recipe's levers among the differences
    classic = tiny_train_config(steps=8, eval_interval=4, sample_tokens=0, run="classic")
    TrainingManager(classic, train_workspace, reporter=Reporter()).train()
    plot = train_workspace / "recipes.png"
    compared = cli("runs", "compare", "classic", "modern", "--out", str(plot), "--json")
    assert compared.exit_code == 0, compared.stderr
    data = json.loads(compared.stdout)
    assert [r["name"] for r in data["runs"]] == ["classic", "modern"]
    assert all(r["metrics"]["best_val_loss"] is not None for r in data["runs"])
    differences = data["config_differences"]
    assert differences["recipe"] == ["gpt2", "modern"] and differences["model.arch"] == ["gpt2", "modern"]
    assert differences["optim.optimizer"] == ["adamw", "muon"]
    assert differences["optim.schedule"] == ["cosine", "wsd"]
    assert plot.is_file() and plot.stat().st_size > 10_000


def test_export_refuses_a_lever_nanochat_cannot_hold():
    from lmforge.interop.nanochat import nanochat_config

    c = resolve_config(preset="tiny", overrides={("recipe",): "modern", ("model", "qk_norm"): False})
    with pytest.raises(ConfigError, match="cannot export --no-qk-norm to NanoChatForCausalLM"):
        nanochat_config(c.model)


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="no gloo backend in this torch")
def test_ddp_with_muon_and_every_model_lever_matches_one_process(
    train_workspace, train_flags, tiny_train_config
):
    """Two ranks of batch 2 = one process of batch 4, with Muon and the four model levers on (their
    parameters all get gradients, so DDP's reducer needs no unused-parameter search)."""
    run = {"steps": 4, "eval_interval": 2, "grad_accum": 1, "sample_tokens": 0}
    levers = ("value_embeds", "residual_lambdas", "unet_skips", "document_masking")
    flags = train_flags(batch_size=2, **run, **{k: v for k, v in MODERN.items()})
    flags += [f"--{lever.replace('_', '-')}" for lever in levers]
    cmd = [sys.executable, "-m", "lmforge", "--workspace", str(train_workspace), "train", *flags]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    out = subprocess.run(
        [*cmd, "--run", "ddp", "--nproc", "2", "--json"],
        env={**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    saved = TrainingConfig.from_toml(train_workspace / "runs" / "ddp" / "config.toml").model
    assert all(getattr(saved, lever) for lever in levers)
    ref = tiny_train_config(run="ref", batch_size=4, **run, **MODERN, **dict.fromkeys(levers, True))
    TrainingManager(ref, train_workspace, reporter=Reporter()).train()
    a = _records(train_workspace / "runs" / "ddp", "train")
    b = _records(train_workspace / "runs" / "ref", "train")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    for x, y in zip(a, b, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-4)
