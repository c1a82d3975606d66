"""``ckpt show`` lists the task results that ``lmforge eval --tasks`` saved beside a checkpoint."""

from __future__ import annotations

import json


def test_ckpt_show_lists_saved_task_evaluations(cli, make_ckpt_run):
    run_dir = make_ckpt_run("r1", [(10, "full")])
    evals = run_dir / "checkpoints" / "step-10" / "evals"
    evals.mkdir()
    row = {"checkpoint": "r1:step-10", "task": "toy_mc", "metric": "acc", "value": 0.625, "stderr": 0.0312}
    record = {"format": "lmforge-eval", "created": "2026-12-01T10:00:00Z", "rows": [row]}
    (evals / "20261201-100000-toy_mc.json").write_text(json.dumps(record))
    (evals / "broken.json").write_text("{not json")  # an unreadable file is left out, not fatal

    result = cli("ckpt", "show", "r1:step-10", "--json")
    assert result.exit_code == 0, result.output
    saved = json.loads(result.stdout)["evals"]
    assert [e["file"] for e in saved] == ["20261201-100000-toy_mc.json"]
    assert saved[0]["tasks"] == ["toy_mc"] and saved[0]["rows"][0]["value"] == 0.625

    result = cli("ckpt", "show", "r1:step-10")
    assert result.exit_code == 0, result.output
    assert "Task evaluations" in result.stdout and "toy_mc" in result.stdout
    assert "0.6250" in result.stdout and "0.0312" in result.stdout


def test_ckpt_show_without_saved_evaluations_has_no_table(cli, make_ckpt_run):
    make_ckpt_run("r2", [(10, "full")])
    result = cli("ckpt", "show", "r2:step-10", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["evals"] == []
    assert "Task evaluations" not in cli("ckpt", "show", "r2:step-10").stdout
