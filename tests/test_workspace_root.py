"""A workspace root that is a file (``LMFORGE_HOME`` or ``--workspace``): one line from every
command, nothing created (issue 27 item 14)."""

from __future__ import annotations

import pytest

from lmforge.errors import UsageError
from lmforge.workspace import Workspace

COMMANDS = [
    ["data", "list"],
    ["data", "prepare", "corpus.txt"],
    ["ckpt", "list"],
    ["ckpt", "import", "some-dir"],
    ["runs", "list"],
    ["train", "--preset", "tiny", "--dry-run"],
    ["eval", "best"],
]


@pytest.fixture
def afile(tmp_path):
    path = tmp_path / "afile"
    path.write_text("not a workspace")
    return path


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a[:2]))
@pytest.mark.parametrize("how", ["env", "option", "under"])
def test_every_command_says_the_workspace_is_a_file(runner, afile, tmp_path, monkeypatch, args, how):
    from lmforge.cli.main import app

    root = afile / "sub" if how == "under" else afile
    (tmp_path / "corpus.txt").write_text("hello\n")
    (tmp_path / "some-dir").mkdir()
    monkeypatch.chdir(tmp_path)
    if how == "option":
        r = runner.invoke(app, ["--workspace", str(root), *args], prog_name="lmforge")
    else:
        monkeypatch.setenv("LMFORGE_HOME", str(root))
        r = runner.invoke(app, args, prog_name="lmforge")
    assert r.exit_code == 2, r.output
    option = "--workspace" if how == "option" else "LMFORGE_HOME"
    assert f"the workspace {root} ({option})" in r.stderr and "not a directory" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 3
    assert afile.read_text() == "not a workspace"


def test_a_missing_root_is_fine(tmp_path):
    assert Workspace.resolve(tmp_path / "new" / "ws").root == (tmp_path / "new" / "ws").resolve()
    with pytest.raises(UsageError, match="lies under the file"):
        Workspace.resolve(tmp_path / "f" / "ws") if (tmp_path / "f").write_text("x") else None
