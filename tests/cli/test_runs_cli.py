import json
import os
import subprocess
import sys

import pytest


@pytest.fixture
def three_runs(fake_run):
    """A finished, an interrupted and a failed run."""
    fake_run("tiny-done", status="finished", started_at="2025-01-01T10:00:00Z")
    fake_run(
        "tiny-stopped",
        status="interrupted",
        steps=40,
        total_steps=100,
        started_at="2025-01-02T10:00:00Z",
        overrides={("optim", "lr"): 3e-3},
        checkpoints=("step-40",),
    )
    fake_run(
        "tiny-broke",
        status="failed",
        steps=10,
        eval_every=100,
        error="CUDA out of memory",
        started_at="2025-01-03T10:00:00Z",
        checkpoints=(),
    )


@pytest.fixture
def interactive(monkeypatch):
    import lmforge.cli.common as cli_common

    monkeypatch.setattr(cli_common, "interactive", lambda: True)


def test_list_table_and_json(cli, three_runs):
    result = cli("runs", "list")
    assert result.exit_code == 0, result.stderr
    for text in ("tiny-done", "finished", "tiny-stopped", "interrupted", "40/100", "failed", "5m 00s"):
        assert text in result.stdout
    rows = json.loads(cli("runs", "list", "--json").stdout)
    assert [r["name"] for r in rows] == ["tiny-done", "tiny-stopped", "tiny-broke"]
    assert [r["status"] for r in rows] == ["finished", "interrupted", "failed"]
    keys = {"name", "status", "recorded_status", "preset", "dataset", "step", "total_steps", "tokens"}
    keys |= {"best_val_loss", "best_val_ppl", "best_step", "started_at", "ended_at", "duration_s"}
    keys |= {"size_bytes", "pid", "error", "path", "warnings"}
    assert set(rows[0]) == keys
    assert rows[2]["best_val_loss"] is None and rows[2]["error"] == "CUDA out of memory"


def test_list_empty_workspace(cli, workspace_dir):
    result = cli("runs", "list")
    assert result.exit_code == 0 and result.stdout == ""
    assert "No runs" in result.stderr
    assert json.loads(cli("runs", "list", "--json").stdout) == []
    assert not (workspace_dir / "runs").exists()


def test_list_shows_stale_run(cli, fake_run):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    fake_run("ghost", status="running", pid=proc.pid)
    assert json.loads(cli("runs", "list", "--json").stdout)[0]["status"] == "stale"
    assert "stale" in cli("runs", "list").stdout


def test_show(cli, three_runs, workspace_dir):
    from matplotlib.image import imread

    result = cli("runs", "show", "tiny-stopped")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "differences from preset tiny" in out and "optim.lr" in out and "0.003" in out
    assert "best val loss" in out and "step-40" in out
    assert "train loss" in out and "val loss" in out and "▁" in out  # the sparklines
    png = workspace_dir / "runs" / "tiny-stopped" / "plots" / "loss.png"
    assert f"Loss curves: {png}" in out
    assert imread(png).shape == (550, 900, 4)


def test_show_json_and_latest(cli, three_runs, workspace_dir):
    result = cli("runs", "show", "latest", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"run", "config_diff", "metrics", "checkpoints", "evals", "plot"}
    assert data["run"]["name"] == "tiny-broke" and data["run"]["status"] == "failed"
    assert data["metrics"]["best_val_loss"] is None and data["metrics"]["last_step"] == 10
    assert data["plot"] == str(workspace_dir / "runs" / "tiny-broke" / "plots" / "loss.png")
    data = json.loads(cli("runs", "show", "tiny-done", "--json", "--no-plot").stdout)
    assert data["plot"] is None and [c["name"] for c in data["checkpoints"]] == ["step-60", "best"]
    assert {"key": "train.steps", "value": 60, "default": 200} in data["config_diff"]  # tiny's


def test_show_failed_run_prints_its_error(cli, three_runs):
    out = cli("runs", "show", "tiny-broke", "--no-plot").stdout
    assert "CUDA out of memory" in out and "Checkpoints: none" in out


def test_compare(cli, three_runs, workspace_dir):
    from matplotlib.image import imread

    result = cli("runs", "compare", "tiny-done", "tiny-stopped")
    assert result.exit_code == 0, result.stderr
    assert "tiny-done" in result.stdout and "config optim.lr" in result.stdout
    png = workspace_dir / "runs" / ".compare" / "tiny-done-vs-tiny-stopped.png"
    assert imread(png).shape == (550, 900, 4)
    assert "tiny-done-vs-tiny-stopped" not in cli("runs", "list").stdout  # .compare is not a run


