"""Damaged or hand-edited state files: each reader names the one bad file and goes on with the
rest, instead of a ValueError/TypeError/KeyError (issue 13, item 18)."""

from __future__ import annotations

import json

import pytest

from lmforge.errors import CheckpointError, ConfigError, DataError


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# ----------------------------------------------------------------------------- checkpoint meta.json


@pytest.mark.parametrize(
    ("field", "value"),
    [("step", "x"), ("step", None), ("files", []), ("tokens", 1.5), ("kind", 3), ("val_loss", "low")],
)
def test_checkpoint_meta_wrong_type_is_named(fake_run, field, value):
    from lmforge.checkpoint.meta import read_meta

    run = fake_run("a", checkpoints=("step-60",))
    meta = run / "checkpoints" / "step-60" / "meta.json"
    _edit_json(meta, **{field: value})
    with pytest.raises(CheckpointError, match=f"{meta}.*damaged.*'{field}'") as info:
        read_meta(meta.parent)
    assert "ckpt list" in info.value.hint


def test_ckpt_list_warns_and_lists_the_other_checkpoints(cli, fake_run):
    fake_run("a", checkpoints=("best", "step-60"))
    fake_run("b", started_at="2025-01-02T10:00:00Z", checkpoints=("step-60",))
    bad = fake_run("c", started_at="2025-01-03T10:00:00Z", checkpoints=("step-40", "step-60"))
    meta = bad / "checkpoints" / "step-60" / "meta.json"
    _edit_json(meta, step="x")
    before = meta.read_bytes()

    result = cli("ckpt", "list", "--json")
    assert result.exit_code == 0, result.output
    listed = [(c["run"], c["name"]) for c in json.loads(result.stdout)]
    assert listed == [("a", "step-60"), ("a", "best"), ("b", "step-60"), ("c", "step-40")]
    assert "Warning:" in result.stderr and "step-60" in result.stderr and "'step'" in result.stderr
    assert meta.read_bytes() == before  # listing never rewrites what it reads


def test_unparseable_meta_is_said_not_silently_skipped(cli, fake_run):
    run = fake_run("a", checkpoints=("step-40", "step-60"))
    (run / "checkpoints" / "step-60" / "meta.json").write_text('{"kind": "full", "step": 6')
    incomplete = run / "checkpoints" / "step-80"
    incomplete.mkdir()  # a save that never finished (no meta.json): skipped without a word
    result = cli("ckpt", "list", "a")
    assert result.exit_code == 0, result.output
    assert "step-40" in result.stdout
    assert "step-60" in result.stderr and "corrupt" in result.stderr
    assert "step-80" not in result.output


def test_resume_names_the_damaged_checkpoint_it_passes_over(cli, train_workspace, train_flags):
    flags = train_flags(steps=4, eval_interval=2, run="r", full_interval=2, keep_last=5)
    assert cli("train", *flags).exit_code == 0
    ckpts = train_workspace / "runs" / "r" / "checkpoints"
    assert (ckpts / "step-4" / "trainer.pt").is_file() and (ckpts / "step-2" / "trainer.pt").is_file()
    (ckpts / "step-4" / "meta.json").write_text("{not json")

    result = cli("train", "--resume", "r", "--steps", "5")
    assert result.exit_code == 0, result.output
    assert "step-4" in result.stderr and "resuming from step-2" in result.stderr
    assert json.loads((ckpts / "step-5" / "meta.json").read_text())["step"] == 5


def test_resume_with_only_a_damaged_full_checkpoint_names_it(cli, train_workspace, train_flags):
    assert cli("train", *train_flags(steps=2, eval_interval=2, run="r")).exit_code == 0
    meta = train_workspace / "runs" / "r" / "checkpoints" / "step-2" / "meta.json"
    _edit_json(meta, files=[])
    before = meta.read_bytes()
    result = cli("train", "--resume", "r", "--steps", "4")
    assert result.exit_code == 2, result.output
    assert "no full checkpoint" in result.stderr and str(meta) in result.stderr
    assert "'files'" in result.stderr and "Traceback" not in result.output
    assert meta.read_bytes() == before


