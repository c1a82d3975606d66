"""``lmforge ckpt``: list, show, prune, export, import through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmforge.cli import common as cli_common

STEPS = [(100, "light"), (200, "full"), (300, "light"), (400, "light"), (300, "best")]


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture
def two_runs(make_ckpt_run):
    old = make_ckpt_run(
        "old-run", [(10, "light"), (20, "light"), (20, "best")], started_at="2024-01-01T00:00:00Z"
    )
    new = make_ckpt_run("new-run", STEPS, started_at="2024-02-01T00:00:00Z")
    return old, new


# ----------------------------------------------------------------------------- list / show


def test_list_every_run_and_one(cli, two_runs):
    r = cli("ckpt", "list")
    assert r.exit_code == 0, r.output
    for text in ("old-run", "new-run", "step-400", "best", "full", "light", "4.600"):
        assert text in r.stdout
    rows = json.loads(cli("ckpt", "list", "--json").stdout)
    assert len(rows) == 3 + 5
    assert set(rows[0]) >= {"run", "name", "kind", "step", "tokens", "val_loss", "size_bytes", "created_at"}
    only = json.loads(cli("ckpt", "list", "latest", "--json").stdout)
    assert {c["run"] for c in only} == {"new-run"}
    assert [c["name"] for c in only] == ["step-100", "step-200", "step-300", "best", "step-400"]


def test_list_empty_and_unknown_run(cli):
    r = cli("ckpt", "list")
    assert r.exit_code == 0 and "No checkpoints" in r.stderr
    assert json.loads(cli("ckpt", "list", "--json").stdout) == []
    r = cli("ckpt", "list", "nope")
    assert r.exit_code == 2 and "unknown run 'nope'" in r.stderr


def test_show(cli, two_runs):
    (two_runs[1] / "metrics.jsonl").write_text(
        json.dumps({"kind": "train", "step": 290, "loss": 3.25, "lr": 1e-4}) + "\n"
    )
    r = cli("ckpt", "show", "new-run:step-300")
    assert r.exit_code == 0, r.output
    for text in ("step-300", "model.safetensors", "meta.json", "bytes", "3.2500", "[model]", "n_layer = 2"):
        assert text in r.stdout, text
    data = json.loads(cli("ckpt", "show", "best", "--json").stdout)
    assert data["meta"]["kind"] == "best" and data["meta"]["run"] == "new-run"
    assert data["meta"]["tokenizer"]["name"] == "bytes"
    assert {f["name"] for f in data["files"]} == {"model.safetensors", "meta.json"}
    assert data["metrics"]["val_loss"] == pytest.approx(4.7) and data["parameters"] > 0
    full = json.loads(cli("ckpt", "show", "new-run:step-200", "--json").stdout)
    assert "trainer.pt" in {f["name"] for f in full["files"]}


def test_show_unknown_checkpoint(cli, two_runs):
    r = cli("ckpt", "show", "new-run:step-999")
    assert r.exit_code == 2 and "no checkpoint 'step-999'" in r.stderr and "Hint" in r.stderr


# ----------------------------------------------------------------------------- prune


def test_prune_dry_run_changes_nothing(cli, two_runs, workspace_dir):
    before = tree(workspace_dir)
    r = cli("ckpt", "prune", "--keep-last", "1", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "Would delete" in r.stdout and "step-100" in r.stdout and "step-300" in r.stdout
    assert "Pruning the newest run, new-run" in r.stderr and "would delete 2" in r.stderr
    assert tree(workspace_dir) == before
    report = json.loads(cli("ckpt", "prune", "--all", "--keep-last", "1", "--dry-run", "--json").stdout)
    assert report["freed_bytes"] == 0 and report["would_free_bytes"] > 0
    assert {r["run"]: [d["name"] for d in r["delete"]] for r in report["runs"]} == {
        "old-run": ["step-10"],
        "new-run": ["step-100", "step-300"],
    }
    assert tree(workspace_dir) == before


def test_prune_without_terminal_needs_yes(cli, two_runs, workspace_dir):
    before = tree(workspace_dir)
    r = cli("ckpt", "prune", "--keep-last", "1")
    assert r.exit_code == 2 and "without confirmation" in r.stderr and "--yes" in r.stderr
    assert tree(workspace_dir) == before


def test_prune_asks_on_a_terminal(cli, two_runs, monkeypatch):
    _, new = two_runs
    monkeypatch.setattr(cli_common, "interactive", lambda: True)
    r = cli("ckpt", "prune", "new-run", "--keep-last", "1", input="n\n")
    assert r.exit_code == 1 and "Nothing deleted" in r.stderr
    assert (new / "checkpoints" / "step-100").is_dir()
    r = cli("ckpt", "prune", "new-run", "--keep-last", "1", input="y\n")
    assert r.exit_code == 0, r.output
    assert "Delete 2 directories" in r.stderr and "freed" in r.stderr
    assert sorted(p.name for p in (new / "checkpoints").iterdir()) == ["best", "step-200", "step-400"]


def test_prune_yes_uses_the_runs_keep_last_and_spares_tmp_dirs(cli, make_ckpt_run):
    run = make_ckpt_run("r", STEPS, keep_last=2)
    tmp = run / "checkpoints" / ".tmp-step-500-abcd"
    tmp.mkdir()
    report = json.loads(cli("ckpt", "prune", "r", "--yes", "--json").stdout)
    assert [Path(p).name for p in report["deleted"]] == ["step-100"]
    assert report["freed_bytes"] > 0 and [i["name"] for i in report["runs"][0]["refused"]] == [tmp.name]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        tmp.name,
        "best",
        "step-200",
        "step-300",
        "step-400",
    ]
    r = cli("ckpt", "prune", "r", "--yes")
    assert r.exit_code == 0 and "Nothing to prune" in r.stderr


def test_prune_bad_arguments(cli, two_runs):
    r = cli("ckpt", "prune", "new-run", "--all")
    assert r.exit_code == 2 and "not both" in r.stderr
    assert cli("ckpt", "prune", "--keep-last", "-1").exit_code == 2
    r = cli("ckpt", "prune", "ghost")
    assert r.exit_code == 2 and "unknown run 'ghost'" in r.stderr


# ----------------------------------------------------------------------------- export / import


def test_export_hf_matches_transformers_and_imports_back(cli, two_runs, tmp_path, workspace_dir):
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    from lmforge.checkpoint.store import load_model

    out = tmp_path / "hf"
    r = cli("ckpt", "export", "best", "--format", "hf", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt", "lmforge.json"} <= {
        p.name for p in out.iterdir()
    }
    ours, _, _ = load_model(two_runs[1] / "checkpoints" / "best")
    theirs = transformers.GPT2LMHeadModel.from_pretrained(str(out)).eval()
    idx = torch.randint(0, 257, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(idx)[0] - theirs(idx).logits).abs().max().item() < 1e-4

    r = cli("ckpt", "import", str(out), "--as", "back", "--json")
    assert r.exit_code == 0, r.output
    imported = json.loads(r.stdout)
    assert imported["run"] == "back" and imported["tokenizer"]["name"] == "bytes"
    # the export carried the training config: the round trip keeps it
    show = json.loads(cli("ckpt", "show", "back", "--json").stdout)
    assert show["meta"]["config"]["preset"] == "tiny" and show["meta"]["config"]["run"] == "back"
    out2 = tmp_path / "hf2"
    assert cli("ckpt", "export", "back", "--out", str(out2)).exit_code == 0
    a, b = load_file(str(out / "model.safetensors")), load_file(str(out2 / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_export_safetensors_is_a_standalone_checkpoint(cli, two_runs, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "st"
    r = cli("ckpt", "export", "new-run:step-200", "--format", "safetensors", "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    assert set(json.loads(r.stdout)["files"]) == {"model.safetensors", "meta.json"}
    src = load_file(str(two_runs[1] / "checkpoints" / "step-200" / "model.safetensors"))
    dst = load_file(str(out / "model.safetensors"))
    assert src.keys() == dst.keys() and all(torch.equal(src[k], dst[k]) for k in src)
    shown = json.loads(cli("ckpt", "show", str(out), "--json").stdout)
    assert shown["meta"]["kind"] == "light" and shown["meta"]["exported_from"]["checkpoint"] == "step-200"
    r = cli("ckpt", "import", str(out), "--as", "from-st")
    assert r.exit_code == 0, r.output


def test_export_refuses_non_empty_out_and_bad_format(cli, two_runs, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = cli("ckpt", "export", "best", "--out", str(out))
    assert r.exit_code == 2 and "not empty" in r.stderr and "--force" in r.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    r = cli("ckpt", "export", "best", "--format", "onnx", "--out", str(tmp_path / "x"))
    assert r.exit_code == 2 and not (tmp_path / "x").exists()
    r = cli("ckpt", "export", "nope:best", "--out", str(tmp_path / "y"))
    assert r.exit_code == 2 and "unknown checkpoint" in r.stderr
    r = cli("ckpt", "export", "best", "--out", str(out), "--force")  # --force replaces a previous export only
    assert r.exit_code == 2 and "not a previous export" in r.stderr and "keep.txt" in r.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()
    assert cli("ckpt", "export", "best", "--out", str(out)).exit_code == 0
    r = cli("ckpt", "export", "best", "--out", str(out), "--force")
    assert r.exit_code == 0 and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "ws"]  # no temporary directories left


def test_export_into_its_own_checkpoint_is_refused(cli, two_runs):
    best = two_runs[1] / "checkpoints" / "best"
    r = cli("ckpt", "export", "best", "--out", str(best), "--force")
    assert r.exit_code == 2 and "would replace the checkpoint" in r.stderr
    assert (best / "meta.json").is_file()


def _hf_dir(path: Path, **config) -> Path:
    from lmforge.config import ModelConfig
    from lmforge.data.tokenizer import bytes_tokenizer
    from lmforge.interop import hf_export as hf
    from lmforge.model.gpt import GPT

    mc = ModelConfig(vocab_size=257, block_size=16, n_layer=1, n_head=2, n_embd=8, dropout=0.0)
    path.mkdir()
    hf.write_hf_dir(GPT(mc).state_dict(), mc, path, tokenizer=bytes_tokenizer())
    cfg = json.loads((path / "config.json").read_text()) | config
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def test_import_errors(cli, tmp_path, make_ckpt_run):
    r = cli("ckpt", "import", str(_hf_dir(tmp_path / "relu", activation_function="relu")))
    assert r.exit_code == 2 and "activation_function 'relu'" in r.stderr
    r = cli("ckpt", "import", str(_hf_dir(tmp_path / "neo", model_type="gpt_neo")))
    assert r.exit_code == 2 and "model_type" in r.stderr
    r = cli("ckpt", "import", str(tmp_path / "missing"))
    assert r.exit_code == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("ckpt", "import", str(empty))
    assert r.exit_code == 2 and "neither a Hugging Face model directory" in r.stderr
    make_ckpt_run("taken", [(1, "light")])
    r = cli("ckpt", "import", str(_hf_dir(tmp_path / "ok")), "--as", "taken")
    assert r.exit_code == 2 and "already exists" in r.stderr
    r = cli("ckpt", "import", str(tmp_path / "ok"), "--as", "bad:name")
    assert r.exit_code == 2 and "invalid run name" in r.stderr
    r = cli("ckpt", "import", str(tmp_path / "ok"))
    assert r.exit_code == 0 and "Imported ok" in r.stdout


def test_import_refuses_a_malicious_pickle(cli, tmp_path, workspace_dir):
    src = _hf_dir(tmp_path / "evil")
    (src / "model.safetensors").unlink()
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('pwned')",))

    torch.save({"x": Payload()}, src / "pytorch_model.bin")
    r = cli("ckpt", "import", str(src))
    assert r.exit_code == 1 and "refusing to load" in r.stderr
    assert not marker.exists() and not (workspace_dir / "runs" / "evil").exists()


# ----------------------------------------------------------------------------- a real process


def test_ckpt_as_a_real_process(two_runs, workspace_dir):
    """The console entry point, with a real non-terminal stdin: JSON alone on stdout."""
    env = {**os.environ, "LMFORGE_HOME": str(workspace_dir)}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmforge",
            "ckpt",
            "prune",
            "--all",
            "--keep-last",
            "0",
            "--dry-run",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["dry_run"] and len(report["runs"]) == 2 and report["would_free_bytes"] > 0
