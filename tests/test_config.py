import dataclasses

import pytest

from lmforge.config import ModelConfig, TrainingConfig, config_fields
from lmforge.errors import ConfigError
from lmforge.presets import PRESETS, resolve_config


def test_defaults_are_the_seeds():
    c = TrainingConfig()
    assert (c.train.batch_size, c.train.grad_accum, c.optim.lr) == (4, 8, 1.5e-4)
    assert (c.optim.warmup_steps, c.train.steps, c.optim.weight_decay) == (4000, 300_000, 0.01)
    assert (c.optim.max_grad_norm, c.model.block_size, c.window_stride) == (1.0, 1024, 512)
    assert c.data.stride == 0  # auto: half the block size
    assert (c.checkpoint.light_interval, c.checkpoint.full_interval, c.train.dtype) == (2000, 10_000, "auto")
    assert c.model == PRESETS["gpt2"]
    assert c.tokens_per_step == 4 * 8 * 1024


def test_toml_round_trip(tmp_path):
    c = resolve_config(
        preset="tiny", overrides={("optim", "lr"): 3e-4, ("run",): "my-run", ("data", "name"): "x"}
    )
    path = tmp_path / "c.toml"
    path.write_text(c.to_toml())
    assert TrainingConfig.from_toml(path) == c


def test_precedence_defaults_file_preset_cli(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('preset = "tiny"\n[model]\nn_layer = 2\n[optim]\nlr = 0.001\n[train]\nsteps = 50\n')
    from_file = resolve_config(path)
    assert from_file.model.n_layer == 2  # the file's value over its preset's
    assert from_file.model.n_embd == PRESETS["tiny"].n_embd
    assert from_file.optim.lr == 0.001
    with_preset = resolve_config(path, preset="gpt2")
    assert with_preset.preset == "gpt2"
    size = ("n_layer", "n_head", "n_embd", "block_size")
    assert [getattr(with_preset.model, k) for k in size] == [getattr(PRESETS["gpt2"], k) for k in size]
    assert with_preset.optim.lr == 0.001  # untouched by a preset
    with_cli = resolve_config(path, preset="gpt2", overrides={("model", "n_layer"): 3, ("train", "steps"): 7})
    assert (with_cli.model.n_layer, with_cli.train.steps) == (3, 7)


@pytest.mark.parametrize("preset", [None, "tiny", "gpt2"])
def test_preset_sets_the_size_and_keeps_the_files_other_model_values(tmp_path, preset):
    path = tmp_path / "c.toml"
    path.write_text(
        'preset = "tiny"\n[model]\ndropout = 0.2\ngradient_checkpointing = true\n'
        "pad_vocab_multiple = 64\nbias = false\n"
    )
    c = resolve_config(path, preset=preset)
    assert (c.model.dropout, c.model.gradient_checkpointing) == (0.2, True)
    assert (c.model.pad_vocab_multiple, c.model.bias) == (64, False)
    expected = PRESETS[preset or "tiny"]
    assert (c.model.n_layer, c.model.n_embd, c.model.block_size) == (
        expected.n_layer,
        expected.n_embd,
        expected.block_size,
    )


def test_a_preset_alone_brings_its_own_model_defaults():
    assert resolve_config(preset="tiny").model == PRESETS["tiny"]  # tiny's dropout 0.0 included


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    "field", [("optim", "lr"), ("optim", "min_lr"), ("model", "dropout"), ("optim", "eps")]
)
def test_non_finite_numbers_are_refused(field, value):
    with pytest.raises(ConfigError, match=f"--{field[1].replace('_', '-')} must be a finite number"):
        resolve_config(overrides={field: float(value)})


def test_non_finite_numbers_in_toml_are_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[optim]\nlr = nan\n")
    with pytest.raises(ConfigError, match="--lr must be a finite number"):
        resolve_config(path)
    path.write_text("[model]\ndropout = inf\n")
    with pytest.raises(ConfigError, match="--dropout must be a finite number"):
        resolve_config(path)


def test_non_finite_numbers_in_a_checkpoint_config_are_refused():
    data = TrainingConfig().to_dict()
    data["optim"]["lr"] = float("nan")
    with pytest.raises(ConfigError, match="--lr must be a finite number"):
        TrainingConfig.from_dict(data, source="meta.json")


