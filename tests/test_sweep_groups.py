"""``lmforge runs compare --group A --group B``: several sweeps in one report, on fake runs (a
manifest and run folders with a metrics file, no training): labels, settings merged from two
sweeps, the baseline, the comparability checks; and a sweep with no --grid."""

from __future__ import annotations

import json

import pytest

from lmforge.errors import UsageError
from lmforge.runs.group import groups_report
from lmforge.runs.sweeps import Sweep, parse_grid, write_manifest
from lmforge.tomlfile import dumps_toml
from lmforge.workspace import Workspace

CONFIG = {
    "tokenizer": "bytes",
    "data": {"name": "wikitext-2"},
    "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32},
    "train": {"eval_tokens": 512},
}


def fake_run(ws: Workspace, name: str, final: float, *, tokens_per_eval: int = 1000, config=None) -> None:
    """A finished run with four evaluations ending at ``final``."""
    run = ws.runs_dir / name
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"status": "finished"}))
    losses = [final + 1.5, final + 0.8, final + 0.3, final]
    records = [
        {"kind": "eval", "step": i + 1, "tokens": (i + 1) * tokens_per_eval, "val_loss": loss}
        for i, loss in enumerate(losses)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in CONFIG.items()}
    for path, value in (config or {}).items():
        section, _, key = path.rpartition(".")
        (merged.setdefault(section, {}) if section else merged)[key or path] = value
    (run / "config.toml").write_text(dumps_toml(merged))


def fake_sweep(ws: Workspace, sweep: Sweep, final_of, **kwargs) -> None:
    """The manifest and a finished run per point; ``final_of(setting, seed)`` is its final loss."""
    write_manifest(ws, sweep)
    for point in sweep.points():
        fake_run(ws, point.run, final_of(dict(point.setting), point.seed), **kwargs)


@pytest.fixture
def ws(workspace_dir) -> Workspace:
    """The issue-26 protocol in miniature: an lr sweep of the gpt2 recipe (seed 1), more seeds
    at its best lr in a second sweep, and the modern recipe at its defaults."""
    ws = Workspace.resolve(workspace_dir)
    fake_sweep(
        ws,
        Sweep("pgpt2lr", {"lr": [5e-4, 1.5e-3]}, [1], base={"recipe": "gpt2"}),
        lambda s, seed: 4.0 if s["lr"] == 5e-4 else 3.5,
    )
    fake_sweep(
        ws,
        Sweep("pgpt2", {}, [2, 3], base={"recipe": "gpt2", "optim.lr": 1.5e-3}),
        lambda s, seed: 3.5 + 0.02 * seed,
    )
    fake_sweep(
        ws, Sweep("pmodern", {}, [1, 2, 3], base={"recipe": "modern"}), lambda s, seed: 3.0 + 0.01 * seed
    )
    return ws


GROUPS = ["--group", "pgpt2lr", "--group", "pgpt2", "--group", "pmodern"]


def test_settings_of_several_sweeps_are_labelled_by_sweep_and_merged_when_equal(ws):
    report = groups_report(ws, ["pgpt2lr", "pgpt2", "pmodern"], baseline=["sweep=pgpt2"])
    labels = [s.label for s in report.settings]
    assert labels == ["sweep=pgpt2lr, lr=0.0005", "sweep=pgpt2lr+pgpt2, lr=0.0015", "sweep=pmodern"]
    merged = report.settings[1]
    # seed 1 of the lr sweep at the best lr is reused, not rerun: one setting over 3 seeds
    assert merged.runs == ["pgpt2lr-lr_0.0015-s1", "pgpt2-s2", "pgpt2-s3"]
    assert merged.is_baseline and report.baseline is merged
    assert merged.final_loss.mean == pytest.approx((3.5 + 3.54 + 3.56) / 3)
    assert report.target_loss == pytest.approx(merged.final_loss.mean)
    modern = report.settings[2]
    assert modern.p_value is not None and modern.p_value < 0.05
    assert modern.reached_target == 3 and modern.tokens_to_target.mean < 4000
    assert report.settings[0].p_value is None  # one seed: no test


def test_multi_group_json_through_the_cli(cli, ws):
    out = cli("runs", "compare", *GROUPS, "--baseline", "sweep=pgpt2", "--json", "--no-plot")
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert [g["name"] for g in report["groups"]] == ["pgpt2lr", "pgpt2", "pmodern"]
    assert report["groups"][1]["options"] == {"recipe": "gpt2", "optim.lr": 1.5e-3}
    assert report["baseline"] == {"sweep": "pgpt2lr+pgpt2", "lr": 1.5e-3}
    assert [s["setting"] for s in report["settings"]][2] == {"sweep": "pmodern"}
    assert report["settings"][2]["finished"] == 3


