"""Commands that only read files start without importing torch (it costs seconds of CPU):
each runs in a fresh interpreter, which reports whether torch got imported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# runs lmforge as `python -m lmforge` would, then prints whether torch was imported
PROBE = (
    "import sys, runpy\n"
    "sys.argv = ['lmforge', *sys.argv[1:]]\n"
    "code = 0\n"
    "try:\n"
    "    runpy.run_module('lmforge', run_name='__main__')\n"
    "except SystemExit as exc:\n"
    "    code = exc.code or 0\n"
    "print(f'\\nPROBE {code} ' + ('torch' if 'torch' in sys.modules else 'no-torch'))\n"
)


def _probe(workspace_dir, *args: str) -> tuple[int, bool, str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, "--workspace", str(workspace_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    last = out.stdout.strip().splitlines()[-1].split()
    assert last[0] == "PROBE", (out.stdout, out.stderr)
    return int(last[1]), last[2] == "torch", out.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["ckpt", "list", "--json"],
        ["ckpt", "prune", "--dry-run"],
        ["ckpt", "show", "r:latest"],
        ["ckpt", "show", "r:latest", "--json"],
        ["runs", "list", "--json"],
        ["runs", "show", "r"],
        ["data", "list"],
        ["tokenizer", "list"],
        ["--help"],
        ["train", "--help"],
    ],
    ids=" ".join,
)
def test_read_only_commands_do_not_import_torch(make_ckpt_run, workspace_dir, args):
    make_ckpt_run("r", [(10, "full"), (10, "best")])
    code, torch_imported, stdout = _probe(workspace_dir, *args)
    assert code == 0, stdout
    assert not torch_imported, f"lmforge {' '.join(args)} imported torch"
    if args == ["ckpt", "list", "--json"]:  # and it did list the real checkpoints
        listed = json.loads(stdout[: stdout.rindex("PROBE")])
        assert {c["name"] for c in listed} == {"step-10", "best"}
    if args[:2] == ["ckpt", "show"]:  # the parameter count too, from the weights' header
        shown = stdout[: stdout.rindex("PROBE")]
        if "--json" in args:
            assert json.loads(shown)["parameters"] == 10_960
        else:
            assert "parameters (total)  10,960" in shown
