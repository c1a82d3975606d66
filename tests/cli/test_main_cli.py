import json
import subprocess
import sys

import pytest

from lmforge import __version__


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"lmforge {__version__}"


@pytest.mark.parametrize("args", [[], ["train"], ["info"]])
def test_help(cli, args):
    result = cli(*args, "--help")
    assert result.exit_code == 0
    assert "Usage" in result.stdout


def test_train_help_lists_generated_options(cli):
    out = cli("train", "--help").stdout
    for flag in ("--steps", "--batch-size", "--grad-accum", "--lr", "--warmup-steps", "--n-embd", "--wandb"):
        assert flag in out


def test_dry_run_json(cli):
    result = cli("train", "--preset", "gpt2", "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["parameters"]["total"] == 124_439_808
    assert report["parameters"]["without_position_embeddings"] == 123_653_376
    assert report["tokens_per_step"] == 4 * 8 * 1024
    assert report["memory_bytes"]["total"] == 16 * 124_439_808
    assert report["config"]["optim"]["lr"] == 1.5e-4


def test_dry_run_applies_options_and_config_file(cli, tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('preset = "tiny"\n[optim]\nlr = 0.002\n')
    result = cli("train", "--config", str(path), "--steps", "10", "--no-bias", "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    config = json.loads(result.stdout)["config"]
    assert (config["preset"], config["optim"]["lr"], config["train"]["steps"]) == ("tiny", 0.002, 10)
    assert config["model"]["bias"] is False


def test_unknown_preset_is_one_clear_line(cli):
    result = cli("train", "--preset", "gpt5", "--dry-run")
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "Error: unknown preset 'gpt5'"
    assert lines[1].startswith("Hint: choose one of: gpt2")
    assert "Traceback" not in result.stderr


def test_traceback_only_with_verbose(runner, workspace_dir):
    from lmforge.cli.main import app

    result = runner.invoke(app, ["-v", "train", "--lr", "-1", "--dry-run"])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr
    assert "--lr must be positive" in result.stderr


def test_bad_option_type_is_a_usage_error(cli):
    result = cli("train", "--steps", "many", "--dry-run")
    assert result.exit_code == 2
    assert "--steps" in result.stderr


def test_info_json(cli, workspace_dir):
    result = cli("info", "--json")
    assert result.exit_code == 0
    facts = json.loads(result.stdout)
    assert facts["workspace"] == str(workspace_dir.resolve())
    assert facts["default_dtype"] in ("fp32", "bf16")
    assert "torch" in facts and "cuda_available" in facts


def test_workspace_from_env(runner, tmp_path, monkeypatch):
    from lmforge.cli.main import app

    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path / "env-ws"))
    result = runner.invoke(app, ["info", "--json"])
    assert json.loads(result.stdout)["workspace"] == str((tmp_path / "env-ws").resolve())
    assert not (tmp_path / "env-ws").exists()  # created lazily, not by reading commands


def test_subprocess_dry_run_and_error(tmp_path):
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmforge",
            "--workspace",
            str(tmp_path),
            "train",
            "--preset",
            "tiny",
            "--dry-run",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["config"]["preset"] == "tiny"
    bad = subprocess.run(
        [sys.executable, "-m", "lmforge", "train", "--preset", "nope", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert "unknown preset 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_dry_run_counts_the_real_vocabulary_when_padded(cli):
    result = cli("train", "--preset", "gpt2", "--pad-vocab-multiple", "64", "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["parameters"] == {
        "total": 124_439_808,
        "without_position_embeddings": 123_653_376,
        "non_embedding": 85_056_000,
    }