def test_multi_group_table_and_plot_through_the_cli(cli, ws, workspace_dir):
    out = cli("runs", "compare", *GROUPS, "--baseline", "sweep=pgpt2", "--target-loss", "3.2")
    assert out.exit_code == 0, out.output
    assert "Sweeps pgpt2lr, pgpt2, pmodern" in out.stdout
    assert "sweep=pgpt2lr+pgpt2, lr=0.0015 (baseline)" in out.stdout
    assert "tokens to 3.2000" in out.stdout and "p (Welch)" in out.stdout
    assert (workspace_dir / "runs" / ".compare" / "group-pgpt2lr-pgpt2-pmodern.png").is_file()


def test_multi_group_markdown_through_the_cli(cli, ws, workspace_dir):
    out = cli("runs", "compare", *GROUPS, "--baseline", "sweep=pgpt2", "--markdown", "--no-plot")
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert lines[0] == "Sweeps pgpt2lr, pgpt2, pmodern (mean ± 95% interval over seeds):"
    table = [line for line in lines if line.startswith("|")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header == [
        "setting", "seeds", "val @25%", "val @50%", "val @75%", "final val loss",
        f"tokens to {(3.5 + 3.54 + 3.56) / 3:.4f}", "p (Welch)",
    ]  # fmt: skip
    assert table[1] == "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    rows = {r[0]: r for r in ([c.strip() for c in line.strip("|").split("|")] for line in table[2:])}
    assert list(rows) == [
        "sweep=pgpt2lr, lr=0.0005",
        "sweep=pgpt2lr+pgpt2, lr=0.0015 (baseline)",
        "sweep=pmodern",
    ]
    modern = rows["sweep=pmodern"]
    assert modern[1] == "3/3" and modern[5].startswith("3.0200 ± ")  # finals 3.01, 3.02, 3.03
    assert float(modern[7]) < 0.05
    assert rows["sweep=pgpt2lr, lr=0.0005"][5] == "4.0000"  # one seed: the value, no interval
    assert "[" not in out.stdout.replace("[1/", "")  # no Rich markup leaks into the Markdown
    assert not (workspace_dir / "runs" / ".compare").exists()


def test_markdown_warns_of_unfinished_runs_on_stderr(cli, ws):
    (ws.runs_dir / "pmodern-s3" / "run.json").write_text(json.dumps({"status": "running"}))
    out = cli("runs", "compare", "--group", "pmodern", "--markdown", "--no-plot")
    assert out.exit_code == 0, out.output
    assert "| (no grid) | 2/3 |" in out.stdout  # one sweep without a grid: one unlabelled setting
    assert "1 setting(s) have unfinished runs" in out.stderr and "warning" not in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--group", "pmodern", "--markdown", "--json"], "--json and --markdown cannot be combined"),
        (["pgpt2-s2", "pgpt2-s3", "--markdown"], "--markdown need --group"),
    ],
)
def test_markdown_errors(cli, ws, args, message):
    out = cli("runs", "compare", *args, "--no-plot")
    assert out.exit_code == 2, out.output
    assert message in out.output


@pytest.mark.parametrize(
    ("baseline", "label"),
    [
        (["sweep=pmodern"], "sweep=pmodern"),
        (["sweep=pgpt2lr", "lr=5e-4"], "sweep=pgpt2lr, lr=0.0005"),
        (["lr=0.0015"], "sweep=pgpt2lr+pgpt2, lr=0.0015"),
    ],
)
def test_baseline_by_sweep_and_grid_values(ws, baseline, label):
    report = groups_report(ws, ["pgpt2lr", "pgpt2", "pmodern"], baseline=baseline)
    assert report.baseline.label == label


@pytest.mark.parametrize(
    ("baseline", "message"),
    [
        (["sweep=pgpt2lr"], "matches 2 settings of sweeps pgpt2lr, pgpt2, pmodern"),
        (["sweep=nope"], "sweep=nope is not one of the --group sweeps"),
        (["recipe=gpt2"], "does not name a setting of sweeps"),
        (["lr=0.1"], "matches 0 settings"),
    ],
)
def test_baseline_errors(ws, baseline, message):
    with pytest.raises(UsageError, match=message):
        groups_report(ws, ["pgpt2lr", "pgpt2", "pmodern"], baseline=baseline)


def test_unknown_and_repeated_groups(cli, ws):
    out = cli("runs", "compare", "--group", "pgpt2", "--group", "nope")
    assert out.exit_code == 2
    assert "no sweep named 'nope'" in out.stderr and "pgpt2, pgpt2lr, pmodern" in out.stderr
    out = cli("runs", "compare", "--group", "pgpt2", "--group", "pgpt2")
    assert out.exit_code == 2 and "--group pgpt2 is given twice" in out.stderr