def test_compare_json_and_out(cli, three_runs, tmp_path):
    out = tmp_path / "cmp.png"
    result = cli("runs", "compare", "tiny-done", "tiny-stopped", "tiny-broke", "--out", str(out), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [r["name"] for r in data["runs"]] == ["tiny-done", "tiny-stopped", "tiny-broke"]
    assert data["runs"][0]["metrics"]["best_step"] == 60
    assert data["config_differences"]["optim.lr"] == [1e-3, 3e-3, 1e-3]  # tiny's lr 1e-3
    assert data["plot"] == str(out) and out.is_file()


def test_compare_out_replaces_an_existing_file_only_with_force(cli, three_runs, tmp_path):
    out = tmp_path / "mine.png"
    out.write_bytes(b"not a plot of these runs")
    result = cli("runs", "compare", "tiny-done", "tiny-stopped", "--out", str(out))
    assert result.exit_code == 2 and "already exists" in result.stderr and "--force" in result.stderr
    assert out.read_bytes() == b"not a plot of these runs"
    assert cli("runs", "compare", "tiny-done", "tiny-stopped", "--out", str(out), "--force").exit_code == 0
    assert out.read_bytes().startswith(b"\x89PNG")


def test_compare_needs_two_different_runs(cli, three_runs):
    assert cli("runs", "compare", "tiny-done").exit_code == 2
    result = cli("runs", "compare", "tiny-done", "tiny-done")
    assert result.exit_code == 2 and "named twice" in result.stderr


@pytest.mark.parametrize("command", ["show", "rm", "compare"])
def test_unknown_run_lists_existing(cli, three_runs, command):
    args = ["runs", command, "nope"] + (["tiny-done"] if command == "compare" else [])
    result = cli(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "unknown run 'nope'" in result.stderr
    assert "tiny-done" in result.stderr and "tiny-broke" in result.stderr
    assert "Traceback" not in result.stderr


def test_rm_asks_first(cli, three_runs, workspace_dir, interactive):
    run = workspace_dir / "runs" / "tiny-done"
    result = cli("runs", "rm", "tiny-done", input="n\n")
    assert result.exit_code == 1 and run.exists()
    assert "Delete run tiny-done" in result.stderr and "Nothing deleted" in result.stderr
    result = cli("runs", "rm", "tiny-done", input="y\n")
    assert result.exit_code == 0, result.stderr
    assert not run.exists() and "Deleted run tiny-done" in result.stderr


def test_rm_without_terminal_needs_yes(cli, three_runs, workspace_dir):
    result = cli("runs", "rm", "tiny-done")
    assert result.exit_code == 2
    assert "without confirmation" in result.stderr and "--yes" in result.stderr
    assert (workspace_dir / "runs" / "tiny-done").exists()
    assert cli("runs", "rm", "tiny-done", "--yes").exit_code == 0
    assert not (workspace_dir / "runs" / "tiny-done").exists()


def test_rm_refuses_running_run(cli, fake_run, workspace_dir):
    fake_run("live", status="running", pid=os.getpid())
    result = cli("runs", "rm", "live", "--yes")
    assert result.exit_code == 2 and "still running" in result.stderr and "--force" in result.stderr
    assert cli("runs", "rm", "live", "--yes", "--force").exit_code == 0
    assert not (workspace_dir / "runs" / "live").exists()


def test_rm_refuses_outside_the_workspace(cli, workspace_dir, tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (workspace_dir / "runs").mkdir()
    (workspace_dir / "runs" / "link").symlink_to(outside)
    result = cli("runs", "rm", "link", "--yes")
    assert result.exit_code == 2 and "symbolic link" in result.stderr
    result = cli("runs", "rm", "../..", "--yes")
    assert result.exit_code == 2
    assert outside.exists()


def test_run_name_completion(fake_run, workspace_dir, runner):
    from lmforge.cli.main import app

    fake_run("tiny-a")
    fake_run("tiny-b")
    env = {
        "_LMFORGE_COMPLETE": "complete_bash",
        "COMP_WORDS": f"lmforge --workspace {workspace_dir} runs show tiny-",
        "COMP_CWORD": "5",
    }
    result = runner.invoke(app, [], env=env, prog_name="lmforge")
    assert result.stdout.split() == ["tiny-a", "tiny-b"]


def test_subprocess_list_and_rm(fake_run, workspace_dir):
    fake_run("tiny-done")
    base = [sys.executable, "-m", "lmforge", "--workspace", str(workspace_dir), "runs"]
    listed = subprocess.run([*base, "list", "--json"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)[0]["name"] == "tiny-done"
    bad = subprocess.run([*base, "rm", "tiny-done"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--yes" in bad.stderr and "Traceback" not in bad.stderr


def test_rm_dry_run_deletes_nothing_and_names_the_real_run(cli, three_runs, workspace_dir):
    """Issue 27 item 18: Troubleshooting suggests `runs rm --dry-run`, which did not exist."""
    before = sorted(p.name for p in (workspace_dir / "runs").iterdir())
    newest = json.loads(cli("runs", "show", "latest", "--json", "--no-plot").stdout)["run"]["name"]
    result = cli("runs", "rm", "latest", "--dry-run")  # no terminal, no --yes: still fine
    assert result.exit_code == 0, result.output
    assert f"Would delete run {newest} (" in result.stdout and "Nothing deleted" in result.stderr
    assert sorted(p.name for p in (workspace_dir / "runs").iterdir()) == before
