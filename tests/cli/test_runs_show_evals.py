"""``runs show`` lists the task results that ``lmforge eval --tasks`` saved beside the run's
checkpoints: a table in the text output, an ``evals`` list in ``--json``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lmforge.eval.tasks import TaskRow, save_task_results


@pytest.fixture
def save_eval(monkeypatch):
    """Save rows beside a checkpoint as ``lmforge eval --tasks`` does, at a given time:
    ``save_eval(ckpt_dir, "2025-02-01T10:00:00Z", ("toy_mc", "acc", 0.5, 0.05))``."""
    import lmforge.units

    def save(ckpt_dir, created, *rows):
        monkeypatch.setattr(lmforge.units, "now_iso", lambda: created)
        name = f"{ckpt_dir.parent.parent.name}:{ckpt_dir.name}"
        task_rows = [
            TaskRow(name, task, metric, value, stderr, *rest) for task, metric, value, stderr, *rest in rows
        ]
        tasks = sorted({r.task for r in task_rows})
        settings = {"checkpoint": name, "tasks": tasks, "limit": 8, "num_fewshot": 0, "batch_size": 8}
        return save_task_results(ckpt_dir, task_rows, {"results": {}}, settings)

    return save


@pytest.fixture
def evaluated_run(fake_run, save_eval):
    """A run with three checkpoints, evaluated at three times (not in checkpoint order)."""
    run_dir = fake_run("tiny-evald", checkpoints=("step-20", "step-60", "best"))
    ckpts = run_dir / "checkpoints"
    save_eval(
        ckpts / "step-20",
        "2025-02-01T10:00:00Z",
        ("toy_mc", "acc", 0.5, 0.05),
        ("toy_mc", "acc_norm", 0.55, 0.04),
    )
    save_eval(
        ckpts / "best",
        "2025-02-03T10:00:00Z",
        ("arc_easy", "acc", 0.625, 0.0312),
        ("hellaswag", "acc", 0.3, None),
    )
    save_eval(
        ckpts / "step-60",
        "2025-02-02T10:00:00Z",
        ("gsm8k", "exact_match", 0.125, 0.01, "strict-match"),
        ("gsm8k", "exact_match", 0.25, 0.02, "flexible-extract"),
        ("toy_mc", "acc", 0.5, None),
        ("toy_mc", "acc_norm", None, None),
    )
    return run_dir


def test_show_json_lists_saved_evals_newest_first(cli, evaluated_run):
    result = cli("runs", "show", "tiny-evald", "--json", "--no-plot")
    assert result.exit_code == 0, result.stderr
    evals = json.loads(result.stdout)["evals"]
    assert [(e["checkpoint"], e["created"]) for e in evals] == [
        ("best", "2025-02-03T10:00:00Z"),
        ("step-60", "2025-02-02T10:00:00Z"),
        ("step-20", "2025-02-01T10:00:00Z"),
    ]
    assert set(evals[0]) == {"checkpoint", "file", "path", "created", "tasks", "rows"}
    assert (
        evals[0]["tasks"] == ["arc_easy", "hellaswag"]
        and evals[0]["file"] == "20250203T100000Z-arc_easy+1.json"
    )
    assert evals[0]["path"] == str(evaluated_run / "checkpoints" / "best" / "evals" / evals[0]["file"])
    assert evals[2]["rows"][1] == {
        "checkpoint": "tiny-evald:step-20",
        "task": "toy_mc",
        "metric": "acc_norm",
        "value": 0.55,
        "stderr": 0.04,
        "filter": "none",
        "samples": None,
        "num_fewshot": None,
    }
    assert json.loads(result.stdout)["run"]["warnings"] == []


def test_show_text_has_one_row_per_saved_file(cli, evaluated_run):
    result = cli("runs", "show", "tiny-evald", "--no-plot")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "Task evaluations" in out
    lines = out[out.index("Task evaluations") :].splitlines()
    rows = [line for line in lines if line.startswith("│") and "checkpoint" not in line]
    assert len(rows) == 3 and [r.split("│")[1].strip() for r in rows] == ["best", "step-60", "step-20"]
    best, step60, step20 = rows
    assert "arc_easy, hellaswag" in best and "arc_easy acc 0.6250 ±0.0312, hellaswag acc 0.3000" in best
    assert "toy_mc" in step20 and "acc 0.5000 ±0.0500, acc_norm 0.5500 ±0.0400" in step20
    assert "gsm8k exact_match (strict-match) 0.1250 ±0.0100" in step60 and "+1 more" in step60
    assert "2025-02" in step20  # when it was saved (local time)


def test_show_without_saved_evals_adds_nothing(cli, fake_run):
    fake_run("tiny-plain")
    data = json.loads(cli("runs", "show", "tiny-plain", "--json", "--no-plot").stdout)
    assert data["evals"] == []
    result = cli("runs", "show", "tiny-plain", "--no-plot")
    assert result.exit_code == 0 and "Task evaluations" not in result.stdout
    assert result.stderr == ""


def test_show_warns_about_a_damaged_eval_file_and_shows_the_rest(cli, evaluated_run):
    evals_dir = evaluated_run / "checkpoints" / "step-20" / "evals"
    (evals_dir / "20250105T000000Z-broken.json").write_text('{"rows": [')  # cut short by a crash
    (evals_dir / "20250106T000000Z-list.json").write_text("[1, 2]")  # JSON, but not a record
    (evals_dir / "20250107T000000Z-odd.json").write_bytes(b"\xff\xfe not utf-8")

    result = cli("runs", "show", "tiny-evald", "--no-plot")
    assert result.exit_code == 0, result.stderr
    assert "arc_easy" in result.stdout and "toy_mc" in result.stdout
    for name in ("20250105T000000Z-broken.json", "20250106T000000Z-list.json", "20250107T000000Z-odd.json"):
        assert name in result.stderr
    assert result.stderr.count("Warning:") == 3 and "Traceback" not in result.stderr

    result = cli("runs", "show", "tiny-evald", "--json", "--no-plot")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [e["checkpoint"] for e in data["evals"]] == ["best", "step-60", "step-20"]
    assert len(data["run"]["warnings"]) == 3
    assert any("broken.json: not readable JSON" in w for w in data["run"]["warnings"])
    assert any("list.json: not an lmforge eval record" in w for w in data["run"]["warnings"])


def test_ckpt_show_warns_about_a_damaged_eval_file_too(cli, evaluated_run):
    evals_dir = evaluated_run / "checkpoints" / "step-20" / "evals"
    (evals_dir / "20250105T000000Z-broken.json").write_text('{"rows": [')
    result = cli("ckpt", "show", "tiny-evald:step-20")
    assert result.exit_code == 0, result.stderr
    assert "toy_mc" in result.stdout  # the readable record is still shown
    assert "20250105T000000Z-broken.json" in result.stderr and result.stderr.count("Warning:") == 1
    data = json.loads(cli("ckpt", "show", "tiny-evald:step-20", "--json").stdout)
    assert [e["tasks"] for e in data["evals"]] == [["toy_mc"]]


def test_show_with_saved_evals_does_not_import_torch(evaluated_run, workspace_dir):
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['lmforge', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_module('lmforge', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print('torch' if 'torch' in sys.modules else 'no-torch')\n"
    )
    args = ["--workspace", str(workspace_dir), "runs", "show", "tiny-evald", "--no-plot"]
    out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Task evaluations" in out.stdout and out.stdout.split()[-1] == "no-torch"
