"""The root options after the command (``lmforge data prepare wikitext-2 -q``), ``-V``, and
Click's usage errors rendered as lmforge's one red line and a hint (exit code 2)."""

from __future__ import annotations

import json

import pytest
from data_fixtures import write_wikitext

from lmforge import __version__
from lmforge.cli.main import app


@pytest.fixture
def src(tmp_path):
    write_wikitext(tmp_path / "src")
    return str(tmp_path / "src")


def test_quiet_after_the_command(runner, tmp_path, src):
    ws = tmp_path / "ws"
    args = ["data", "prepare", "wikitext-2", "--source", src, "--tokenizer", "bytes"]
    loud = runner.invoke(app, ["--workspace", str(ws), *args, "--as", "a"], prog_name="lmforge")
    assert loud.exit_code == 0 and "Prepared" in loud.stderr
    for flag in ("-q", "--quiet"):
        quiet = runner.invoke(app, ["--workspace", str(ws), *args, "--as", f"b{flag}", flag])
        assert quiet.exit_code == 0, quiet.stderr
        assert quiet.stderr == ""


def test_workspace_and_verbose_after_the_command(runner, tmp_path, src):
    ws = tmp_path / "late-ws"
    r = runner.invoke(
        app,
        [
            "data",
            "prepare",
            "wikitext-2",
            "--source",
            src,
            "--tokenizer",
            "bytes",
            "--workspace",
            str(ws),
            "-qv",
        ],
    )
    assert r.exit_code == 0, r.stderr
    assert (ws / "datasets" / "wikitext-2" / "meta.json").is_file()
    listed = runner.invoke(app, ["data", "list", "--json", f"--workspace={ws}"])
    assert [d["name"] for d in json.loads(listed.stdout)["datasets"]] == ["wikitext-2"]
    # the later --workspace wins, as an option given twice does
    other = runner.invoke(
        app, ["--workspace", str(tmp_path / "x"), "data", "list", "--json", "--workspace", str(ws)]
    )
    assert json.loads(other.stdout)["workspace"] == str(ws)


def test_an_option_value_is_never_taken_for_a_root_option(runner, tmp_path):
    (tmp_path / "c.txt").write_text("one -q two -q three")
    ws = tmp_path / "ws"
    r = runner.invoke(
        app,
        ["--workspace", str(ws), "data", "prepare", str(tmp_path / "c.txt"), "--doc-separator", "-q"]
        + ["--tokenizer", "bytes", "--as", "sep", "--json"],
    )
    assert r.exit_code == 0, r.stderr
    assert "Prepared" in r.stderr  # -q was the separator, not --quiet
    meta = json.loads((ws / "datasets" / "sep" / "meta.json").read_text())
    assert meta["splits"]["train"]["documents"] == 3


def test_version_short_and_long(runner):
    for flag in ("-V", "--version"):
        r = runner.invoke(app, [flag])
        assert r.exit_code == 0 and r.stdout.strip() == f"lmforge {__version__}"


@pytest.mark.parametrize(
    ("args", "message", "hint"),
    [
        (["data", "prepare", "--bogus"], "Error: No such option: --bogus", "see `lmforge data prepare -h`"),
        (
            ["ckpt", "export", "best", "--format", "onnx", "--out", "x"],
            "Error: Invalid value for '--format' / '-f': 'onnx' is not one of 'hf', 'safetensors'.",
            "see `lmforge ckpt export -h`",
        ),
        (["data", "info"], "Error: Missing argument", "see `lmforge data info -h`"),
        (["nosuch"], "Error: No such command 'nosuch'", "see `lmforge -h`"),
    ],
)
def test_usage_errors_are_one_line_and_a_hint(runner, args, message, hint):
    r = runner.invoke(app, args, prog_name="lmforge")
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith(message), r.stderr
    assert lines[1] == f"Hint: {hint}"
    assert len(lines) == 2 and "╭" not in r.stderr and "Value error" not in r.stderr


def test_a_group_without_a_command_still_shows_its_help(runner):
    r = runner.invoke(app, ["data"], prog_name="lmforge")
    assert "prepare" in r.output and "Error" not in r.output
