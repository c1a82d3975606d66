"""``benchmarks/gpu_check.sh --device cpu --dry-run``: the device check's every step on the CPU at
the tiny size, so that the GPU minutes are spent measuring, not debugging the script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash")
def test_gpu_check_dry_run_on_the_cpu(tmp_path):
    env = {
        **os.environ,
        "OUT": str(tmp_path / "out"),
        "PYTHON": sys.executable,
        "PYTHONPATH": str(REPO),
        "GPU_CHECK_WS": str(tmp_path / "no-carried-corpus"),  # the dry run makes its own
        "OMP_NUM_THREADS": "1",
    }
    out = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert report["ok"], json.dumps(report["steps"])
    steps = report["steps"]
    assert steps["pytest"]["rc"] == 0 and "skipped" in steps["pytest"]["summary"]  # no CUDA here
    assert steps["train"]["rc"] == 143 and report["train"]["final_status"] == "finished"
    assert 0 < report["train"]["stopped_at_step"] < 200 and report["train"]["steps_logged"][-1] == 200
    for name in ("lmforge_gpt2", "plain", "lmforge_modern"):
        assert report["throughput"][name]["tokens_per_sec"] > 0, name
    assert report["throughput"]["lmforge_gpt2"]["recompiles"] == 0
    assert report["eval"] and report["generate"]
    assert "== resume" in log and "-- generate: exit 0" in log
