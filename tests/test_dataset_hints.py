"""An unknown --data answers with the closest prepared or known name (a typo is the likely
cause), and a dry run, which needs no data, still says the run would stop there."""

from __future__ import annotations

import pytest
from data_fixtures import write_wikitext

from lmforge.data.store import unknown_dataset_hint


@pytest.mark.parametrize(
    ("name", "prepared", "hint"),
    [
        ("wikitext2", ["wikitext-2", "smoke"], "did you mean 'wikitext-2'? `lmforge data list`"),
        ("wikitext2", [], "did you mean 'wikitext-2'? Prepare it with: lmforge data prepare wikitext-2"),
        (
            "wikitex-103",
            [],
            "did you mean 'wikitext-103'? Prepare it with: lmforge data prepare wikitext-103",
        ),
        # a name data prepare knows is prepared, never "corrected" to a prepared neighbour
        ("wikitext-103", ["wikitext-2"], "prepare it with: lmforge data prepare wikitext-103"),
        ("owner/corpus", [], "prepare it with: lmforge data prepare owner/corpus"),
        (
            "books",
            ["wikitext-2"],
            "prepare a corpus under this name with: lmforge data prepare FILE-OR-HUB-ID --as books",
        ),
    ],
)
def test_unknown_dataset_hint(name, prepared, hint):
    assert unknown_dataset_hint(name, prepared).startswith(hint)


@pytest.fixture
def prepared_wikitext(cli, tmp_path):
    write_wikitext(tmp_path / "src")
    result = cli("data", "prepare", "wikitext-2", "--source", str(tmp_path / "src"), "--tokenizer", "bytes")
    assert result.exit_code == 0, result.stderr


def test_train_with_a_typo_suggests_the_prepared_name(cli, prepared_wikitext):
    result = cli("train", "--preset", "tiny", "--data", "wikitext2", "--steps", "1")
    assert result.exit_code == 2
    assert "unknown dataset 'wikitext2'" in result.stderr
    assert "did you mean 'wikitext-2'?" in result.stderr
    assert "lmforge data prepare wikitext2" not in result.stderr  # that would fail too


def test_dry_run_warns_about_unknown_data(cli, prepared_wikitext):
    result = cli("train", "--preset", "tiny", "--data", "wikitext2", "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    assert "warning: unknown dataset 'wikitext2'" in result.stderr
    assert "a dry run needs no data, but a run would stop here: did you mean 'wikitext-2'?" in result.stderr
    assert '"parameters"' in result.stdout  # the plan itself still printed, as JSON
    quiet = cli("train", "--preset", "tiny", "--data", "wikitext-2", "--dry-run", "--json")
    assert quiet.exit_code == 0 and "unknown dataset" not in quiet.stderr


def test_no_validation_hints_are_commands_that_work(cli, workspace_dir, tmp_path):
    """The hints for a dataset without validation keep the options it was prepared with
    (here --doc-separator and --tokenizer): run as printed, they give a validation split."""
    import shlex

    from lmforge.data.store import open_dataset
    from lmforge.errors import UsageError
    from lmforge.workspace import Workspace

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"document {i} " * 5 for i in range(40)), encoding="utf-8")
    result = cli("data", "prepare", str(corpus), "--tokenizer", "bytes", "--doc-separator", "\\n\\n")
    assert result.exit_code == 0, result.output
    note = " ".join(result.stderr.split())
    assert "hold out documents with: lmforge data prepare" in note
    ds = open_dataset(Workspace.resolve(workspace_dir), "corpus")
    with pytest.raises(UsageError) as exc:
        ds.tokens("validation")
    command = exc.value.hint.removeprefix("prepare it with: ")
    assert "--doc-separator '\\n\\n'" in command and "--tokenizer bytes" in command
    assert "--val-fraction 0.05" in command and "--splits" not in command
    argv = shlex.split(command)
    assert argv[:3] == ["lmforge", "data", "prepare"]
    again = cli(*argv[1:])
    assert again.exit_code == 0, again.output
    ds = open_dataset(Workspace.resolve(workspace_dir), "corpus")
    assert ds.split_meta("validation")["documents"] == 2  # 40 documents, not one
    assert ds.split_meta("train")["documents"] == 38
