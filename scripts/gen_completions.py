"""Write the shell completion scripts in completions/ from the app.

    python scripts/gen_completions.py          # (re)write completions/lmforge.{bash,zsh,fish}
    python scripts/gen_completions.py --check  # exit 1 if a file is missing or stale

The scripts are Typer's (``_LMFORGE_COMPLETE=source_<shell> lmforge``). They are
generic: at each <TAB> they call back into ``lmforge`` with
``_LMFORGE_COMPLETE=complete_<shell>``, so they complete the commands, options
and run names of the installed version and only change when Typer's templates
do (tests/test_completions.py fails then; rerun this script).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHELLS = ("bash", "zsh", "fish")


def render(shell: str) -> str:
    """The completion script for ``shell``, as ``lmforge`` itself prints it."""
    from typer.testing import CliRunner

    from lmforge.cli.main import app

    result = CliRunner().invoke(app, [], env={"_LMFORGE_COMPLETE": f"source_{shell}"}, prog_name="lmforge")
    if result.exit_code != 0 or not result.stdout.strip():
        raise RuntimeError(f"could not generate the {shell} completion script: {result.output}")
    return result.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the files are current")
    parser.add_argument("--out", type=Path, default=ROOT / "completions", help="directory of the scripts")
    args = parser.parse_args(argv)
    stale = []
    for shell in SHELLS:
        path = args.out / f"lmforge.{shell}"
        text = render(shell)
        if path.is_file() and path.read_text() == text:
            continue
        if args.check:
            stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"stale completion scripts: {', '.join(stale)}; run python scripts/gen_completions.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