# ----------------------------------------------------------------------------- trainer.pt


def test_trainer_state_missing_keys_is_named(make_ckpt_run):
    import torch

    from lmforge.checkpoint.store import check_trainer_state, file_records, load_trainer_state

    run = make_ckpt_run("r", [(100, "full")])
    ckpt = run / "checkpoints" / "step-100"
    torch.save({"step": 100, "tokens": 6400, "rng": torch.zeros(4)}, ckpt / "trainer.pt")
    _edit_json(ckpt / "meta.json", **file_records(ckpt))  # sizes and digests still match
    with pytest.raises(CheckpointError, match=r"trainer\.pt is damaged: it lacks optimizer, loader") as info:
        check_trainer_state(load_trainer_state(ckpt), ckpt / "trainer.pt")
    assert "another full checkpoint" in info.value.hint


def test_trainer_state_non_integer_step_is_named(make_ckpt_run):
    import torch

    from lmforge.checkpoint.store import check_trainer_state, file_records, load_trainer_state

    run = make_ckpt_run("r", [(100, "full")])
    ckpt = run / "checkpoints" / "step-100"
    state = {"optimizer": {}, "step": "x", "tokens": 6400, "loader": {}, "rng_per_rank": [torch.zeros(4)]}
    torch.save(state, ckpt / "trainer.pt")
    _edit_json(ckpt / "meta.json", **file_records(ckpt))
    with pytest.raises(CheckpointError, match="non-integer step"):
        check_trainer_state(load_trainer_state(ckpt), ckpt / "trainer.pt")


# ----------------------------------------------------------------------------- metrics and samples


def test_cut_utf8_character_does_not_block_truncation(tmp_path):
    from lmforge.runs.record import truncate_after

    path = tmp_path / "samples.jsonl"
    whole = [json.dumps({"step": s, "text": "é"}, ensure_ascii=False) for s in (1, 2, 3)]
    cut = json.dumps({"step": 4, "text": "日本"}, ensure_ascii=False).encode()[:-3]  # inside 本
    path.write_bytes(("\n".join(whole) + "\n").encode() + cut)
    assert truncate_after(path, 2) == 2  # step 3, and the cut line
    assert path.read_text(encoding="utf-8") == whole[0] + "\n" + whole[1] + "\n"


def test_truncation_drops_a_line_with_a_non_integer_step(tmp_path):
    from lmforge.runs.record import truncate_after

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": "x"}\n[1]\n')
    assert truncate_after(path, 5) == 2
    assert path.read_text() == '{"step": 1}\n'


