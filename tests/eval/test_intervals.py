"""Bootstrap intervals of ratios of sums over prompts (`taps.eval.intervals`)."""

import math

import pytest

from taps.eval.intervals import ratio_interval


def test_a_constant_ratio_has_no_spread_and_a_varying_one_brackets_its_value():
    steady = ratio_interval([2, 4, 6, 8], [1, 2, 3, 4])
    assert (steady.value, steady.low, steady.high) == pytest.approx((2.0, 2.0, 2.0))
    varying = ratio_interval([3, 4, 9, 8, 2], [1, 2, 3, 4, 2])
    assert varying.low < varying.value < varying.high
    assert varying == ratio_interval([3, 4, 9, 8, 2], [1, 2, 3, 4, 2])  # seeded


def test_a_paired_base_cancels_what_both_rows_share():
    """Two rows slowed alike by the same prompts: their ratio does not move, each alone does."""
    seconds = [1.0, 3.0, 0.5, 2.0, 4.0]
    tokens = [10, 10, 10, 10, 10]
    paired = ratio_interval(tokens, [s / 1.5 for s in seconds], tokens, seconds)
    assert paired.value == pytest.approx(1.5) and paired.high - paired.low == pytest.approx(0.0)
    alone = ratio_interval(tokens, seconds)
    assert alone.high - alone.low > 1.0


def test_strata_keep_each_benchmark_s_share_of_the_prompts():
    """Two benchmarks with different ratios: resampled within each, the mix stays fixed and the
    interval narrows to nothing; resampled across, the mix moves."""
    numer, denom, strata = [1, 1, 3, 3], [1, 1, 1, 1], ["a", "a", "b", "b"]
    within = ratio_interval(numer, denom, strata=strata)
    assert within.low == pytest.approx(2.0) and within.high == pytest.approx(2.0)
    across = ratio_interval(numer, denom)
    assert across.low < 2.0 < across.high


def test_bad_input_and_empty_denominators():
    with pytest.raises(ValueError, match="same number"):
        ratio_interval([1, 2], [1])
    with pytest.raises(ValueError, match="same number"):
        ratio_interval([], [])
    empty = ratio_interval([0, 0], [0, 0])
    assert math.isnan(empty.value) and math.isnan(empty.low)
