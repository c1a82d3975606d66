"""How long a run will take, said before its first step.

The first logged step gives a real ETA, but on a CPU the first step of GPT-2 small takes
minutes; until then the user should know what they started. The estimate is the FLOPs still
to do (``GPT.flops_per_token`` x tokens per step x steps) over the device's speed, taken
from a matmul measured in tens of milliseconds and scaled by the share of it that training
reaches: attention, norms, the optimizer and the data loader run at a fraction of a large
matmul's speed. It is within a factor of about two, which is what it is for: telling 10
minutes from 10 days.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lmforge.units import format_duration

# Training throughput as a share of a square matmul's FLOP/s: ~0.25 measured on CPUs (the
# README's tiny run), ~0.4 is a usual MFU on GPUs.
TRAINING_EFFICIENCY = {"cpu": 0.25, "default": 0.4}
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

    def describe(self) -> str:
        return (
            f"estimated time: ~{format_duration(self.seconds)} for {self.steps:,} steps of "
            f"{self.flops_per_step:.2e} FLOPs (this {self.device_type} measured at "
            f"{self.device_flops / 1e9:,.0f} GFLOP/s in a matmul)"
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
) -> TimeEstimate:
    """The time of ``steps`` steps, with ``measure()`` giving the device's matmul FLOP/s."""
    matmul = measure()
    speed = matmul * TRAINING_EFFICIENCY.get(device_type, TRAINING_EFFICIENCY["default"])
    return TimeEstimate(
        seconds=steps * flops_per_step / max(speed, 1.0),
        steps=steps,
        flops_per_step=flops_per_step,
        device_flops=matmul,
        device_type=device_type,
    )
