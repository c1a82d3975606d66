"""``eval`` and ``generate`` with ``--dtype auto`` on a CPU read the bf16 measurement cached in the
workspace (``cache/cpu-bf16.json``, written by the first command that measured), instead of
measuring again in every process. /proc/cpuinfo and the measurement are faked."""

import functools

import pytest

import lmforge.device as device
import lmforge.eval.evaluate as evaluate_module
from lmforge.workspace import Workspace

COOPER = "processor\t: 0\nmodel name\t: Intel Xeon 8380H\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n"


def _never(*_):
    raise AssertionError("measured again: the workspace's cached answer was not used")


@pytest.fixture
def cached_fast_bf16(monkeypatch, train_workspace):
    """A CPU with bf16 instructions whose (fake) measurement, 3x fp32, a train left in the
    workspace's cache; a new process knows only the file, and measuring again fails."""
    monkeypatch.setattr(device, "_read_cpuinfo", lambda: COOPER)
    monkeypatch.setattr(device, "_SPEEDUPS", {})
    cache = Workspace.resolve(train_workspace).cache_dir
    assert device.cpu_bf16(COOPER, measure=lambda: 3.0, cache_dir=cache).fast
    assert (cache / "cpu-bf16.json").is_file()
    monkeypatch.setattr(device, "_SPEEDUPS", {})  # this process's memory of it: gone, as in a new one
    monkeypatch.setattr(device, "cpu_bf16", functools.partial(device.cpu_bf16, measure=_never))


def test_eval_uses_the_workspace_measurement(cached_fast_bf16, make_ckpt_run, cli, monkeypatch):
    make_ckpt_run("r", [(10, "best")])
    dtypes = []
    real = evaluate_module.evaluate

    def spy(*args, **kwargs):
        dtypes.append(args[2].dtype)  # evaluate(model, dataset, options, ...)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "evaluate", spy)
    result = cli("eval", "r:best", "--device", "cpu", "--split", "validation", "--max-tokens", "64", "--json")
    assert result.exit_code == 0, result.stderr
    assert dtypes == ["bf16"]  # the cached 3x, not fp32 and not a new measurement


def test_generate_uses_the_workspace_measurement(cached_fast_bf16, make_ckpt_run, cli):
    make_ckpt_run("r", [(10, "best")])
    result = cli("generate", "r:best", "ab", "--device", "cpu", "--max-tokens", "3", "--greedy")
    assert result.exit_code == 0, result.stderr
    assert "cpu, bf16" in result.stderr  # the info line: device, then the precision chosen
