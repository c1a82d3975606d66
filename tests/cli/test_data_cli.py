"""``lmforge data prepare|list|info`` through the CLI: output, --json, exit codes, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from data_fixtures import write_ranks_file, write_wikitext


def test_data_help_has_examples(cli):
    for args in (
        ["data", "--help"],
        ["data", "prepare", "--help"],
        ["data", "list", "--help"],
        ["data", "info", "--help"],
    ):
        result = cli(*args)
        assert result.exit_code == 0
        assert "lmforge data" in result.stdout


def test_prepare_list_info(cli, wikitext_dir, workspace_dir):
    src, articles = wikitext_dir
    result = cli("data", "prepare", "wikitext-2", "--source", str(src), "--tokenizer", "bytes")
    assert result.exit_code == 0, result.stderr
    assert "Prepared wikitext-2" in result.stderr
    assert "train:" in result.stderr and "M tok/s)" in result.stderr  # the plain per-split line
    assert "validation" in result.stdout  # the result table
    assert (workspace_dir / "datasets" / "wikitext-2" / "meta.json").is_file()

    again = cli("data", "prepare", "wikitext-2", "--source", str(src), "--tokenizer", "bytes")
    assert again.exit_code == 0 and "already prepared" in again.stderr and "--force" in again.stderr

    listing = cli("data", "list")
    assert listing.exit_code == 0 and "wikitext-2" in listing.stdout and "bytes" in listing.stdout
    as_json = json.loads(cli("data", "list", "--json").stdout)
    (entry,) = as_json["datasets"]
    assert entry["name"] == "wikitext-2" and entry["dtype"] == "uint16"
    assert {s: m["documents"] for s, m in entry["splits"].items()} == {s: len(a) for s, a in articles.items()}

    info = cli("data", "info", "wikitext-2")
    assert info.exit_code == 0 and "uint16" in info.stdout and "257" in info.stdout
    detail = json.loads(cli("data", "info", "wikitext-2", "--json").stdout)
    assert detail["splits"]["test"]["words"] == len((src / "wiki.test.raw").read_text().split())
    assert detail["tokenizer"]["name"] == "bytes"


def test_quiet_prints_no_progress(cli, wikitext_dir):
    result = cli(
        "-q", "data", "prepare", "wikitext-2", "--source", str(wikitext_dir[0]), "--tokenizer", "bytes"
    )
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert "wikitext-2" in result.stdout


def test_prepare_json_splits_alias_force(cli, wikitext_dir, workspace_dir):
    src, _ = wikitext_dir
    args = ["data", "prepare", "wikitext-103-raw-v1", "--source", str(src), "--tokenizer", "bytes"]
    result = cli(*args, "--splits", "validation,test", "--as", "wt", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["name"] == "wt" and not out["already_prepared"]
    assert list(out["meta"]["splits"]) == ["validation", "test"]
    forced = cli(*args, "--splits", "validation,test", "--as", "wt", "--force", "--json")
    assert forced.exit_code == 0 and not json.loads(forced.stdout)["already_prepared"]


def test_ranks_file_tokenizer_by_name(cli, wikitext_dir, workspace_dir):
    (workspace_dir / "tokenizers").mkdir()
    write_ranks_file(workspace_dir / "tokenizers" / "small.tiktoken")
    result = cli("data", "prepare", "wikitext-2", "--source", str(wikitext_dir[0]), "--tokenizer", "small")
    assert result.exit_code == 0, result.stderr
    assert json.loads(cli("data", "info", "wikitext-2", "--json").stdout)["vocab_size"] == 263


def test_text_corpus_with_separator(cli, tmp_path, workspace_dir):
    corpus = tmp_path / "notes.txt"
    corpus.write_text("\n\n".join(f"note {i} about things" for i in range(20)))
    result = cli(
        "data",
        "prepare",
        str(corpus),
        "--doc-separator",
        "\\n\\n",
        "--val-fraction",
        "0.1",
        "--tokenizer",
        "bytes",
    )
    assert result.exit_code == 0, result.stderr
    meta = json.loads((workspace_dir / "datasets" / "notes" / "meta.json").read_text())
    assert meta["splits"]["train"]["documents"] == 18 and meta["splits"]["validation"]["documents"] == 2


def test_errors_are_one_line_with_exit_codes(cli, wikitext_dir, tmp_path, workspace_dir):
    src, _ = wikitext_dir

    def check(args, code, *needles):
        result = cli(*args)
        assert result.exit_code == code, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        # one error line (after the progress bar, when it had started)
        assert [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
        for needle in needles:
            assert needle in result.stderr, (needle, result.stderr)
        return result

    check(["data", "info", "nope"], 2, "unknown dataset 'nope'", "data prepare FILE-OR-HUB-ID --as nope")
    check(["data", "prepare", "nonsense"], 2, "unknown dataset 'nonsense'")
    check(
        ["data", "prepare", "wikitext-2", "--source", str(src), "--tokenizer", "nope"], 2, "unknown tokenizer"
    )
    check(
        ["data", "prepare", str(src / "wiki.test.raw"), "--val-fraction", "2", "--tokenizer", "bytes"],
        2,
        "between 0 and 1",
    )
    check(
        ["data", "prepare", "wikitext-2", "--source", str(tmp_path / "nowhere"), "--tokenizer", "bytes"],
        2,
        "does not",
    )
    (src / "wiki.train.raw").unlink()
    check(  # a source without the file is the user's mistake, as the README says: exit 2
        ["data", "prepare", "wikitext-2", "--source", str(src), "--tokenizer", "bytes"],
        2,
        "wiki.train.raw",
        "--splits validation,test",
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    check(["data", "prepare", str(empty), "--tokenizer", "bytes"], 1, "empty")
    bad_num = cli("data", "prepare", "wikitext-2", "--num-proc", "0")
    assert bad_num.exit_code == 2
    assert (
        not (workspace_dir / "datasets").exists()
        or [p.name for p in (workspace_dir / "datasets").iterdir()] == []
    )


def test_data_list_empty(cli):
    result = cli("data", "list")
    assert result.exit_code == 0 and "No datasets" in result.stderr
    assert json.loads(cli("data", "list", "--json").stdout)["datasets"] == []


def test_prepare_as_a_real_subprocess(tmp_path):
    """`python -m lmforge data prepare` as a user runs it (console script path, exit code, files)."""
    src = tmp_path / "src"
    write_wikitext(src, sizes=(("validation", 3), ("test", 3)))
    ws = tmp_path / "ws"
    env = {**os.environ, "NO_COLOR": "1"}
    cmd = [sys.executable, "-m", "lmforge", "--workspace", str(ws), "data", "prepare", "wikitext-2"]
    cmd += ["--source", str(src), "--splits", "validation,test", "--tokenizer", "bytes"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    tokens = np.fromfile(ws / "datasets" / "wikitext-2" / "test.bin", dtype=np.uint16)
    assert bytes(tokens[tokens != 256].astype(np.uint8)) == (src / "wiki.test.raw").read_bytes()
