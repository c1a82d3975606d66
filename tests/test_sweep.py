"""``lmforge sweep`` and ``runs compare --group``: the grid, the runs it makes, continuing an
interrupted sweep without redoing a finished run, and the per-setting figures."""

from __future__ import annotations

import json
import os
import signal

import pytest
from conftest import TINY_TRAIN

from lmforge.errors import UsageError
from lmforge.observe.reporting import Reporter
from lmforge.runs.sweeps import Sweep, parse_grid, parse_seeds, point_run_name
from lmforge.workspace import Workspace


def test_parse_grid_types_values_by_their_option():
    grid = parse_grid(["recipe=gpt2,modern", "lr=5e-4,1e-3", "block-size=64", "preset=tiny"])
    assert grid == {"recipe": ["gpt2", "modern"], "lr": [5e-4, 1e-3], "block-size": [64], "preset": ["tiny"]}


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["lr"], "is not KEY=V1,V2"),
        (["nope=1,2"], "is not a config option"),
        (["lr=fast"], "not a valid float"),
        (["recipe=gpt3"], "not one of"),
        (["seed=1,2"], "cannot vary"),
        (["lr=1e-3", "optim.lr=2e-3"], "twice"),
        (["lr=1e-3,1e-3"], "repeats a value"),
        (["preset=huge"], "unknown preset"),
    ],
)
def test_parse_grid_errors(specs, message):
    with pytest.raises(UsageError, match=message):
        parse_grid(specs)


def test_parse_seeds():
    assert parse_seeds("1-5") == [1, 2, 3, 4, 5]
    assert parse_seeds("1,3,7") == [1, 3, 7]
    assert parse_seeds("1-2,10") == [1, 2, 10]
    for bad in ("", "a", "3-1", "1,1"):
        with pytest.raises(UsageError, match="--seeds"):
            parse_seeds(bad)


def test_points_are_settings_times_seeds_with_valid_names():
    sweep = Sweep("lr", {"recipe": ["gpt2", "modern"], "lr": [1e-3, 2e-3]}, [1, 2])
    points = sweep.points()
    assert len(points) == 8
    assert points[0].run == "lr-recipe_gpt2-lr_0.001-s1"
    assert [p.seed for p in points[:2]] == [1, 2]  # a setting's seeds together
    assert point_run_name("x", (("block-size", 64),), 3) == "x-block-size_64-s3"


def _base() -> dict[str, object]:
    base = {".".join(k): v for k, v in TINY_TRAIN.items() if k != ("preset",)}
    base.update({"train.steps": 12, "train.eval_interval": 6, "logging.sample_tokens": 0})
    return base


class StopOnce(Reporter):
    """Sends SIGTERM to this process at ``at_step`` of run ``run``: the trainer saves a full
    checkpoint and stops, as it does for a user's Ctrl-C."""

    def __init__(self, run: str, at_step: int) -> None:
        self.run, self.at_step, self.current, self.done = run, at_step, None, False

    def start(self, info):
        self.current = info.get("run")

    def step(self, stats):
        if self.current == self.run and stats.step >= self.at_step and not self.done:
            self.done = True
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_sweep_grows_by_more_seeds_or_values_and_nothing_else(workspace_dir):
    from lmforge.runs.sweeps import read_manifest, write_manifest

    ws = Workspace.resolve(workspace_dir)
    base = {"optim.decay_fraction": 1.0}
    write_manifest(ws, Sweep("sw", {"lr": [1e-3]}, [1, 2, 3], preset="tiny", base=base))
    # seeds 4-5 and one more lr: the runs of seeds 1-3 at lr 1e-3 keep their names and count
    grown = Sweep("sw", {"lr": [1e-3, 2e-3]}, [1, 2, 3, 4, 5], preset="tiny", base=dict(base))
    write_manifest(ws, grown)
    back = read_manifest(ws, "sw")
    assert (back.seeds, back.grid) == ([1, 2, 3, 4, 5], {"lr": [1e-3, 2e-3]})
    assert {"sw-lr_0.001-s1", "sw-lr_0.001-s3"} <= {p.run for p in back.points()}
    refused = [
        Sweep("sw", {"lr": [1e-3, 2e-3]}, [4, 5], preset="tiny", base=base),  # seeds dropped
        Sweep("sw", {"lr": [2e-3]}, [1, 2, 3, 4, 5], preset="tiny", base=base),  # a value dropped
        Sweep("sw", {"lr": [1e-3, 2e-3]}, [1, 2, 3, 4, 5], preset="tiny", base={}),  # other options
        Sweep("sw", {"lr": [1e-3, 2e-3]}, [1, 2, 3, 4, 5], preset=None, base=base),  # other preset
        Sweep("sw", {"lr": [1e-3, 2e-3], "recipe": ["modern"]}, [1, 2, 3, 4, 5], preset="tiny", base=base),
    ]
    for sweep in refused:
        with pytest.raises(UsageError, match="already exists with another grid") as e:
            write_manifest(ws, sweep)
        assert "adding seeds or grid values to grow it" in e.value.hint
    assert read_manifest(ws, "sw").seeds == [1, 2, 3, 4, 5]  # a refusal leaves the manifest alone