@pytest.mark.parametrize(
    ("config", "kwargs", "message"),
    [
        ({"model.block_size": 64}, {}, r"in model\.block_size \(64 vs 32\).*--block-size"),
        ({"train.eval_tokens": 8192}, {}, r"in train\.eval_tokens \(8,192 vs 512\).*--eval-tokens"),
        ({"model.n_layer": 4}, {}, r"in model\.n_layer \(4 vs 2\).*--preset"),
        ({"data.name": "other"}, {}, r"in data\.name \(other vs wikitext-2\).*--data"),
        ({}, {"tokens_per_eval": 500}, r"in token budget \(2,000 vs 4,000\).*--steps"),
    ],
)
def test_groups_that_cannot_be_compared_are_refused(cli, ws, config, kwargs, message):
    fake_sweep(
        ws,
        Sweep("other", {}, [1, 2], base={"recipe": "modern"}),
        lambda s, seed: 3.0,
        config=config,
        **kwargs,
    )
    out = cli("runs", "compare", "--group", "pgpt2", "--group", "other")
    assert out.exit_code == 2, out.output
    assert "--group other differs from --group pgpt2" in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 2  # the error and its hint
    with pytest.raises(UsageError, match=message):
        groups_report(ws, ["pgpt2", "other"])


def test_a_field_a_grid_varies_is_not_a_mismatch(ws):
    # the sweep compares block sizes itself: comparing it with another sweep is the user's call
    sweep = Sweep("blocks", {"block-size": [32, 64]}, [1], base={"recipe": "modern"})
    write_manifest(ws, sweep)
    for point in sweep.points():
        size = dict(point.setting)["block-size"]
        fake_run(ws, point.run, 3.0, config={"model.block_size": size})
    report = groups_report(ws, ["pgpt2", "blocks"], baseline=["sweep=pgpt2"])
    assert [s.label for s in report.settings] == [
        "sweep=pgpt2",
        "sweep=blocks, block-size=32",
        "sweep=blocks, block-size=64",
    ]


def test_single_group_report_is_unchanged(cli, ws):
    out = cli("runs", "compare", "--group", "pgpt2lr", "--baseline", "lr=5e-4", "--json", "--no-plot")
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert list(report)[:5] == ["group", "grid", "seeds", "preset", "options"]
    assert [s["setting"] for s in report["settings"]] == [{"lr": 5e-4}, {"lr": 1.5e-3}]
    assert report["baseline"] == {"lr": 5e-4}


# ----------------------------------------------------------------------------- a sweep with no grid


def test_a_sweep_without_grid_is_one_setting_over_the_seeds(workspace_dir):
    assert parse_grid([]) == {}
    sweep = Sweep("pmodern", {}, [1, 2, 3], base={"recipe": "modern"})
    assert [p.run for p in sweep.points()] == ["pmodern-s1", "pmodern-s2", "pmodern-s3"]
    from lmforge.train.sweep import point_overrides

    preset, overrides = point_overrides(sweep, sweep.points()[1])
    assert overrides == {("recipe",): "modern", ("run",): "pmodern-s2", ("train", "seed"): 2}


def test_sweep_cli_without_grid(cli, workspace_dir):
    dry = cli("sweep", "pm", "--recipe", "modern", "--seeds", "1-2", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    rows = json.loads(dry.stdout)["runs"]
    assert [(r["run"], r["setting"], r["state"]) for r in rows] == [
        ("pm-s1", {}, "new"),
        ("pm-s2", {}, "new"),
    ]
    table = cli("sweep", "pm", "--recipe", "modern", "--seeds", "1-2", "--dry-run")
    assert table.exit_code == 0 and "pm-s2" in table.stdout


def test_single_group_without_grid_has_a_label(ws):
    from lmforge.runs.group import group_report

    assert [s.label for s in group_report(ws, "pmodern").settings] == ["(no grid)"]


@pytest.mark.slow
def test_an_lr_sweep_and_a_sweep_of_more_seeds_at_its_best_lr_are_one_setting(cli, train_workspace):
    """Real runs: the lr sweep's run at 3e-3 (seed 1) and the no-grid sweep at --lr 3e-3 (seed 2)
    have the same options, so ``runs compare`` counts them as one setting of two seeds."""
    from conftest import tiny_train_flags

    flags = tiny_train_flags(steps=6, eval_interval=3, sample_tokens=0)
    lr_sweep = cli("sweep", "lrs", "--grid", "lr=3e-3,3e-4", "--seeds", "1", *flags)
    assert lr_sweep.exit_code == 0, lr_sweep.output
    more = cli("sweep", "best", "--lr", "3e-3", "--seeds", "2", *flags)
    assert more.exit_code == 0, more.output
    assert "1 run(s) trained" in more.stdout

    out = cli("runs", "compare", "--group", "lrs", "--group", "best", "--baseline", "sweep=best", "--json")
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    merged, other = report["settings"]
    assert merged["setting"] == {"sweep": "lrs+best", "lr": 3e-3} and merged["baseline"]
    assert merged["runs"] == ["lrs-lr_0.003-s1", "best-s2"] and merged["finished"] == 2
    assert other["setting"] == {"sweep": "lrs", "lr": 3e-4} and other["finished"] == 1
