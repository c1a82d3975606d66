"""The rules for new, resumed and initialised runs (``lmforge.train.run_spec.resolve_run``)."""

from __future__ import annotations

import pytest

from lmforge import TrainingManager
from lmforge.errors import UsageError
from lmforge.observe.reporting import Reporter
from lmforge.train.run_spec import check_run_name, resolve_run
from lmforge.workspace import Workspace


@pytest.fixture
def trained(train_workspace, tiny_train_config):
    """A finished two-step run ``base`` (one full checkpoint at step 2)."""
    config = tiny_train_config(steps=2, run="base", sample_tokens=0, dropout=0.0)
    TrainingManager(config, train_workspace, reporter=Reporter()).train()
    return Workspace.resolve(train_workspace)


def test_resume_and_init_from_exclude_each_other(trained):
    with pytest.raises(UsageError, match="--resume and --init-from cannot be used together"):
        resolve_run(trained, resume="base", init_from="base")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"config_file": "x.toml"}, "--config cannot be combined with --resume"),
        ({"overrides": {("run",): "other"}}, "--run cannot be combined with --resume"),
    ],
)
def test_resume_refuses_options_that_name_another_config(trained, kwargs, message):
    with pytest.raises(UsageError, match=message):
        resolve_run(trained, resume="base", **kwargs)


def test_resume_takes_the_runs_config_with_changed_steps(trained):
    plan = resolve_run(trained, overrides={("train", "steps"): 5}, resume="latest")
    assert plan.resume_dir == trained.run_dir("base") and plan.init_from is None
    assert plan.config.run == "base" and plan.config.train.steps == 5


def test_resume_refuses_another_architecture_from_both_callers(trained, tiny_train_config):
    with pytest.raises(UsageError, match="n_layer: 2 -> 3") as cli:
        resolve_run(trained, overrides={("model", "n_layer"): 3}, resume="base")
    assert "--init-from base:latest" in cli.value.hint
    with pytest.raises(UsageError, match="n_layer: 2 -> 3") as api:
        resolve_run(trained, tiny_train_config(n_layer=3), resume="base")
    assert "config=None" in api.value.hint


def test_init_from_options_versus_a_whole_config(trained, tiny_train_config):
    # options: an architecture option that disagrees with the checkpoint is refused
    with pytest.raises(UsageError, match="--n-layer 4 differs"):
        resolve_run(trained, overrides={("model", "n_layer"): 4}, init_from="base")
    # a whole config: the checkpoint's architecture wins, dropout is the caller's
    plan = resolve_run(trained, tiny_train_config(n_layer=4, dropout=0.2), init_from="base")
    assert plan.config.model.n_layer == 2 and plan.config.model.dropout == 0.2
    assert plan.init_from == trained.run_dir("base") / "checkpoints" / "best"  # RUN: its best


def test_init_from_takes_the_training_defaults_of_the_checkpoints_preset(trained):
    spec = resolve_run(trained, init_from="base")  # base: a tiny run
    c = spec.config
    assert c.preset == "tiny" and c.model.n_layer == 2
    assert (c.train.steps, c.train.batch_size, c.train.grad_accum, c.train.eval_tokens) == (200, 4, 1, 8192)
    assert (c.optim.lr, c.optim.min_lr, c.optim.warmup_steps) == (1e-3, 1e-4, 20)
    # an option still wins, and --preset names other defaults
    assert resolve_run(trained, overrides={("optim", "lr"): 5e-4}, init_from="base").config.optim.lr == 5e-4
    gpt2 = resolve_run(trained, preset="gpt2", init_from="base").config
    assert gpt2.preset == "gpt2" and gpt2.optim.lr == 1.5e-4 and gpt2.train.steps == 300_000


def test_the_callers_config_is_not_changed(trained, tiny_train_config):
    config = tiny_train_config(n_layer=4)
    resolve_run(trained, config, init_from="base")
    assert config.model.n_layer == 4


@pytest.mark.parametrize("name", ["latest", "best", "-x", "a/b", "x" * 201])
def test_invalid_run_names(name):
    with pytest.raises(UsageError, match="invalid run name|is reserved"):
        check_run_name(name)
