"""``benchmarks/recipes.py``: the issue-26 protocol as ``lmforge sweep`` commands. Its
``--dry-run`` prints them; every printed sweep parses as the CLI's own ``sweep --dry-run``."""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "recipes.py"


@pytest.fixture(scope="module")
def recipes():
    spec = importlib.util.spec_from_file_location("recipes_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dry_run(recipes, capsys, *args: str) -> list[list[str]]:
    assert recipes.main(["--workspace", "/tmp/unused", "--dry-run", *args]) == 0
    return [shlex.split(line) for line in capsys.readouterr().out.splitlines()]


def test_dry_run_prints_the_protocol(recipes, capsys):
    lines = dry_run(recipes, capsys, "--setting", "noqk=--no-qk-norm --lr 0.03")
    sweeps = [line[line.index("sweep") + 1] for line in lines if "sweep" in line]
    assert sweeps == ["pgpt2-lr", "pgpt2", "pmodern", "pnoqk"]
    lr_sweep, gpt2, modern, noqk, compare = lines
    assert lr_sweep[lr_sweep.index("--grid") + 1] == "lr=5e-4,1e-3,1.5e-3,2e-3"
    assert lr_sweep[lr_sweep.index("--seeds") + 1] == "1"
    assert gpt2[gpt2.index("--seeds") + 1] == "2,3,4,5"  # seed 1 is the lr sweep's run
    assert gpt2[gpt2.index("--lr") + 1] == "<best lr of pgpt2-lr>"
    assert modern[modern.index("--seeds") + 1] == "1-5" and noqk[-3:] == ["--no-qk-norm", "--lr", "0.03"]
    for flag, value in (("--steps", "240"), ("--block-size", "128"), ("--eval-tokens", "8192")):
        assert modern[modern.index(flag) + 1] == value
    assert compare[compare.index("runs") :] == [
        "runs", "compare", "--group", "pgpt2-lr", "--group", "pgpt2", "--group", "pmodern",
        "--group", "pnoqk", "--baseline", "sweep=pgpt2",
    ]  # fmt: skip


def test_every_printed_sweep_is_a_valid_lmforge_sweep(recipes, capsys, cli):
    lines = dry_run(recipes, capsys, "--setting", "noqk=--no-qk-norm")
    for line in lines[:-1]:
        args = line[line.index("sweep") :]
        args = ["0.0015" if a.startswith("<best lr") else a for a in args]
        result = cli(*args, "--dry-run", "--json")
        assert result.exit_code == 0, (args, result.output)


def test_one_seed_compares_against_the_lr_sweeps_setting(recipes, capsys):
    lines = dry_run(recipes, capsys, "--seeds", "1", "--prefix", "q-")
    assert [line[line.index("sweep") + 1] for line in lines[:-1]] == ["q-gpt2-lr", "q-modern"]
    assert lines[-1][-4:] == ["--baseline", "sweep=q-gpt2-lr", "--baseline", "lr=<best lr of q-gpt2-lr>"]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("ve", "is not NAME="),
        ("=--value-embeds", "is not NAME="),
        ("modern=--no-qk-norm", "protocol's sweeps"),
    ],
)
def test_bad_settings(recipes, setting, message):
    with pytest.raises(SystemExit, match=message):
        recipes.main(["--workspace", "/tmp/unused", "--dry-run", "--setting", setting])


def test_best_lr_is_the_lowest_final_mean(recipes, workspace_dir):
    from test_sweep_groups import fake_sweep

    from lmforge.runs.sweeps import Sweep
    from lmforge.workspace import Workspace

    ws = Workspace.resolve(workspace_dir)
    losses = {5e-4: 4.0, 1e-3: 3.6, 1.5e-3: 3.4, 2e-3: 3.5}
    fake_sweep(ws, Sweep("pgpt2-lr", {"lr": list(losses)}, [1]), lambda s, seed: losses[s["lr"]])
    assert recipes.best_lr(workspace_dir, "pgpt2-lr") == "0.0015"


@pytest.mark.slow
def test_the_protocol_runs_end_to_end(recipes, train_workspace, runner, monkeypatch):
    """Two steps per run, seeds 1-2, one lr: the lr sweep (seed 1), the gpt2 recipe's seed 2 at
    that lr, the modern recipe; the comparison merges the gpt2 recipe's two sweeps. Each lmforge
    command runs in this process (the CLI runner in place of a subprocess: no startup per run)."""
    from types import SimpleNamespace

    from lmforge.cli.main import app

    outputs = []

    def run_in_process(command):
        result = runner.invoke(app, command[len(recipes.LMFORGE) :], prog_name="lmforge")
        outputs.append(result.stdout)
        return SimpleNamespace(returncode=result.exit_code)

    monkeypatch.setattr(recipes.subprocess, "run", run_in_process)
    full_options = recipes.protocol_options

    def fewer_eval_tokens(args):  # the protocol's 8,192 validation tokens, cut for a quick test
        options = full_options(args)
        options[options.index("--eval-tokens") + 1] = "512"
        return options

    monkeypatch.setattr(recipes, "protocol_options", fewer_eval_tokens)
    args = ["--workspace", str(train_workspace), "--steps", "2", "--seeds", "1-2", "--gpt2-lrs", "1e-3"]
    assert recipes.main([*args, "--json"]) == 0
    assert len(outputs) == 4  # three sweeps and the comparison
    gpt2, modern = json.loads(outputs[-1])["settings"]
    assert gpt2["setting"] == {"sweep": "pgpt2-lr+pgpt2", "lr": 1e-3} and gpt2["baseline"]
    assert gpt2["runs"] == ["pgpt2-lr-lr_0.001-s1", "pgpt2-s2"] and gpt2["finished"] == 2
    assert modern["setting"] == {"sweep": "pmodern"} and modern["finished"] == 2
