"""Shared fixtures: an isolated workspace, a CLI runner, tiny configs.

Tests never touch the network, the user's real workspace, W&B servers or
../shared: everything they read they make themselves.
"""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

os.environ["WANDB_MODE"] = "disabled"
os.environ["WANDB_SILENT"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.pop("LMFORGE_TOKENIZER_FILE", None)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    """Keep every test out of the real workspace and give Rich a stable, plain terminal."""
    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path_factory.mktemp("default-ws")))
    monkeypatch.setenv("TERMINAL_WIDTH", "200")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")


@pytest.fixture
def workspace_dir(tmp_path):
    path = tmp_path / "ws"
    path.mkdir()
    return path


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def cli(runner, workspace_dir):
    """Invoke the app against ``workspace_dir``: ``cli("train", "--dry-run")``."""
    from lmforge.cli.main import app

    def invoke(*args: str, input: str | None = None):
        return runner.invoke(
            app, ["--workspace", str(workspace_dir), *args], input=input, prog_name="lmforge"
        )

    return invoke
