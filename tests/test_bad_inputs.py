"""Odd inputs get one line naming the thing and the fix, never a traceback: a device or a FIFO
as a corpus, an empty run name."""

from __future__ import annotations

import os

import pytest


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_data_prepare_refuses_what_is_not_a_file_or_folder(cli, tmp_path, kind):
    if kind == "device":
        path = "/dev/zero"
        if not os.path.exists(path):
            pytest.skip("no /dev/zero here")
    else:
        path = str(tmp_path / "x.txt")
        os.mkfifo(path)  # opening it would block until a writer came
    result = cli("data", "prepare", path, "--tokenizer", "bytes")
    assert result.exit_code == 1, result.stderr
    assert f"{path} is not a regular file or a folder" in result.stderr
    assert "Traceback" not in result.stderr and "NotADirectoryError" not in result.stderr


def test_an_empty_run_name_is_refused(cli, train_workspace, train_flags):
    result = cli("--workspace", str(train_workspace), "train", *train_flags(steps=1), "--run", "")
    assert result.exit_code == 2, result.stderr
    assert "--run '' is empty" in result.stderr
    assert not (train_workspace / "runs").exists() or not any((train_workspace / "runs").iterdir())
