"""``ckpt export --force`` (issue 13, item 12) replaces a previous export, never the
workspace, a directory above it, a home directory or a directory with other files."""

from __future__ import annotations

import pytest

from lmforge.errors import UsageError
from lmforge.interop.hf_export import export_checkpoint
from lmforge.workspace import Workspace


@pytest.fixture
def source(make_ckpt_run):
    return make_ckpt_run("r", [(10, "light")]) / "checkpoints" / "step-10"


def _tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("where", ["workspace", "datasets", "parent"])
def test_force_never_replaces_the_workspace_or_what_holds_it(source, tmp_path, where):
    ws = Workspace.resolve(tmp_path / "other" / "ws")  # not the source's: that one is refused anyway
    (ws.datasets_dir / "wikitext-2").mkdir(parents=True)
    (ws.datasets_dir / "wikitext-2" / "meta.json").write_text("{}")
    out = {"workspace": ws.root, "datasets": ws.datasets_dir, "parent": ws.root.parent}[where]
    before = _tree(ws.root)
    reason = "not from an export" if where == "datasets" else "lmforge workspace"
    with pytest.raises(
        UsageError, match=f"not a previous export, so --force will not replace it: .*{reason}"
    ):
        export_checkpoint(source, out, "hf", workspace=ws, force=True)
    assert _tree(ws.root) == before


def test_force_never_replaces_a_home_directory(source, workspace_dir, tmp_path, monkeypatch):
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    (home / "config.json").write_text("{}")  # even one that holds only export-like names
    (home / "model.safetensors").write_text("x")
    monkeypatch.setenv("HOME", str(home))
    for out in (home, home.parent):
        with pytest.raises(UsageError, match="home directory"):
            export_checkpoint(source, out, "hf", workspace=Workspace.resolve(workspace_dir), force=True)
    assert sorted(p.name for p in home.iterdir()) == ["config.json", "model.safetensors"]


def test_force_refuses_a_directory_with_other_files_and_replaces_a_previous_export(source, tmp_path, cli):
    out = tmp_path / "export"
    export_checkpoint(source, out, "hf")
    exported = sorted(p.name for p in out.iterdir())
    assert "config.json" in exported and "model.safetensors" in exported
    (out / "notes.md").write_text("mine")
    r = cli("ckpt", "export", "r:step-10", "--out", str(out), "--force")
    assert r.exit_code == 2 and "notes.md" in r.stderr and "not a previous export" in r.stderr
    assert (out / "notes.md").read_text() == "mine"
    (out / "notes.md").unlink()
    (out / "sub").mkdir()  # a directory inside: not something an export writes
    assert cli("ckpt", "export", "r:step-10", "--out", str(out), "--force").exit_code == 2
    (out / "sub").rmdir()
    r = cli("ckpt", "export", "r:step-10", "--out", str(out), "--force", "--format", "safetensors")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "model.safetensors"]