@pytest.mark.slow
def test_interrupted_sweep_continues_without_redoing_finished_runs(train_workspace):
    from lmforge.train.sweep import run_sweep

    ws = Workspace.resolve(train_workspace)
    sweep = Sweep("sw", {"lr": [3e-3, 1e-3]}, [1], preset="tiny", base=_base())
    first, second = (p.run for p in sweep.points())

    result = run_sweep(ws, sweep, reporter=StopOnce(second, at_step=4))
    assert result.trained == [first] and result.stopped_at == second and result.exit_code == 143
    first_metrics = (ws.runs_dir / first / "metrics.jsonl").read_bytes()

    seen = []
    result = run_sweep(ws, sweep, on_point=lambda i, n, point, state: seen.append((point.run, state)))
    assert seen == [(first, "finished"), (second, "resume")]
    assert result.skipped == [first] and result.trained == [second] and result.exit_code == 0
    assert (ws.runs_dir / first / "metrics.jsonl").read_bytes() == first_metrics  # not run again
    record = json.loads((ws.runs_dir / second / "run.json").read_text())
    assert record["status"] == "finished"

    # the same name with another grid would mix two experiments
    with pytest.raises(UsageError, match="already exists with another grid"):
        run_sweep(ws, Sweep("sw", {"lr": [3e-3]}, [1], preset="tiny", base=_base()))


@pytest.mark.slow
def test_sweep_cli_and_group_comparison(cli, train_workspace):
    from conftest import tiny_train_flags

    flags = [f for f in tiny_train_flags(steps=8, eval_interval=4, sample_tokens=0)]
    # the grid and --seeds replace the per-run flags: drop the preset (given once)
    args = ["sweep", "g", "--grid", "lr=3e-3,3e-4", "--seeds", "1-2", *flags]
    dry = cli(*args, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    rows = json.loads(dry.stdout)["runs"]
    assert [r["state"] for r in rows] == ["new"] * 4

    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert "4 run(s) trained" in result.stdout
    again = cli(*args)
    assert "0 run(s) trained, 4 already finished" in again.stdout

    out = cli("runs", "compare", "--group", "g", "--baseline", "lr=3e-3", "--json")
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    base, other = report["settings"]
    assert base["baseline"] and base["finished"] == 2 and other["finished"] == 2
    assert report["target_loss"] == pytest.approx(base["final_val_loss"]["mean"])
    assert base["p_value_vs_baseline"] is None and 0 <= other["p_value_vs_baseline"] <= 1
    assert base["val_loss_at"]["100%"]["mean"] == pytest.approx(base["final_val_loss"]["mean"])
    assert base["reached_target"] >= 1
    assert os.path.isfile(report["plot"])

    table = cli("runs", "compare", "--group", "g", "--baseline", "lr=3e-3")
    assert table.exit_code == 0, table.output
    assert "final val loss" in table.stdout and "(baseline)" in table.stdout

    bad = cli("runs", "compare", "--group", "g", "--baseline", "recipe=gpt2")
    assert bad.exit_code == 2 and "does not name a setting" in bad.stderr
    missing = cli("runs", "compare", "--group", "nope")
    assert missing.exit_code == 2 and "no sweep named 'nope'" in missing.stderr


def test_sweep_refuses_run_and_seed_options(cli, train_workspace):
    result = cli("sweep", "x", "--grid", "lr=1e-3", "--run", "mine")
    assert result.exit_code == 2 and "--run cannot be given to a sweep" in result.stderr
    result = cli("sweep", "x", "--grid", "lr=1e-3", "--seed", "3")
    assert result.exit_code == 2 and "--seed cannot be given to a sweep" in result.stderr
    result = cli("sweep", "bad name", "--grid", "lr=1e-3")
    assert result.exit_code == 2 and "invalid sweep name" in result.stderr
