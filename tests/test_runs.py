import json
import math
import os
import subprocess
import sys

import pytest

from lmforge.errors import NotFoundError, UsageError
from lmforge.fileio import pid_alive
from lmforge.runs.compare import changes_from_defaults, compare_configs
from lmforge.runs.listing import list_runs, remove_run, run_details, run_info
from lmforge.runs.metrics import read_metrics, summarize_metrics
from lmforge.runs.names import resolve_run
from lmforge.runs.plots import loss_sparklines, plot_loss, smooth, sparkline
from lmforge.workspace import Workspace


@pytest.fixture
def ws(workspace_dir):
    return Workspace.resolve(workspace_dir)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_read_metrics_skips_truncated_and_corrupt_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"kind": "train", "step": 1, "loss": 5.0, "tokens": 10}\n'
        "not json\n"
        '{"kind": "eval", "step": 1, "val_loss": 4.5, "tokens": 10}\n'
        '{"kind": "bad_step", "step": 2}\n'
        '{"kind": "train", "step": 2, "loss": NaN, "tokens": 20}\n'
        '{"kind": "train", "step": 3, "lo'
    )
    m = read_metrics(path)
    assert [r["step"] for r in m.train] == [1]  # the NaN loss is not a point of the curve
    assert [r["val_loss"] for r in m.eval] == [4.5]
    assert len(m.bad_steps) == 1
    assert m.skipped_lines == 2
    assert read_metrics(tmp_path / "missing.jsonl").train == []


def test_summary_of_metrics(ws, fake_run):
    run = fake_run("a", steps=60, eval_every=20)
    s = summarize_metrics(read_metrics(run / "metrics.jsonl"))
    assert s["last_step"] == 60 and s["tokens"] == 60 * 512
    assert s["best_step"] == 60 and s["evaluations"] == 3
    assert s["best_val_ppl"] == pytest.approx(math.exp(s["best_val_loss"]))
    assert s["tokens_per_sec_median"] == pytest.approx(1031.0)
    assert s["last_train_loss"] == pytest.approx(3.0 + 7.0 * math.exp(-4))


def test_list_runs_statuses(ws, fake_run):
    fake_run("done", status="finished", started_at="2025-01-01T10:00:00Z")
    fake_run("stopped", status="interrupted", steps=40, total_steps=100, started_at="2025-01-02T10:00:00Z")
    fake_run("broke", status="failed", error="CUDA out of memory", started_at="2025-01-03T10:00:00Z")
    fake_run("killed", status="running", pid=dead_pid(), started_at="2025-01-04T10:00:00Z")
    fake_run("alive", status="running", pid=os.getpid(), started_at="2025-01-05T10:00:00Z")
    (ws.runs_dir / "empty").mkdir()
    runs = {r.name: r for r in list_runs(ws)}
    assert [r.name for r in list_runs(ws)][1:] == ["done", "stopped", "broke", "killed", "alive"]
    assert runs["done"].status == "finished"
    stopped = runs["stopped"]
    assert (stopped.status, stopped.step, stopped.total_steps) == ("interrupted", 40, 100)
    assert runs["broke"].status == "failed" and runs["broke"].error == "CUDA out of memory"
    assert runs["killed"].status == "stale" and runs["killed"].recorded_status == "running"
    assert runs["alive"].status == "running" and runs["alive"].duration_s > 0
    assert runs["empty"].status == "unknown" and "run.json is missing" in runs["empty"].warnings
    done = runs["done"]
    assert done.duration_s == 300 and done.preset == "tiny" and done.dataset == "wikitext-2"
    assert done.tokens == 60 * 512 and done.best_step == 60
    assert done.best_val_ppl == pytest.approx(math.exp(done.best_val_loss))
    assert done.size_bytes > 2000  # two 1000-byte dummy weights plus the rest
    assert set(done.to_dict()) >= {"name", "status", "step", "tokens", "best_val_loss", "size_bytes"}


def test_metrics_ahead_of_run_json(ws, fake_run):
    # run.json is rewritten at evaluations only; the metrics file may be further along
    run = fake_run("a", status="running", pid=os.getpid(), steps=30)
    record = json.loads((run / "run.json").read_text())
    record.update(step=20, tokens=20 * 512)
    (run / "run.json").write_text(json.dumps(record))
    info = run_info(run)
    assert (info.step, info.tokens) == (30, 30 * 512)


def test_truncated_metrics_is_a_warning(ws, fake_run):
    info = run_info(fake_run("a", truncated_tail=True))
    assert info.step == 60
    assert any("1 unreadable line" in w for w in info.warnings)


def test_changes_from_defaults_of_the_preset(ws, fake_run):
    run = fake_run(
        "a", overrides={("optim", "lr"): 3e-3, ("train", "steps"): 60, ("model", "vocab_size"): 257}
    )
    diff = {c.key: (c.value, c.default) for c in changes_from_defaults(run)}
    assert diff == {
        "model.vocab_size": (257, 50257),
        "optim.lr": (3e-3, 1e-3),  # tiny's training defaults (PRESET_TRAINING)
        "train.steps": (60, 200),
    }
    assert changes_from_defaults(fake_run("b", preset="tiny", steps=10, total_steps=200)) == []


def test_compare_configs(ws, fake_run):
    a = fake_run("a", overrides={("optim", "lr"): 1e-3})
    b = fake_run("b", overrides={("optim", "lr"): 2e-3, ("train", "seed"): 7})
    c = fake_run("c", steps=40)
    assert compare_configs([a, b]) == {"optim.lr": [1e-3, 2e-3], "train.seed": [1337, 7]}
    assert compare_configs([a, c]) == {"train.steps": [60, 40]}  # a's lr 1e-3 is tiny's default


