"""Help and messages read clean at 80 columns: usage lines name arguments plainly, flags
show no type, defaults are the real ones (and the presets' where they differ), the
panels leave the help text room, ``lmforge info`` is a table, counts agree with their word."""

from __future__ import annotations

import json

import pytest

from lmforge.cli.main import app
from lmforge.units import plural

COMMANDS = [
    [],
    ["info"],
    ["train"],
    ["eval"],
    ["generate"],
    ["tokenizer", "train"],
    ["tokenizer", "list"],
    ["tokenizer", "show"],
    ["data", "prepare"],
    ["data", "list"],
    ["data", "info"],
    ["ckpt", "list"],
    ["ckpt", "show"],
    ["ckpt", "prune"],
    ["ckpt", "export"],
    ["ckpt", "import"],
    ["runs", "list"],
    ["runs", "show"],
    ["runs", "compare"],
    ["runs", "rm"],
]


@pytest.fixture
def narrow(monkeypatch):
    import typer.rich_utils

    monkeypatch.setenv("TERMINAL_WIDTH", "80")
    monkeypatch.setenv("COLUMNS", "80")
    # Typer reads TERMINAL_WIDTH once, when its help renderer is first imported
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 80)


def _help(runner, args):
    result = runner.invoke(app, [*args, "--help"], prog_name="lmforge")
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "lmforge")
def test_help_reads_clean_at_80_columns(runner, narrow, args):
    text = _help(runner, args)
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage, usage
    assert "<bool>" not in text
    assert "[default: (" not in text
    assert "PRESETS" not in text  # an internal constant, not something a user can look up
    assert max(len(line) for line in text.splitlines()) <= 80


@pytest.mark.parametrize(
    ("args", "usage"),
    [
        (["data", "prepare"], "Usage: lmforge data prepare [OPTIONS] NAME"),
        (["eval"], "Usage: lmforge eval [OPTIONS] CKPT..."),
        (["generate"], "Usage: lmforge generate [OPTIONS] CKPT [PROMPT]"),
    ],
)
def test_usage_lines_name_arguments_plainly(runner, narrow, args, usage):
    assert usage in _help(runner, args)


def test_train_defaults_are_the_presets(runner, narrow):
    text = " ".join(_help(runner, ["train"]).replace("│", " ").split())  # the panels' text, unwrapped
    assert "[default: gpt2]" in text
    assert "[default: 1024; tiny: 256]" in text  # --block-size: GPT-2's, and tiny's own
    assert "[default: 12 (gpt2), set by --preset]" in text  # --n-layer differs in every preset
    assert "(--no-bias: off) [default: on]" in text
    # the Model panel leaves its help a readable width: a short help stays on one line
    assert any("Number of transformer blocks." in line for line in _help(runner, ["train"]).splitlines())


def test_negative_flags_still_work(cli):
    r = cli("train", "--preset", "tiny", "--no-bias", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    start = r.stdout.index("{")
    assert json.loads(r.stdout[start:])["config"]["model"]["bias"] is False
    both = cli("train", "--bias", "--no-bias", "--dry-run")
    assert both.exit_code == 2 and "--bias and --no-bias both given" in both.stderr


def test_info_is_a_table_and_json_stays(cli):
    table = cli("info")
    assert table.exit_code == 0, table.stderr
    assert "{" not in table.stdout and "workspace exists" in table.stdout
    assert "tokenizer bytes" in table.stdout and "ok (built in)" in table.stdout
    facts = json.loads(cli("info", "--json").stdout)
    assert facts["tokenizers"]["bytes"] == "ok (built in)" and facts["workspace_exists"] is True


def test_counts_agree_with_their_word(cli, make_ckpt_run):
    assert (plural(1, "directory", "directories"), plural(2, "directory", "directories")) == (
        "1 directory",
        "2 directories",
    )
    assert plural(1_000, "checkpoint") == "1,000 checkpoints"
    make_ckpt_run("r", [(10, "full")])
    listed = cli("ckpt", "list")
    assert "1 checkpoint," in listed.stderr
