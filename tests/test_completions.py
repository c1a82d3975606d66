"""completions/ holds Typer's scripts for bash, zsh and fish; they must match what the
app prints today (regenerate with `python scripts/gen_completions.py`)."""

import importlib.util
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
SHELLS = ["bash", "zsh", "fish"]


def source_script(app, shell: str) -> str:
    result = CliRunner().invoke(app, [], env={"_LMFORGE_COMPLETE": f"source_{shell}"}, prog_name="lmforge")
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("shell", SHELLS)
def test_completion_scripts_are_current(shell):
    from lmforge.cli.main import app

    path = ROOT / "completions" / f"lmforge.{shell}"
    assert path.is_file(), "run: python scripts/gen_completions.py"
    assert source_script(app, shell) == path.read_text(), (
        f"{path} is stale: run python scripts/gen_completions.py"
    )


@pytest.mark.parametrize("shell", SHELLS)
def test_scripts_do_not_depend_on_the_commands(shell):
    # the scripts call back into lmforge at each <TAB>: an app with other commands gets the same script,
    # so adding a command never makes completions/ stale
    other = typer.Typer()

    @other.command()
    def one() -> None: ...

    @other.command()
    def two() -> None: ...

    assert source_script(other, shell) == (ROOT / "completions" / f"lmforge.{shell}").read_text()


def complete_bash(words: str) -> list[str]:
    from lmforge.cli.main import app

    env = {
        "_LMFORGE_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split(" ")) - 1),
    }
    result = CliRunner().invoke(app, [], env=env, prog_name="lmforge")
    assert result.exit_code == 0, result.output
    return result.stdout.split()


def test_completion_knows_every_command():
    from lmforge.cli.main import app

    group = typer.main.get_command(app)
    commands = group.list_commands(typer.Context(group))
    assert "runs" in commands
    assert complete_bash("lmforge ") == commands
    assert complete_bash("lmforge runs ") == ["list", "show", "compare", "rm"]
    assert "--json" in complete_bash("lmforge runs list --")


def test_gen_completions_check(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gen_completions", ROOT / "scripts" / "gen_completions.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.main(["--check"]) == 0
    assert gen.main(["--check", "--out", str(tmp_path)]) == 1
    assert "stale" in capsys.readouterr().out
    assert gen.main(["--out", str(tmp_path)]) == 0
    assert gen.main(["--check", "--out", str(tmp_path)]) == 0


@pytest.fixture
def named_things(make_ckpt_run, workspace_dir):
    """A run ``r1`` with checkpoints and a prepared-looking dataset ``books``."""
    make_ckpt_run("r1", [(10, "light"), (20, "best")])
    (workspace_dir / "datasets" / "books").mkdir(parents=True)
    (workspace_dir / "datasets" / "books" / "meta.json").write_text("{}")
    return f"lmforge --workspace {workspace_dir}"


@pytest.mark.parametrize(
    "words, expected",
    [
        ("eval ", ["best", "latest", "r1"]),
        ("eval r1:", ["r1:latest", "r1:step-10", "r1:best"]),
        ("eval best --data ", ["books"]),
        ("generate ", ["best", "latest", "r1"]),
        ("train --resume ", ["latest", "r1"]),
        ("train --init-from r1:", ["r1:latest", "r1:step-10", "r1:best"]),
        ("train --preset ti", ["tiny"]),
        ("train --recipe ", ["gpt2", "modern"]),
        ("train --data ", ["books"]),
        ("data info ", ["books"]),
        ("runs show ", ["latest", "r1"]),
        ("ckpt show ", ["best", "latest", "r1"]),
    ],
)
def test_names_complete_wherever_they_are_taken(named_things, words, expected):
    """Issue 27 item 16: eval, generate, train --resume/--init-from/--preset/--data and
    data info completed nothing."""
    got = complete_bash(f"{named_things} {words}")
    assert sorted(got) == sorted(expected)


def test_completion_in_an_unusable_workspace_is_silent(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert complete_bash(f"lmforge --workspace {afile} eval ") == ["best", "latest"]