def test_run_details_has_checkpoints(ws, fake_run):
    details = run_details(fake_run("a", checkpoints=("step-20", "step-60", "best")))
    assert [c["name"] for c in details["checkpoints"]] == ["step-20", "step-60", "best"]
    assert set(details) == {"run", "config_diff", "metrics", "checkpoints", "evals"}
    json.dumps(details)  # JSON-ready


def test_damaged_run_is_shown_with_warnings(ws, fake_run):
    run = fake_run("a")
    (run / "config.toml").write_text("this is = = not toml")
    (run / "run.json").write_text("{")
    details = run_details(run)
    assert details["config_diff"] == [] and details["run"]["status"] == "unknown"
    assert any("run.json is unreadable" in w for w in details["run"]["warnings"])
    assert any("not valid TOML" in w for w in details["run"]["warnings"])
    assert details["metrics"]["last_step"] == 60


def test_resolve_run(ws, fake_run):
    fake_run("old", started_at="2025-01-01T00:00:00Z")
    fake_run("new", started_at="2025-02-01T00:00:00Z")
    assert resolve_run(ws, "latest").name == "new"
    with pytest.raises(NotFoundError) as exc:
        resolve_run(ws, "nope")
    assert "old" in exc.value.hint and "new" in exc.value.hint


def test_remove_run(ws, fake_run):
    run = fake_run("a")
    freed = remove_run(ws, run)
    assert freed > 2000 and not run.exists()


def test_remove_refuses_running_unless_forced(ws, fake_run):
    run = fake_run("a", status="running", pid=os.getpid())
    with pytest.raises(UsageError, match="still running"):
        remove_run(ws, run)
    assert run.exists()
    remove_run(ws, run, force=True)
    assert not run.exists()


def test_remove_never_leaves_the_workspace(ws, fake_run, tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not a run directory"):
        remove_run(ws, outside)
    with pytest.raises(UsageError, match="not a run directory"):
        remove_run(ws, ws.runs_dir / ".." / "runs")
    ws.runs_dir.mkdir(parents=True, exist_ok=True)
    (ws.runs_dir / "link").symlink_to(outside)
    with pytest.raises(UsageError, match="symbolic link"):
        remove_run(ws, ws.runs_dir / "link")
    assert (outside / "data.txt").read_text() == "keep me"


def test_pid_alive():
    assert pid_alive(os.getpid())
    assert not pid_alive(dead_pid())
    assert not pid_alive(None) and not pid_alive(0)


def test_sparkline():
    assert sparkline([(0, 10), (1, 5), (2, 0)], width=3) == "█▅▁"
    assert sparkline([(0, 1.0), (10, 1.0)], width=4) == "▅▅▅▅"  # flat: mid-height, gaps filled
    assert sparkline([], width=10) == ""


def test_loss_sparklines_share_a_scale(ws, fake_run):
    lines = loss_sparklines(read_metrics(fake_run("a") / "metrics.jsonl"), width=30)
    assert [label for label, *_ in lines] == ["train loss", "val loss"]
    train, val = lines[0][2], lines[1][2]
    assert len(train) == len(val) == 30
    assert train[0] == "█" and val[0] == " "  # the first evaluation comes after the first log


def test_smooth_is_centered():
    assert smooth([1.0, 2.0, 3.0, 4.0, 5.0], 3) == pytest.approx([1.5, 2.0, 3.0, 4.0, 4.5])
    assert smooth([1.0, 2.0], 1) == [1.0, 2.0]


def test_plot_loss_writes_a_png(ws, fake_run, tmp_path):
    from matplotlib.image import imread

    a = read_metrics(fake_run("a") / "metrics.jsonl")
    b = read_metrics(fake_run("b", loss_scale=1.1) / "metrics.jsonl")
    path = plot_loss([("a", a), ("b", b)], tmp_path / "sub" / "cmp.png")
    image = imread(path)
    assert image.shape == (550, 900, 4)
    assert list((tmp_path / "sub").iterdir()) == [path]  # no temporary file left behind
    assert plot_loss([("empty", read_metrics(tmp_path / "none.jsonl"))], tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()


def test_duration_leaves_out_the_idle_gap_before_a_resume(tmp_path):
    """Issue 27 item 18: ``runs show`` counted the days between an interrupt and the resume."""
    import json

    from lmforge.runs.listing import run_info
    from lmforge.runs.record import RunRecord

    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    first = RunRecord(run_dir, {"started_at": "2024-01-01T00:00:00+00:00"})  # a new run: one session
    first.update(status="interrupted", ended_at="2024-01-01T01:00:00+00:00")
    assert "session_started_at" not in json.loads(first.path.read_text())
    assert run_info(run_dir).duration_s == 3600

    # resumed two days later, as the trainer does: the first start is kept
    second = RunRecord(run_dir, {"started_at": "2024-01-01T00:00:00+00:00"})
    assert second.data["active_s"] == 3600
    second.update(session_started_at="2024-01-03T01:00:00+00:00", ended_at="2024-01-03T01:30:00+00:00")
    second.update(status="finished")
    assert run_info(run_dir).duration_s == 3600 + 1800
    third = RunRecord(run_dir, {"started_at": "2024-01-01T00:00:00+00:00"})  # and once more
    assert third.data["active_s"] == 3600 + 1800