def test_unknown_toml_key_names_the_closest(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[optim]\nlearning_rat = 0.1\n")
    with pytest.raises(ConfigError, match="unknown key 'optim.learning_rat'"):
        resolve_config(path)
    path.write_text("[train]\nstep = 3\n")
    with pytest.raises(ConfigError) as exc:
        resolve_config(path)
    assert "train.steps" in exc.value.hint


def test_bad_toml_values(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\nbatch_size = "four"\n')
    with pytest.raises(ConfigError, match="train.batch_size must be an integer"):
        resolve_config(path)
    path.write_text('[train]\ndtype = "fp64"\n')
    with pytest.raises(ConfigError, match="must be one of"):
        resolve_config(path)
    path.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({("train", "steps"): -1}, "--steps must be positive"),
        ({("train", "batch_size"): 0}, "--batch-size must be positive"),
        ({("optim", "lr"): -0.1}, "--lr must be positive"),
        ({("model", "n_head"): 5}, "divisible by --n-head"),
        ({("model", "dropout"): 1.5}, "--dropout"),
        ({("optim", "min_lr"): 1.0}, "--min-lr"),
    ],
)
def test_bad_values_name_the_flag(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(overrides=overrides)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'gpt3'"):
        resolve_config(preset="gpt3")


def test_every_field_has_a_unique_flag_and_the_required_spellings():
    flags = [f.flag for f in config_fields()]
    assert len(flags) == len(set(flags))
    required = (
        "steps batch-size grad-accum lr warmup-steps block-size stride n-layer n-head n-embd dropout "
        "eval-interval seed device dtype run data preset wandb"
    ).split()
    assert set(required) <= set(flags)
    assert all(f.help for f in config_fields())


def test_preset_keeps_vocab_size():
    c = resolve_config(overrides={("model", "vocab_size"): 257})
    assert dataclasses.replace(c.model) == ModelConfig(vocab_size=257)


def test_a_runs_own_config_toml_can_be_passed_back(make_ckpt_run, tmp_path):
    """Issue 27 item 18: ``--config runs/R/config.toml`` was refused for naming run R; it now
    means a new run like R (another file's ``run`` key is kept)."""
    from lmforge.presets import resolve_config

    own = make_ckpt_run("r1", [(10, "light")]) / "config.toml"
    assert 'run = "r1"' in own.read_text()
    config = resolve_config(own)
    assert config.run is None and config.preset == "tiny" and config.tokenizer == "bytes"
    assert resolve_config(own, overrides={("run",): "r2"}).run == "r2"
    mine = tmp_path / "config.toml"  # not in a run directory: its run key is the user's choice
    mine.write_text(own.read_text())
    assert resolve_config(mine).run == "r1"


def test_train_accepts_a_runs_own_config(train_workspace, make_ckpt_run, cli, train_flags):
    own = make_ckpt_run("r1", [(10, "light")]) / "config.toml"
    r = cli("train", "--config", str(own), *train_flags(steps=2, eval_interval=2), "--run", "again")
    assert r.exit_code == 0, r.output
    r = cli("train", "--config", str(own), *train_flags(steps=2, eval_interval=2))
    assert r.exit_code == 0, r.output
    assert len(list((train_workspace / "runs").iterdir())) == 3  # r1, again and a made-up name


def test_config_does_not_import_presets(tmp_path):
    """Issue 21 item 3: config.py and presets.py imported each other; the preset's name is
    checked where presets are applied."""
    import subprocess
    import sys

    code = (
        "import sys; from lmforge.config import TrainingConfig; "
        "TrainingConfig(); TrainingConfig.from_dict(TrainingConfig().to_dict()); "
        "print('lmforge.presets' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    toml = tmp_path / "c.toml"
    toml.write_text('preset = "gpt3"\n')
    with pytest.raises(ConfigError, match="unknown preset 'gpt3'"):
        resolve_config(toml)


def test_toml_writer_round_trips_any_string_and_drops_none():
    """Issue 21 item 5: TOML is written with tomli_w (the hand-written writer left control
    characters unescaped: a file tomllib could not read back)."""
    import tomllib

    from lmforge.tomlfile import dumps_toml

    data = {
        "run": 'a "quoted" \\ name\twith\x01control\nand é',
        "skip": None,
        "n": 3,
        "x": 1e-05,
        "flag": True,
        "t": {"a": "b", "none": None, "f": 0.1},
    }
    text = dumps_toml(data)
    assert tomllib.loads(text) == {
        "run": data["run"],
        "n": 3,
        "x": 1e-05,
        "flag": True,
        "t": {"a": "b", "f": 0.1},
    }
    assert text.index("flag = true") < text.index("[t]")  # scalars first, then tables
