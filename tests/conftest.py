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


# ----------------------------------------------------------------------------- checkpoints (ckpt)


@pytest.fixture
def make_ckpt_run(workspace_dir):
    """Build a run with real checkpoints of a tiny GPT (bytes tokenizer):
    ``make_ckpt_run("r1", [(100, "light"), (200, "full"), (200, "best")])`` -> the run directory."""
    import json

    import torch

    from lmforge.checkpoint.store import save_checkpoint
    from lmforge.config import ModelConfig, TrainingConfig
    from lmforge.data.tokenizer import bytes_tokenizer
    from lmforge.model.gpt import GPT

    def build(name, checkpoints, *, started_at="2024-01-01T00:00:00Z", seed=0, keep_last=3, **model_kw):
        dims = {"vocab_size": 257, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16, "dropout": 0.0}
        model_config = ModelConfig(**(dims | model_kw))
        config = TrainingConfig(preset="tiny", run=name, tokenizer="bytes", model=model_config)
        config.checkpoint.keep_last = keep_last
        torch.manual_seed(seed)
        model = GPT(model_config)
        run_dir = workspace_dir / "runs" / name
        run_dir.mkdir(parents=True)
        (run_dir / "config.toml").write_text(config.to_toml())
        identity = bytes_tokenizer().identity
        last = max((s for s, _ in checkpoints), default=0)
        run_json = {
            "name": name,
            "status": "finished",
            "started_at": started_at,
            "ended_at": started_at,
            "step": last,
            "total_steps": last,
            "tokens": last * 64,
            "best_val_loss": None,
            "best_step": None,
            "dataset": "wikitext-2",
            "tokenizer": identity,
            "wandb_id": None,
            "pid": None,
            "lmforge_version": "0.1.0",
            "error": None,
        }
        (run_dir / "run.json").write_text(json.dumps(run_json))
        for step, kind in checkpoints:
            meta = {
                "kind": kind,
                "run": name,
                "step": step,
                "tokens": step * 64,
                "val_loss": round(5.0 - step / 1000, 3),
                "config": config.to_dict(),
                "tokenizer": identity,
                "dataset": "wikitext-2",
            }
            state = {"step": step, "optimizer": {"state": {}}} if kind == "full" else None
            dest = run_dir / "checkpoints" / ("best" if kind == "best" else f"step-{step}")
            save_checkpoint(dest, model, meta, trainer_state=state)
        return run_dir

    return build


# ----------------------------------------------------------------------------- runs (lmforge runs)


@pytest.fixture
def fake_run(workspace_dir):
    """Write a run directory the way the trainer does (run.json, config.toml, metrics.jsonl,
    checkpoints/<name>/meta.json + a dummy model.safetensors), without training:
    ``fake_run("a", status="finished", steps=60, eval_every=20)``."""
    import json
    import math

    from lmforge.presets import resolve_config

    def build(
        name,
        *,
        status="finished",
        steps=60,
        total_steps=None,
        eval_every=20,
        log_every=2,
        tokens_per_step=512,
        pid=None,
        started_at="2025-01-01T10:00:00Z",
        ended_at="2025-01-01T10:05:00Z",
        preset="tiny",
        overrides=None,
        loss_scale=1.0,
        truncated_tail=False,
        checkpoints=("best", "step-60"),
        error=None,
    ):
        run_dir = workspace_dir / "runs" / name
        run_dir.mkdir(parents=True)
        overrides = {("run",): name, ("train", "steps"): total_steps or steps, **(overrides or {})}
        config = resolve_config(preset=preset, overrides=overrides)
        (run_dir / "config.toml").write_text(config.to_toml())
        lines, best = [], (None, None)
        for step in range(log_every, steps + 1, log_every):
            loss = loss_scale * (3.0 + 7.0 * math.exp(-step / 15))
            lines.append(
                {
                    "kind": "train",
                    "step": step,
                    "loss": loss,
                    "lr": 1e-3,
                    "grad_norm": 1.0,
                    "tokens_per_sec": 1000.0 + step,
                    "mfu": None,
                    "tokens": step * tokens_per_step,
                    "time": float(step),
                }
            )
            if step % eval_every == 0:
                val = loss + 0.2
                lines.append(
                    {
                        "kind": "eval",
                        "step": step,
                        "val_loss": val,
                        "val_ppl": math.exp(val),
                        "tokens": step * tokens_per_step,
                        "time": float(step),
                    }
                )
                if best[0] is None or val < best[0]:
                    best = (val, step)
        text = "".join(json.dumps(r) + "\n" for r in lines)
        if truncated_tail:
            text += '{"kind": "train", "step": 99'
        (run_dir / "metrics.jsonl").write_text(text)
        (run_dir / "run.json").write_text(
            json.dumps(
                {
                    "name": name,
                    "status": status,
                    "started_at": started_at,
                    "ended_at": None if status == "running" else ended_at,
                    "step": steps,
                    "total_steps": total_steps or steps,
                    "tokens": steps * tokens_per_step,
                    "best_val_loss": best[0],
                    "best_step": best[1],
                    "dataset": "wikitext-2",
                    "tokenizer": {"name": "bytes", "sha256": "0" * 64},
                    "wandb_id": None,
                    "pid": pid,
                    "lmforge_version": "0.1.0",
                    "error": error,
                }
            )
        )
        for ckpt in checkpoints:
            d = run_dir / "checkpoints" / ckpt
            d.mkdir(parents=True)
            (d / "model.safetensors").write_bytes(b"\0" * 1000)
            step = steps if ckpt == "best" else int(ckpt.split("-")[1])
            (d / "meta.json").write_text(
                json.dumps(
                    {
                        "format_version": 1,
                        "kind": "best" if ckpt == "best" else "light",
                        "run": name,
                        "step": step,
                        "tokens": step * tokens_per_step,
                        "val_loss": best[0],
                        "config": config.to_dict(),
                        "tokenizer": {"name": "bytes", "sha256": "0" * 64},
                        "dataset": "wikitext-2",
                        "created_at": ended_at,
                        "lmforge_version": "0.1.0",
                        "files": {"model.safetensors": 1000},
                    }
                )
            )
        return run_dir

    return build


