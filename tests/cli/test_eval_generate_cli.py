"""``lmforge eval`` and ``lmforge generate`` end to end on a tiny byte-level model."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from lmforge.checkpoint.store import save_checkpoint
from lmforge.config import ModelConfig, TrainingConfig
from lmforge.data.prepare import prepare_dataset
from lmforge.data.store import open_dataset
from lmforge.data.tokenizer import GPT2_RANKS_SHA256, bytes_tokenizer
from lmforge.model.gpt import GPT
from lmforge.workspace import Workspace

WORDS = "the history of model language data train token river city music war king film game year".split()


def article(i: int) -> str:
    body = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(150))
    return f" = Article {i} = \n\n {body} . Ünïcödé € {i} \n\n"


def save(ws: Workspace, run: str, model: GPT, config: TrainingConfig, tokenizer: dict, started: str) -> None:
    run_dir = ws.run_dir(run)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps({"name": run, "started_at": started}))
    meta = {
        "kind": "best",
        "run": run,
        "step": 10,
        "tokens": 1000,
        "val_loss": 5.0,
        "config": config.to_dict(),
        "tokenizer": tokenizer,
        "dataset": "wikitext-2",
    }
    save_checkpoint(run_dir / "checkpoints" / "best", model, meta)


@pytest.fixture(scope="module")
def ws_dir(tmp_path_factory):
    """A workspace with wikitext-2 (bytes tokenizer) and three runs: `tiny` (the newest),
    `uniform` (all logits equal) and `gpt2tok` (made with another tokenizer)."""
    root = tmp_path_factory.mktemp("evalgen")
    src = root / "src"
    src.mkdir()
    for split, n in (("train", 4), ("valid", 2), ("test", 2)):
        (src / f"wiki.{split}.raw").write_text(
            "".join(article(i + 10 * n) for i in range(n)), encoding="utf-8"
        )
    ws = Workspace.resolve(root / "ws")
    prepare_dataset(ws, "wikitext-2", source=src, tokenizer="bytes")
    model_config = ModelConfig(vocab_size=257, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    config = TrainingConfig(preset="tiny", tokenizer="bytes", model=model_config)
    config.data.name = "wikitext-2"
    identity = bytes_tokenizer().identity
    torch.manual_seed(0)
    uniform = GPT(model_config)
    with torch.no_grad():
        uniform.transformer.wte.weight.zero_()
    save(ws, "uniform", uniform, config, identity, "2024-01-01T00:00:00+00:00")
    save(
        ws,
        "gpt2tok",
        GPT(model_config),
        config,
        {"name": "gpt2", "sha256": GPT2_RANKS_SHA256},
        "2024-01-02T00:00:00+00:00",
    )
    save(ws, "tiny", GPT(model_config), config, identity, "2024-02-01T00:00:00+00:00")
    return ws.root


@pytest.fixture
def run_cli(runner, ws_dir):
    from lmforge.cli.main import app

    def invoke(*args: str, input: str | None = None):
        return runner.invoke(app, ["--workspace", str(ws_dir), *args], input=input, prog_name="lmforge")

    return invoke


# ----------------------------------------------------------------------------- eval


def test_eval_json_rows(run_cli, ws_dir):
    result = run_cli("eval", "best", "uniform", "--json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["checkpoint"], r["split"]) for r in rows] == [
        ("best", "validation"),
        ("best", "test"),
        ("uniform", "validation"),
        ("uniform", "test"),
    ]
    assert set(rows[0]) >= {"checkpoint", "split", "loss", "ppl", "word_ppl", "bpb", "tokens"}
    ds = open_dataset(Workspace.resolve(ws_dir), "wikitext-2")
    for r in rows:
        meta = ds.split_meta(r["split"])
        assert r["tokens"] == meta["tokens"] - 1
        # the end-of-text tokens between documents count in loss/ppl, not in word ppl or bpb
        assert r["protocol"] == "stream" and r["ppl_includes_eot"]
        assert r["eot_tokens"] == meta["documents"] - 1
        assert r["text_nll"] < r["loss"] * r["tokens"]
        assert r["word_ppl"] == pytest.approx(math.exp(r["text_nll"] / meta["words"]), rel=1e-6)
        assert r["bpb"] == pytest.approx(r["text_nll"] / math.log(2) / meta["bytes"], rel=1e-6)
    uniform = rows[2]
    assert uniform["ppl"] == pytest.approx(257, rel=1e-5)
    text_tokens = uniform["tokens"] - uniform["eot_tokens"]
    assert uniform["bpb"] == pytest.approx(
        math.log2(257) * text_tokens / ds.split_meta("validation")["bytes"], rel=1e-5
    )


def test_eval_table_and_partial_split(run_cli):
    result = run_cli("eval", "tiny:best", "--split", "test", "--stride", "32", "--batch-size", "2")
    assert result.exit_code == 0, result.stderr
    assert "tiny:best" in result.stdout and "test" in result.stdout and "word ppl" in result.stdout
    result = run_cli("eval", "best", "--max-tokens", "100", "--json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert all(r["tokens"] == 100 and r["word_ppl"] is None and r["bpb"] is None for r in rows)
    assert "partial split" in rows[0]["note"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["nope"], "unknown checkpoint 'nope'"),
        (["best", "--block-size", "64"], "larger than the model's context of 32"),
        (["best", "--stride", "0"], "--stride must be between 1"),
        (["best", "--stride", "33", "--block-size", "32"], "--stride must be between 1"),
        (["best", "--split", "validation,nope"], "has no split 'nope'"),
        (["best", "--data", "missing-data"], "missing-data"),
        (["gpt2tok"], "tokenizer mismatch"),
        (["best", "--device", "tpu9"], "unknown device"),
    ],
)
def test_eval_bad_input(run_cli, args, message):
    result = run_cli("eval", *args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("Error:") == 1


# ----------------------------------------------------------------------------- generate


def test_generate_streams_prompt_and_completion(run_cli):
    result = run_cli("generate", "best", "The history of", "--max-tokens", "20", "--seed", "1")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("The history of")
    assert len(result.stdout) > len("The history of")


def test_generate_stream_equals_no_stream(run_cli):
    args = (
        "generate",
        "best",
        "abc",
        "--max-tokens",
        "15",
        "--seed",
        "3",
        "--top-k",
        "5",
        "--temperature",
        "0.9",
    )
    a, b = run_cli(*args), run_cli(*args, "--no-stream")
    assert a.exit_code == b.exit_code == 0
    assert a.stdout == b.stdout


def test_generate_prompt_from_stdin_and_samples(run_cli):
    result = run_cli(
        "generate", "best", "--greedy", "--max-tokens", "5", "--num-samples", "2", input="From stdin\n"
    )
    assert result.exit_code == 0, result.stderr
    first, second = result.stdout.split("-" * 40 + "\n")
    assert first.startswith("From stdin") and second.startswith("From stdin")
    assert first == second  # greedy


def test_generate_crops_long_prompt_with_warning(run_cli):
    result = run_cli("generate", "best", "x" * 100, "--max-tokens", "3", "--greedy")
    assert result.exit_code == 0, result.stderr
    assert "Warning" in result.stderr and "last 32 tokens" in result.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["best", "hi", "--temperature", "0"], "--greedy"),
        (["best", "hi", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["best", "hi", "--top-p", "0"], "--top-p must be in (0, 1]"),
        (["best", "hi", "--top-k", "0"], "--top-k must be >= 1"),
        (["nope", "hi"], "unknown checkpoint 'nope'"),
        (["tiny:step-5", "hi"], "no checkpoint 'step-5'"),
    ],
)
def test_generate_bad_input(run_cli, args, message):
    result = run_cli("generate", *args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert result.stderr.count("Error:") == 1


# ----------------------------------------------------------------------------- real processes


def _lmforge(ws_dir, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "LMFORGE_HOME": str(ws_dir)}
    return subprocess.run(
        [sys.executable, "-m", "lmforge", *args],
        capture_output=True,
        text=True,
        env=env,
        input=input,
        timeout=120,
    )


def test_eval_subprocess(ws_dir):
    proc = _lmforge(ws_dir, "eval", "best", "--split", "validation", "--json")
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    assert row["split"] == "validation" and row["tokens"] > 0


def test_generate_subprocess(ws_dir):
    proc = _lmforge(ws_dir, "generate", "best", "Hello", "--max-tokens", "8", "--seed", "0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Hello")
