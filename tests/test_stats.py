"""The sweep statistics against scipy.stats and against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from lmforge.runs.stats import first_reach, mean_interval, value_at, welch_p_value


def test_mean_interval_by_hand():
    # mean 2, sample sd 1, sem 1/sqrt(3); t(0.975, df=2) = 4.302653
    i = mean_interval([1.0, 2.0, 3.0])
    assert i.mean == 2.0 and i.n == 3
    assert i.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)


def test_mean_interval_matches_scipy():
    from scipy import stats

    values = [6.41, 6.39, 6.43, 6.40, 6.44]
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=stats.tmean(values), scale=stats.sem(values))
    i = mean_interval(values)
    assert i.mean - i.half_width == pytest.approx(lo, rel=1e-12)
    assert i.mean + i.half_width == pytest.approx(hi, rel=1e-12)


def test_mean_interval_of_one_or_no_values():
    assert mean_interval([]) is None
    one = mean_interval([5.0])
    assert one.mean == 5.0 and one.half_width is None and one.n == 1


def test_welch_by_hand():
    # a: mean 2, var 1 (n 3); b: mean 5, var 1 (n 3): t = -3 / sqrt(2/3) = -3.674, df = 4
    # two-sided p = 2 * (1 - T4(3.674)) = 0.021311
    assert welch_p_value([1, 2, 3], [4, 5, 6]) == pytest.approx(0.021311, abs=1e-5)


def test_welch_matches_scipy_with_unequal_variances():
    from scipy import stats

    a, b = [6.73, 6.71, 6.75, 6.70], [6.41, 6.40, 6.44, 6.30, 6.52]
    assert welch_p_value(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-12)


def test_welch_needs_two_values_each():
    assert welch_p_value([1.0], [2.0, 3.0]) is None
    assert welch_p_value([1.0, 1.0], [1.0, 1.0]) is None


def test_first_reach_interpolates_between_evaluations():
    curve = [(100.0, 8.0), (200.0, 7.0), (300.0, 6.0)]
    assert first_reach(curve, 6.5) == pytest.approx(250.0)
    assert first_reach(curve, 7.0) == pytest.approx(200.0)
    assert first_reach(curve, 9.0) == 100.0  # the first evaluation is already below
    assert first_reach(curve, 5.0) is None


def test_value_at():
    curve = [(100.0, 8.0), (300.0, 6.0)]
    assert value_at(curve, 200.0) == pytest.approx(7.0)
    assert value_at(curve, 300.0) == 6.0
    assert value_at(curve, 50.0) is None and value_at(curve, 400.0) is None
