"""How long a run will take, said before its first step.

The first logged step gives a real ETA, but on a CPU the first step of GPT-2 small takes
minutes; until then the user should know what they started. The estimate is the FLOPs still
to do (``GPT.flops_per_token`` x tokens per step x steps) over the device's speed, taken
from a matmul measured in tens of milliseconds and scaled by the share of it that training
reaches: attention, norms, the optimizer and the data loader run at a fraction of a large
matmul's speed, and that fraction depends on the precision (a CPU's fp32 and bf16 kernels
differ), so it is calibrated per device type and dtype. It is within a factor of about two,
which is what it is for: telling 10 minutes from 10 days.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lmforge.units import format_duration

# Training throughput as a share of the probe matmul's FLOP/s (``device.measure_matmul_flops``),
# by (device type, dtype), from the tiny preset (batch 4 x 256, the README's quick start):
# - CPU fp32 (1024-wide probe): 0.5, on a 2-core AVX2 EPYC under load (benchmarks/
#   train_throughput.py prints the estimate beside the measured rate): two runs trained at 116
#   and 89 tokens/s (11.5 and 8.8 GFLOP/s) while the probe read 19 and 24 GFLOP/s, so 0.5 is
#   within 1.4x of both; idle, training's ~114 GFLOP/s against a probe near the 2 cores' fp32
#   peak is within 1.5x too.
# - CPU bf16 (512-wide probe): 0.25, on a 2-core AVX512-BF16 CPU (compiled, ~1,700 tokens/s).
# - Elsewhere 0.4, a usual MFU of a GPU against its large-matmul speed.
TRAINING_EFFICIENCY = {("cpu", "fp32"): 0.5, ("cpu", "bf16"): 0.25, "default": 0.4}


def training_efficiency(device_type: str, dtype: str) -> float:
    """The share of the probe's FLOP/s that training reaches on ``device_type`` in ``dtype``."""
    return TRAINING_EFFICIENCY.get((device_type, dtype), TRAINING_EFFICIENCY["default"])


# On a CPU, a run estimated longer than this gets the advice to make it smaller.
LONG_ON_CPU_S = 3600.0


@dataclass(frozen=True)
class TimeEstimate:
    """``seconds`` for ``steps`` steps of ``flops_per_step`` at ``device_flops`` (measured)."""

    seconds: float
    steps: int
    flops_per_step: float
    device_flops: float
    device_type: str
    dtype: str = "fp32"

    def describe(self) -> str:
        return (
            f"estimated time: ~{format_duration(self.seconds)} for {self.steps:,} steps of "
            f"{self.flops_per_step:.2e} FLOPs (this {self.device_type} measured at "
            f"{self.device_flops / 1e9:,.0f} GFLOP/s in a {self.dtype} matmul)"
        )

    def advice(self, preset: str) -> str | None:
        """What to do about a run too long for a CPU, or None."""
        if self.device_type != "cpu" or self.seconds < LONG_ON_CPU_S:
            return None
        if preset != "tiny":
            return (
                f"this run would take ~{format_duration(self.seconds)} on a CPU: a {preset} model "
                "wants a GPU; on a CPU, try --preset tiny (a run that learns visibly in minutes)"
            )
        return (
            f"this run would take ~{format_duration(self.seconds)} on a CPU: give fewer --steps "
            "(or a smaller --block-size), or train on a GPU"
        )


def estimate_time(
    flops_per_step: float,
    steps: int,
    device_type: str,
    measure: Callable[[], float],
    dtype: str = "fp32",
) -> TimeEstimate:
    """The time of ``steps`` steps in ``dtype``, with ``measure()`` giving the device's matmul
    FLOP/s in that dtype."""
    matmul = measure()
    speed = matmul * training_efficiency(device_type, dtype)
    return TimeEstimate(
        seconds=steps * flops_per_step / max(speed, 1.0),
        steps=steps,
        flops_per_step=flops_per_step,
        device_flops=matmul,
        device_type=device_type,
        dtype=dtype,
    )


def dry_run_facts(config, world_size: int = 1, cache_dir=None, measure=None) -> dict:
    """What ``train --dry-run`` adds to the plan on this machine: the device and dtype ``auto``
    resolves to (and why), whether a training step fits the device's free memory, and the time
    estimate (a matmul probe of well under a second). A device that is not here (``--device
    cuda`` on a laptop) gives ``{"device": ..., "error": ...}`` instead: planning needs none."""
    import torch

    from lmforge.device import measure_matmul_flops
    from lmforge.errors import LmforgeError
    from lmforge.train import memory
    from lmforge.train.hardware import Hardware

    try:
        hw = Hardware.resolve(config, world_size=world_size, cache_dir=cache_dir)
    except LmforgeError as exc:
        return {"device": config.train.device, "error": exc.message}
    device, dtype, why = hw.device, hw.dtype, hw.dtype_reason
    need = memory.step_memory(config, dtype, world_size, hw.sharded, device.type)
    free = memory.available_bytes(device)
    local = world_size if device.type == "cpu" else 1  # processes sharing this machine's RAM
    flops_per_step = config.tokens_per_step * _flops_per_token(config)
    probe = measure if measure is not None else (lambda: measure_matmul_flops(device, dtype))
    with torch.random.fork_rng(devices=[]):  # the probe draws from its own generator anyway
        est = estimate_time(flops_per_step, config.train.steps, device.type, probe, dtype=dtype)
    return {
        "device": str(device),
        "dtype": dtype,
        "dtype_reason": why,
        "step_memory_bytes": need.total * local,
        "free_bytes": free,
        "fits": None if free is None else need.total * local <= free,
        "fit_hint": None if free is None or need.total * local <= free else need.hint(),
        "estimate_s": est.seconds,
        "matmul_flops": est.device_flops,
        "estimate": est.describe(),
        "advice": est.advice(config.preset),
    }


def _flops_per_token(config) -> float:
    from lmforge.train.memory import build_on_meta

    return build_on_meta(config).flops_per_token()