# ----------------------------------------------------------------------------- training (trainer, train CLI)


@pytest.fixture(scope="session")
def _prepared_bytes_workspace(tmp_path_factory):
    from data_fixtures import write_wikitext

    from lmforge.data.prepare import prepare_dataset
    from lmforge.workspace import Workspace

    root = tmp_path_factory.mktemp("train-data")
    source = root / "source"
    write_wikitext(source, sizes=(("train", 80), ("validation", 8), ("test", 2)))
    prepare_dataset(Workspace.resolve(root / "ws"), "wikitext-2", source=source, tokenizer="bytes")
    return root / "ws" / "datasets"


@pytest.fixture
def train_workspace(workspace_dir, _prepared_bytes_workspace):
    """``workspace_dir`` holding a prepared byte-level ``wikitext-2`` (tens of thousands of train tokens)."""
    import shutil

    shutil.copytree(_prepared_bytes_workspace, workspace_dir / "datasets")
    return workspace_dir


# Tiny, fast training options (CPU, one thread, no W&B) as config overrides and as CLI flags.
TINY_TRAIN = {
    ("preset",): "tiny",
    ("data", "name"): "wikitext-2",
    ("data", "stride"): 32,
    ("model", "block_size"): 32,
    ("model", "n_layer"): 2,
    ("model", "n_head"): 2,
    ("model", "n_embd"): 32,
    ("model", "dropout"): 0.0,
    ("train", "steps"): 20,
    ("train", "batch_size"): 4,
    ("train", "grad_accum"): 1,
    ("train", "device"): "cpu",
    # fp32 whatever the CPU: dtype=auto picks bf16 on CPUs with bf16 units, and the tests that
    # compare two runs for equality must not depend on the machine they run on
    ("train", "dtype"): "fp32",
    ("train", "threads"): 1,
    ("train", "eval_interval"): 10,
    ("train", "eval_tokens"): 256,
    ("optim", "lr"): 3e-3,
    ("optim", "min_lr"): 3e-4,
    ("optim", "warmup_steps"): 2,
    ("logging", "log_interval"): 1,
    ("logging", "wandb"): "disabled",
    ("logging", "sample_tokens"): 4,
}


@pytest.fixture
def tiny_train_config():
    """``tiny_train_config(steps=40, dropout=0.1, ...)``: a TrainingConfig for a run of seconds."""
    from lmforge.config import TrainingConfig, config_fields
    from lmforge.presets import resolve_config

    by_flag = {f.path[-1]: f.path for f in config_fields()}

    def build(**changes) -> TrainingConfig:
        overrides = {k: v for k, v in TINY_TRAIN.items() if k != ("preset",)}
        for key, value in changes.items():
            overrides[by_flag[key]] = value
        return resolve_config(preset="tiny", overrides=overrides)

    return build


def tiny_train_flags(**changes) -> list[str]:
    """The same tiny config as ``lmforge train`` flags (``steps=30`` -> ``--steps 30``)."""
    from lmforge.config import config_fields

    flag_of = {f.path: f.flag for f in config_fields()}
    flags: list[str] = []
    values = {**TINY_TRAIN}
    by_name = {path[-1]: path for path in flag_of}
    for key, value in changes.items():
        values[by_name[key]] = value
    for path, value in values.items():
        flags += [f"--{flag_of[path]}", str(value)]
    return flags


@pytest.fixture
def train_flags():
    return tiny_train_flags


# ----------------------------------------------------------------------------- data (tests/data_fixtures.py)

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # so test modules can `import data_fixtures` too
from data_fixtures import byte_tokenizer, data_ws, ranks_file, wikitext_dir  # noqa: E402, F401, I001
