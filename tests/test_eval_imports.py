"""What ``lmforge.eval`` and ``lmforge.runs`` may import of each other: ``runs`` owns the saved
eval results and imports nothing of ``eval``; ``eval`` takes resolved checkpoint paths, so it
never imports the name resolution (``runs.names``), training, observation or the CLI. Every
import counts, at module level or inside a function."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lmforge"


def lmforge_imports(subpackage: str) -> dict[str, set[str]]:
    """``{file: {imported lmforge module, ...}}`` for every .py file of a subpackage."""
    found = {}
    for path in sorted((PACKAGE / subpackage).glob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names if a.name.startswith("lmforge.")}
            elif (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and (node.module or "").startswith("lmforge")
            ):
                if node.module == "lmforge":  # from lmforge import distributed
                    names |= {f"lmforge.{a.name}" for a in node.names}
                else:
                    names.add(node.module)
        found[path.name] = names
    return found


def test_runs_imports_nothing_of_eval():
    offending = {
        f: sorted(n for n in names if n.startswith("lmforge.eval"))
        for f, names in lmforge_imports("runs").items()
    }
    assert not {f: n for f, n in offending.items() if n}


@pytest.mark.parametrize(
    "forbidden", ["lmforge.runs.names", "lmforge.train", "lmforge.cli", "lmforge.observe"]
)
def test_eval_does_not_import(forbidden):
    imports = lmforge_imports("eval")
    assert imports, "no eval modules found"
    offending = {f: sorted(n for n in names if n.startswith(forbidden)) for f, names in imports.items()}
    assert not {f: n for f, n in offending.items() if n}


def test_eval_uses_runs_only_for_saved_results():
    used = {n for names in lmforge_imports("eval").values() for n in names if n.startswith("lmforge.runs")}
    assert used <= {"lmforge.runs.evals"}
