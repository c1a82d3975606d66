"""Config values through ``lmforge train`` options and ``--config`` files: the checks of
``lmforge.config`` reach the user as one line and exit 2."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("flag, value", [("--lr", "nan"), ("--min-lr", "inf"), ("--dropout", "nan")])
def test_non_finite_option_is_refused(cli, flag, value):
    result = cli("train", "--dry-run", flag, value)
    assert result.exit_code == 2, result.output
    assert f"{flag} must be a finite number" in result.stderr


def test_preset_keeps_the_files_dropout_in_the_dry_run(cli, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('preset = "gpt2"\n[model]\ndropout = 0.2\ngradient_checkpointing = true\n')
    result = cli("train", "--config", str(path), "--preset", "tiny", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    import json

    model = json.loads(result.stdout)["config"]["model"]
    assert (model["dropout"], model["gradient_checkpointing"], model["n_layer"]) == (0.2, True, 4)
