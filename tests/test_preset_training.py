"""Issue 12, items 1-2: a preset brings training defaults that fit it, a warmup longer than the
run is clamped with a warning, and the stride follows the block size."""

import json

import pytest

from lmforge.config import TrainingConfig
from lmforge.presets import PRESET_TRAINING, resolve_config
from lmforge.train.fit import fit_to_run
from lmforge.train.run_spec import FIXED_ON_RESUME, resume_config


def test_tiny_brings_the_quick_starts_training_values():
    c = resolve_config(preset="tiny")
    assert (c.train.steps, c.train.batch_size, c.train.grad_accum) == (200, 4, 1)
    assert (c.optim.lr, c.optim.min_lr, c.optim.warmup_steps) == (1e-3, 1e-4, 20)
    assert (c.train.eval_interval, c.train.eval_tokens) == (50, 8192)
    # the dataclass defaults and the gpt2 preset stay the seed's
    assert resolve_config(preset="gpt2").train == TrainingConfig().train
    assert "gpt2" not in PRESET_TRAINING


def test_file_and_options_beat_the_presets_training_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('preset = "tiny"\n[optim]\nlr = 0.002\n[train]\nsteps = 50\n')
    c = resolve_config(path)
    assert (c.optim.lr, c.train.steps, c.optim.warmup_steps) == (0.002, 50, 20)
    c = resolve_config(path, overrides={("train", "steps"): 70, ("optim", "warmup_steps"): 5})
    assert (c.optim.lr, c.train.steps, c.optim.warmup_steps) == (0.002, 70, 5)


def _dry_run(cli, *args):
    result = cli("train", "--dry-run", "--json", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def test_the_empty_workspace_hint_is_a_run_of_minutes(cli):
    hint = cli("runs", "list").stderr
    assert "lmforge train --preset tiny --data wikitext-2" in hint
    report, _ = _dry_run(cli, "--preset", "tiny", "--data", "wikitext-2")
    assert report["config"]["train"]["steps"] == 200
    assert report["tokens_per_step"] == 4 * 1 * 256


def test_a_warmup_longer_than_the_run_is_clamped_with_a_warning(cli):
    report, stderr = _dry_run(cli, "--steps", "2000")  # gpt2's 4,000 warmup steps
    assert report["config"]["optim"]["warmup_steps"] == 200
    assert "--warmup-steps 4,000 is not shorter than the run (2,000 steps)" in stderr
    assert "warming up for 200 steps" in stderr
    report, stderr = _dry_run(cli, "--preset", "tiny", "--steps", "100")
    assert report["config"]["optim"]["warmup_steps"] == 20 and "warming up" not in stderr


@pytest.mark.parametrize(
    ("steps", "said"),
    [
        (5, "(5 steps), so the learning rate would never reach its peak: no warmup instead"),
        (1, "(1 step), so the learning rate would never reach its peak: no warmup instead"),
        (10, "warming up for 1 step (a tenth of the run) instead"),
    ],
)
def test_a_run_too_short_for_a_tenth_is_not_warmed_up_for_0_steps(steps, said):
    fitted, warnings = fit_to_run(resolve_config(overrides={("train", "steps"): steps}))
    assert fitted.optim.warmup_steps == steps // 10 and said in warnings[0]
    assert "for 0 steps" not in warnings[0] and " 1 steps" not in warnings[0]


def test_a_resumed_run_is_warned_not_clamped():
    config = resolve_config(overrides={("train", "steps"): 3000})
    fitted, warnings = fit_to_run(config, resumed=True)
    assert fitted.optim.warmup_steps == 4000
    assert "never reaches its peak" in warnings[0] and "--warmup-steps" in warnings[0]


@pytest.mark.parametrize(("block", "stride"), [(128, 64), (256, 128), (1024, 512)])
def test_the_stride_follows_the_block_size(block, stride):
    c = resolve_config(preset="tiny", overrides={("model", "block_size"): block})
    assert c.data.stride == 0 and c.window_stride == stride


def test_a_stride_above_the_block_size_warns(cli):
    report, stderr = _dry_run(cli, "--preset", "tiny", "--block-size", "128", "--stride", "256")
    assert report["config"]["data"]["stride"] == 256
    assert "--stride 256 is larger than --block-size 128: 128 of every 256 tokens (50%)" in stderr
    _, stderr = _dry_run(cli, "--preset", "tiny", "--block-size", "128", "--stride", "128")
    assert "never trained on" not in stderr


def test_the_trainer_cuts_windows_at_half_the_block(train_workspace, tiny_train_config):
    from lmforge.train.trainer import TrainingManager

    config = tiny_train_config(stride=0, block_size=32)
    manager = TrainingManager(config, train_workspace)
    assert manager.loader.dataset.stride == 16


def test_an_old_run_with_an_explicit_stride_resumes_with_it(tmp_path):
    assert ("data", "stride") in FIXED_ON_RESUME
    run = tmp_path / "old-run"
    run.mkdir()
    old = resolve_config(preset="tiny", overrides={("data", "stride"): 512, ("run",): "old-run"})
    (run / "config.toml").write_text(old.to_toml())
    resumed = resume_config(run, {("train", "steps"): 400})
    assert resumed.data.stride == 512 and resumed.window_stride == 512
