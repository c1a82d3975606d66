"""``lmforge eval --protocol harness`` and ``--tasks`` end to end on a tiny byte-level model:
the numbers, the one-line errors and their exit codes, the results saved beside the checkpoint."""

import json
import math
import sys

import pytest

from lmforge.config import ModelConfig
from lmforge.errors import UsageError
from lmforge.workspace import Workspace

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1]))
from data_fixtures import workspace_with_best_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def ws_dir(tmp_path_factory):
    """A workspace with a byte-level wikitext-2 and one run `tiny` with a best checkpoint."""
    model_config = ModelConfig(vocab_size=257, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    return workspace_with_best_checkpoint(tmp_path_factory.mktemp("protocols"), model_config, test_docs=3)


@pytest.fixture
def run_cli(runner, ws_dir):
    from lmforge.cli.main import app

    def invoke(*args: str):
        return runner.invoke(app, ["--workspace", str(ws_dir), *args], prog_name="lmforge")

    return invoke


def one_line(result) -> str:
    """The error, as the CLI prints it: one line, and at most one hint line after it."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("Error: ") and len(lines) <= 2, result.stderr
    assert len(lines) == 1 or lines[1].startswith("Hint: "), result.stderr
    return " ".join(lines)


# ----------------------------------------------------------------------------- protocols


def test_harness_protocol_json_and_table(run_cli, ws_dir):
    from lmforge.data.store import open_dataset
    from lmforge.eval.harness import harness_bytes, harness_words

    result = run_cli("eval", "best", "--protocol", "harness", "--split", "test", "--json")
    assert result.exit_code == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["protocol"] == "harness" and row["eot_tokens"] == 0 and not row["ppl_includes_eot"]
    pages = open_dataset(Workspace.resolve(ws_dir), "wikitext-2").documents("test")
    assert row["documents"] == len(pages) == 3
    words, nbytes = sum(map(harness_words, pages)), sum(map(harness_bytes, pages))
    assert row["word_ppl"] == pytest.approx(math.exp(row["text_nll"] / words), rel=1e-9)
    assert row["bpb"] == pytest.approx(row["text_nll"] / math.log(2) / nbytes, rel=1e-9)
    assert row["bpb"] == pytest.approx(math.log2(row["byte_ppl"]), rel=1e-9)
    table = run_cli("eval", "best", "--protocol", "harness", "--split", "test")
    assert table.exit_code == 0, table.stderr
    assert "protocol harness" in table.stdout and "word ppl" in table.stdout
    stream = run_cli("eval", "best", "--split", "test", "--max-tokens", "64")
    assert "protocol stream" in stream.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["--protocol", "nope"], "unknown --protocol 'nope'"),
        (["--protocol", "harness", "--stride", "8"], "--stride apply to --protocol stream only"),
        (["--limit", "3"], "apply to --tasks"),
        (["--tasks", ","], "--tasks names no task"),
    ],
)
def test_usage_errors(run_cli, args, message):
    result = run_cli("eval", "best", *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_harness_on_a_dataset_without_documents_says_what_to_do(run_cli, ws_dir):
    ds_dir = ws_dir / "datasets" / "wikitext-2"
    meta_path = ds_dir / "meta.json"
    original = meta_path.read_text()
    meta = json.loads(original)
    for entry in meta["splits"].values():
        entry.pop("text", None)
        entry.pop("doc_offsets", None)
    try:
        meta_path.write_text(json.dumps(meta))
        result = run_cli("eval", "best", "--protocol", "harness", "--split", "test")
        assert result.exit_code == 1
        line = one_line(result)
        assert "prepared before" in line and "lmforge data prepare" in line and "--force" in line
        assert run_cli("eval", "best", "--split", "test").exit_code == 0  # stream still works
    finally:
        meta_path.write_text(original)


# ----------------------------------------------------------------------------- --tasks


def test_tasks_without_the_extra_fail_at_once_with_the_install_line(run_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    result = run_cli("eval", "best", "--tasks", "hellaswag")
    assert result.exit_code == 2
    assert 'pip install "lmforge[eval]"' in one_line(result)


def write_task(folder, name, data_files, extra=""):
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(
        f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data_files}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{q}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
{extra}"""
    )


