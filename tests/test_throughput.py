"""The throughput meter counts training time only: evaluation and checkpoints between steps are
left out, by pausing the meter or by giving each step's own duration."""

from __future__ import annotations

import pytest

from lmforge.observe.throughput import ThroughputMeter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_paused_time_is_not_training_time():
    clock = Clock()
    meter = ThroughputMeter(flops_per_token=10.0, peak_flops=1000.0, clock=clock)
    clock.now += 1.0
    meter.step(100)  # 1 s of training
    with meter.paused():
        clock.now += 30.0  # an evaluation
    meter.pause()
    clock.now += 5.0  # a checkpoint
    meter.pause()  # twice: still one pause
    meter.resume()
    clock.now += 1.0
    meter.step(100)  # 1 s more
    tps, mfu = meter.read()
    assert tps == pytest.approx(100.0) and mfu == pytest.approx(10.0 * 100.0 / 1000.0)
    clock.now += 2.0
    meter.step(100)
    assert meter.read()[0] == pytest.approx(50.0)  # a new window after each read


def test_read_while_paused_starts_the_next_window_on_resume():
    clock = Clock()
    meter = ThroughputMeter(1.0, None, clock=clock)
    clock.now += 1.0
    meter.step(10)
    with meter.paused():
        assert meter.read() == (pytest.approx(10.0), None)  # no peak: MFU is n/a
        clock.now += 50.0
    clock.now += 1.0
    meter.step(10)
    assert meter.read()[0] == pytest.approx(10.0)


def test_explicit_step_durations_replace_the_wall_clock():
    clock = Clock()
    meter = ThroughputMeter(1.0, None, clock=clock)
    meter.step(100, seconds=0.5)
    clock.now += 60.0  # whatever happened between the steps
    meter.step(100, seconds=0.5)
    assert meter.elapsed() == pytest.approx(1.0)
    assert meter.read()[0] == pytest.approx(200.0)