def test_metrics_line_with_wrong_types_is_skipped(cli, fake_run):
    run = fake_run("a")
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"kind": "train", "step": "x", "loss": 1.0, "tokens": 5}\n')
        fh.write('{"kind": "eval", "step": 70, "val_loss": 0.5, "tokens": "many"}\n')
        fh.write('{"kind": "train", "step": null, "loss": 1.0}\n')
    result = cli("runs", "list", "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["step"] == 60 and row["best_val_loss"] > 0.5  # the damaged lines counted for nothing
    assert row["warnings"] == ["metrics.jsonl: 3 unreadable line(s) skipped"]


# ----------------------------------------------------------------------------- run.json, config.toml


@pytest.mark.parametrize("text", ["[]", '{"started_at": 7, "status": ["x"], "step": "9"}'])
def test_bad_run_json_does_not_break_runs_list(cli, fake_run, text):
    fake_run("a")
    bad = fake_run("b", started_at="2025-01-02T10:00:00Z")
    (bad / "run.json").write_text(text)
    result = cli("runs", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"a", "b"} and rows["a"]["status"] == "finished"
    assert rows["b"]["status"] == "unknown" and rows["b"]["started_at"] is None
    assert any(w.startswith("run.json") for w in rows["b"]["warnings"])
    assert (bad / "run.json").read_text() == text
    # the checkpoint names that sort runs by start time still work
    assert cli("ckpt", "list", "--json").exit_code == 0


def test_run_record_keeps_the_good_fields(tmp_path):
    from lmforge.runs.record import RunRecord

    (tmp_path / "run.json").write_text('{"started_at": 7, "step": 12, "status": "finished"}')
    warnings: list[str] = []
    assert RunRecord.read(tmp_path, warnings) == {"step": 12, "status": "finished"}
    assert warnings == ["run.json: ignored 'started_at' = 7 (not str)"]


def test_non_utf8_config_toml_is_one_warning(cli, fake_run):
    fake_run("a")
    bad = fake_run("b", started_at="2025-01-02T10:00:00Z")
    (bad / "config.toml").write_bytes(b'preset = "tiny\xff"\n')
    result = cli("runs", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == ["a", "b"] and rows[1]["preset"] is None
    assert "config.toml is not UTF-8" in rows[1]["warnings"][0]
    table = cli("runs", "list")  # the table says it on stderr, naming the run
    assert table.exit_code == 0 and "Warning:" in table.stderr and "b:" in table.stderr


@pytest.mark.parametrize("kind", ["binary", "directory"])
def test_config_flag_pointing_at_a_non_toml_file(cli, tmp_path, kind):
    target = tmp_path / "cfg"
    if kind == "directory":
        target.mkdir()
    else:
        target.write_bytes(bytes(range(256)))
    result = cli("train", "--config", str(target), "--dry-run")
    assert result.exit_code == 2, result.output
    expected = "is a directory" if kind == "directory" else "is not UTF-8 text"
    assert expected in result.stderr and str(target) in result.stderr
    assert "Traceback" not in result.output


def test_load_toml_errors_are_config_errors(tmp_path):
    from lmforge.tomlfile import load_toml

    (tmp_path / "b.toml").write_bytes(b"\x80\x81")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_toml(tmp_path / "b.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_toml(tmp_path)


# ----------------------------------------------------------------------------- dataset meta.json


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"vocab_size": "x"}, "'vocab_size' must be a positive integer"),
        ({"eot_token": None}, "'eot_token' must be a token id"),
        ({"splits": []}, "'splits' must be split"),
        ({"splits": {"train": {"tokens": "9"}}}, "'splits' must be split"),
        ({"tokenizer": "bytes"}, "'tokenizer' must be a table"),
    ],
)
def test_dataset_meta_wrong_types_are_named(train_workspace, change, message):
    from lmforge.data.store import list_datasets, open_dataset
    from lmforge.workspace import Workspace

    ws = Workspace(train_workspace)
    meta = train_workspace / "datasets" / "wikitext-2" / "meta.json"
    _edit_json(meta, **change)
    with pytest.raises(DataError, match=message) as info:
        open_dataset(ws, "wikitext-2")
    assert str(meta) in info.value.message and info.value.hint
    errors: list[tuple[str, str]] = []
    assert list_datasets(ws, errors) == [] and errors[0][0] == "wikitext-2"


def test_dataset_meta_not_an_object(train_workspace):
    from lmforge.data.store import open_dataset
    from lmforge.workspace import Workspace

    (train_workspace / "datasets" / "wikitext-2" / "meta.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="is not a JSON object"):
        open_dataset(Workspace(train_workspace), "wikitext-2")


def test_resume_from_a_trainer_pt_missing_keys_names_it(cli, train_workspace, train_flags):
    import torch

    from lmforge.checkpoint.store import file_records

    assert cli("train", *train_flags(steps=2, eval_interval=2, run="r")).exit_code == 0
    ckpt = train_workspace / "runs" / "r" / "checkpoints" / "step-2"
    state = torch.load(ckpt / "trainer.pt", weights_only=True)
    del state["loader"]
    torch.save(state, ckpt / "trainer.pt")
    _edit_json(ckpt / "meta.json", **file_records(ckpt))
    result = cli("train", "--resume", "r", "--steps", "4")
    assert result.exit_code == 1, result.output
    assert "trainer.pt is damaged: it lacks loader" in result.stderr and "Traceback" not in result.output
    assert not (ckpt.parent / "step-4").exists()