def test_tasks_end_to_end_table_json_and_saved_results(run_cli, ws_dir, tmp_path):
    pytest.importorskip("lm_eval")
    data = tmp_path / "mc.jsonl"
    rows = [{"q": f"Q{i}:", "choices": [" a", " bb", " c"], "answer": i % 3} for i in range(6)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_task(tmp_path / "tasks", "toy_mc", data)
    tasks = str(tmp_path / "tasks")
    result = run_cli("eval", "best", "--tasks", "toy_mc", "--tasks-dir", tasks, "--limit", "4")
    assert result.exit_code == 0, result.stderr
    assert "lm-eval-harness tasks" in result.stdout and "toy_mc" in result.stdout and "acc" in result.stdout
    saved = sorted((ws_dir / "runs" / "tiny" / "checkpoints" / "best" / "evals").glob("*.json"))
    assert saved
    record = json.loads(saved[-1].read_text())
    assert record["tasks"] == ["toy_mc"] and record["limit"] == 4
    assert {r["metric"] for r in record["rows"]} == {"acc", "acc_norm"} and record["rows"][0]["samples"] == 4
    from lmforge.runs.evals import saved_evals

    assert saved_evals(saved[-1].parent.parent)[-1]["tasks"] == ["toy_mc"]
    js = run_cli("eval", "best", "--tasks", "toy_mc", "--tasks-dir", tasks, "--json")
    assert js.exit_code == 0, js.stderr
    rows = json.loads(js.stdout)
    assert [(r["task"], r["metric"]) for r in rows] == [("toy_mc", "acc"), ("toy_mc", "acc_norm")]
    assert all(0 <= r["value"] <= 1 and r["samples"] == 6 and r["stderr"] > 0 for r in rows)


def test_tasks_print_progress_lines_when_not_a_terminal(run_cli, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    import lmforge.cli.progress_lines as progress_lines

    monkeypatch.setattr(progress_lines, "INTERVAL_S", 0.0)  # a line after every batch
    data = tmp_path / "mc.jsonl"
    rows = [{"q": f"Q{i}:", "choices": [" a", " bb", " c"], "answer": i % 3} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_task(tmp_path / "tasks", "toy_mc", data)
    result = run_cli("eval", "best", "--tasks", "toy_mc", "--tasks-dir", str(tmp_path / "tasks"))
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("eval best loglikelihood | ")]
    # each choice's continuation, in bytes: lm-eval's target delimiter " " and the choice (" a": 3)
    total = 4 * (3 + 4 + 3)
    assert lines[0] == f"eval best loglikelihood | started | {total} tokens"
    assert all(" tok/s | eta " in line for line in lines[1:-1]) and len(lines) > 2
    assert lines[-1].startswith(f"eval best loglikelihood | done | {total} tokens in ")


def test_unknown_task_and_missing_dataset_are_one_line_errors(run_cli, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    from lm_eval import tasks as lm_tasks

    # indexing lm-eval's own ~15k tasks takes seconds: the test looks in its folder alone
    real = lm_tasks.TaskManager
    monkeypatch.setattr(
        lm_tasks, "TaskManager", lambda *a, include_defaults=True, **k: real(*a, **k, include_defaults=False)
    )
    write_task(tmp_path / "tasks", "toy_missing", tmp_path / "nowhere.jsonl")
    tasks = str(tmp_path / "tasks")
    unknown = run_cli("eval", "best", "--tasks", "no_such_task_xyz", "--tasks-dir", tasks)
    assert unknown.exit_code == 2
    assert "unknown lm-eval task: no_such_task_xyz" in one_line(unknown)
    missing = run_cli("eval", "best", "--tasks", "toy_missing", "--tasks-dir", tasks)
    assert missing.exit_code == 1
    assert "cannot load the dataset of task(s) toy_missing" in one_line(missing)


def test_broken_task_yaml_names_the_file_and_line(run_cli, tmp_path):
    """lm-eval passes over a YAML it cannot parse, so its task looked unknown: the parse error
    is reported instead, before lm-eval (installed or not) is needed."""
    folder = tmp_path / "tasks"
    (folder / "sub").mkdir(parents=True)
    (folder / "good.yaml").write_text("task: good\nprocess_docs: !function utils.process_docs\n")
    (folder / "sub" / "broken.yaml").write_text("task: broken\ndataset_path: json\n  doc_to_text: [oops\n")
    result = run_cli("eval", "best", "--tasks", "broken", "--tasks-dir", str(folder))
    assert result.exit_code == 2
    line = one_line(result)
    assert "task YAML" in line and "broken.yaml" in line and "line 3" in line and "does not parse" in line
    assert "unknown lm-eval task" not in line


def test_task_yamls_with_tags_parse(tmp_path):
    from lmforge.eval.tasks import check_task_yamls

    (tmp_path / "t.yaml").write_text("task: t\nprocess_docs: !function utils.process_docs\nmetric_list: []\n")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "t-checkpoint.yaml").write_text("task: [broken\n")  # lm-eval skips it
    check_task_yamls(tmp_path)  # no error
    (tmp_path / "bad.yaml").write_bytes(b"task: \xff\n")
    with pytest.raises(UsageError, match="bad.yaml is not UTF-8"):
        check_task_yamls(tmp_path)
