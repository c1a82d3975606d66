"""``ckpt export --force`` (issue 13, item 12) replaces a previous export, never the
workspace, a directory above it, a home directory or a directory with other files."""

from __future__ import annotations

import json
import shutil

import pytest

from lmforge.errors import UsageError
from lmforge.interop import hf_export
from lmforge.interop.hf_export import EXPORT_MARKER, export_checkpoint
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
    reason = "is inside the workspace's datasets/" if where == "datasets" else "lmforge workspace"
    with pytest.raises(UsageError, match=reason):
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
    assert sorted(p.name for p in out.iterdir()) == [EXPORT_MARKER, "meta.json", "model.safetensors"]


@pytest.mark.parametrize("force", [True, False])
def test_no_export_into_the_workspaces_runs_or_datasets(make_ckpt_run, workspace_dir, cli, force):
    """Issue 27 item 1: a light or best checkpoint holds just meta.json + model.safetensors,
    like an export; ``--force`` replaced another run's ``best`` with this one's weights."""
    make_ckpt_run("m1", [(10, "best")], seed=1)
    g1 = make_ckpt_run("g1", [(20, "best")], seed=2)
    best = g1 / "checkpoints" / "best"
    before = {p.name: p.read_bytes() for p in best.iterdir()}
    flags = ["--force"] if force else []
    for out in (best, g1 / "checkpoints" / "new", workspace_dir / "datasets" / "x"):
        r = cli("ckpt", "export", "m1:best", "--format", "safetensors", "--out", str(out), *flags)
        assert r.exit_code == 2, r.output
        assert "inside the workspace's" in r.stderr and "Traceback" not in r.stderr
    assert {p.name: p.read_bytes() for p in best.iterdir()} == before
    assert not (g1 / "checkpoints" / "new").exists() and not (workspace_dir / "datasets").exists()


def test_force_replaces_only_a_marked_export(source, tmp_path, make_ckpt_run):
    """A copy of a checkpoint outside the workspace (no export marker) is not an export."""
    out = tmp_path / "copy"
    out.mkdir()
    for p in source.iterdir():
        (out / p.name).write_bytes(p.read_bytes())
    with pytest.raises(UsageError, match=f"no {EXPORT_MARKER} marker"):
        export_checkpoint(source, out, "safetensors", force=True)
    export_checkpoint(source, tmp_path / "exported", "safetensors")
    assert (tmp_path / "exported" / EXPORT_MARKER).is_file()
    export_checkpoint(source, tmp_path / "exported", "hf", force=True)  # a marked export: replaced
    assert (tmp_path / "exported" / "config.json").is_file()


def test_two_exports_to_the_same_new_out_one_fails(source, tmp_path, monkeypatch):
    """Issue 27 item 2: the second writer to finish must not set aside the first one's
    export and say "Wrote". The race is made certain: while one export writes its staging
    directory, another one runs to completion at the same --out."""
    out = tmp_path / "race"
    real = hf_export._write_export
    calls = []

    def racing(ckpt, out_, format, tmp, workspace):
        calls.append(format)
        if len(calls) == 1:  # the first export: the second one starts and finishes meanwhile
            export_checkpoint(source, out, "safetensors")
        return real(ckpt, out_, format, tmp, workspace)

    monkeypatch.setattr(hf_export, "_write_export", racing)
    with pytest.raises(UsageError, match="was filled by another writer while this export ran"):
        export_checkpoint(source, out, "hf")
    assert sorted(p.name for p in out.iterdir()) == [EXPORT_MARKER, "meta.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("arch, written", [("gpt2", "GPT2LMHeadModel"), ("modern", "NanoChatForCausalLM")])
def test_export_names_a_loader_that_loads_what_was_written(make_ckpt_run, tmp_path, cli, arch, written):
    """Issue 27 item 7: a modern export said to load it with GPT2LMHeadModel (a random GPT-2)."""
    run = make_ckpt_run("m", [(10, "best")])
    if arch == "modern":  # the fixture builds GPT-2s: replace the weights with a ModernGPT's
        from lmforge.checkpoint.store import read_meta, save_checkpoint
        from lmforge.config import TrainingConfig
        from lmforge.model import build_model
        from lmforge.workspace import RunDir

        best = RunDir(run).checkpoint("best")
        meta = read_meta(best)
        config = TrainingConfig.from_dict(meta["config"])
        modern = dict(arch="modern", bias=False, qk_norm=True)
        config = TrainingConfig.from_dict(config.to_dict() | {"model": config.to_dict()["model"] | modern})
        shutil.rmtree(best)
        meta = {k: v for k, v in meta.items() if k not in ("files", "sha256")} | {"config": config.to_dict()}
        save_checkpoint(best, build_model(config.model), meta)
    out = tmp_path / "hf"
    r = cli("ckpt", "export", "m:best", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["architectures"] == [written]
    assert f"transformers.AutoModelForCausalLM.from_pretrained('{out}') (a {written})" in r.stderr
    assert "GPT2LMHeadModel.from_pretrained" not in r.stderr
