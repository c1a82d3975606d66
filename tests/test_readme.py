"""The README's set-up commands are what CI runs: keep them from drifting apart."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ci_commands() -> list[str]:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    start = lines.index(
        "# The README's test command (tests/test_readme.py checks that the two stay identical):"
    )
    return [line for line in lines[start + 1 :] if line.strip()]


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    commands = ci_commands()
    assert commands == ['pip install torch==2.13.0 -e ".[dev]"', "python -m pytest"]
    assert " && ".join(commands) in readme
