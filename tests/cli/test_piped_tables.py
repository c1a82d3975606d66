"""Tables on a stdout that is not a terminal are not cut at 80 columns (issue 27 item 17):
``runs list | less`` showed ``tiny-wikitext-2-202…`` and dropped columns."""

from __future__ import annotations

import pytest

from lmforge.cli import common as cli_common

LONG = "tiny-wikitext-2-20261206-074500-a-rather-long-suffix-that-a-pipe-must-keep-whole"


@pytest.fixture
def piped_80(monkeypatch):
    """stdout as Rich sees a pipe with no COLUMNS: not a terminal, 80 columns."""
    monkeypatch.setattr(cli_common.out_console, "_width", 80)
    assert not cli_common.out_console.is_terminal  # CliRunner's stdout


def test_runs_list_and_ckpt_list_keep_names_and_columns_whole(cli, make_ckpt_run, piped_80):
    make_ckpt_run(LONG, [(10, "light"), (20, "best")])
    r = cli("runs", "list")
    assert r.exit_code == 0, r.output
    assert LONG in r.stdout and "…" not in r.stdout
    for column in ("preset", "data", "started", "duration", "size"):
        assert column in r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) > 80
    r = cli("ckpt", "list")
    assert r.exit_code == 0 and LONG in r.stdout and "…" not in r.stdout
    r = cli("runs", "show", LONG)
    assert r.exit_code == 0 and "…" not in r.stdout


def test_a_terminal_still_fits_its_width(cli, make_ckpt_run, monkeypatch):
    from lmforge.cli import format as fmt

    monkeypatch.setattr(cli_common.out_console, "_width", 80)
    monkeypatch.setattr(type(cli_common.out_console), "is_terminal", property(lambda self: True))
    assert fmt.table_width(cli_common.out_console) == 80
    make_ckpt_run(LONG, [(10, "light")])
    r = cli("runs", "list")
    assert r.exit_code == 0
    assert "started" not in r.stdout  # dropped to fit 80 columns, as before
