"""The probe suite's statistics, checked against numbers worked out by hand."""

import math

import pytest

from posttrain.evals.stats import ece_bootstrap_interval, expected_calibration_error, mean_interval, wilson_interval


def test_wilson_8_of_10_matches_hand_computation():
    # p = 0.8, z^2 = 3.8416: centre (0.8 + 0.19208) / 1.38416 = 0.71674,
    # half-width 1.96 / 1.38416 * sqrt(0.016 + 0.009604) = 0.22658
    lo, hi = wilson_interval(8, 10, z=1.96)
    assert lo == pytest.approx(0.49016, abs=1e-4)
    assert hi == pytest.approx(0.94332, abs=1e-4)


def test_wilson_edges_stay_inside_unit_interval_and_contain_p():
    lo, hi = wilson_interval(0, 10, z=1.96)
    assert lo == 0.0
    assert hi == pytest.approx(3.8416 / 13.8416, abs=1e-6)  # z^2 / (n + z^2) at p = 0
    lo, hi = wilson_interval(10, 10, z=1.96)
    assert hi == 1.0 and lo == pytest.approx(10 / 13.8416, abs=1e-6)
    for k in range(0, 21):
        lo, hi = wilson_interval(k, 20)
        assert 0.0 <= lo <= k / 20 <= hi <= 1.0


def test_wilson_no_samples_and_bad_input():
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_mean_interval_hand_computed():
    # mean 2.5, sample sd sqrt(5/3) = 1.29099, se 0.64550, half-width 1.96 * se = 1.26517
    lo, hi = mean_interval([1.0, 2.0, 3.0, 4.0], z=1.96)
    assert lo == pytest.approx(2.5 - 1.26517, abs=1e-4)
    assert hi == pytest.approx(2.5 + 1.26517, abs=1e-4)


def test_mean_interval_degenerate():
    assert mean_interval([]) is None
    assert mean_interval([3.0]) is None
    assert mean_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)


def test_ece_hand_worked_example():
    # 15 bins of width 1/15. 0.95 -> bin 14 (two samples, acc 0.5): 2/5 * |0.5 - 0.95| = 0.18
    # 0.55 -> bin 8 (two samples, acc 1.0): 2/5 * |1.0 - 0.55| = 0.18
    # 0.15 -> bin 2 (one sample, acc 0.0): 1/5 * |0.0 - 0.15| = 0.03          total 0.39
    conf = [0.95, 0.95, 0.55, 0.55, 0.15]
    correct = [True, False, True, True, False]
    assert expected_calibration_error(conf, correct) == pytest.approx(0.39, abs=1e-12)


def test_ece_bins_average_within_a_bin():
    # Both in bin 14: mean confidence 0.965, accuracy 1.0 -> |1 - 0.965| = 0.035.
    # (Per-sample |correct - conf| would give 0.035 too here; the next case separates them.)
    assert expected_calibration_error([0.94, 0.99], [True, True]) == pytest.approx(0.035)
    # Same bin, one right one wrong, mean confidence 0.5: calibrated in the bin -> 0,
    # while the per-sample error would be 0.5.
    assert expected_calibration_error([0.48, 0.52], [True, False]) == pytest.approx(0.0)


def test_ece_edges():
    assert expected_calibration_error([], []) is None
    assert expected_calibration_error([1.0], [True]) == pytest.approx(0.0)  # 1.0 goes in the last bin
    assert expected_calibration_error([0.0], [True]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        expected_calibration_error([1.5], [True])
    with pytest.raises(ValueError):
        expected_calibration_error([0.5, 0.5], [True])
    assert not math.isnan(expected_calibration_error([0.3] * 4, [True, False, False, False]))


def _calibration_sample(n: int, seed: int = 1):
    """n (confidence, correct) pairs from a model that is right 60% of the time at confidence 0.8."""
    import random

    rng = random.Random(seed)
    conf = [min(1.0, max(0.0, rng.gauss(0.8, 0.1))) for _ in range(n)]
    return conf, [rng.random() < 0.6 for _ in range(n)]


def test_ece_bootstrap_interval_contains_the_estimate_and_shrinks_with_more_data():
    small, large = _calibration_sample(50), _calibration_sample(2000)
    widths = []
    for conf, correct in (small, large):
        point = expected_calibration_error(conf, correct)
        lo, hi = ece_bootstrap_interval(conf, correct)
        assert 0.0 <= lo <= point <= hi <= 1.0
        assert hi > lo
        widths.append(hi - lo)
    # The width of a bootstrap interval falls about as 1/sqrt(n): 40 times the data, ~6 times narrower.
    assert widths[1] < widths[0] / 3
    # Miscalibrated by about 0.2: the large sample's interval sits around it, away from 0.
    lo, hi = ece_bootstrap_interval(*large)
    assert 0.1 < lo < hi < 0.3


def test_ece_bootstrap_interval_is_deterministic_and_seeded():
    conf, correct = _calibration_sample(80)
    assert ece_bootstrap_interval(conf, correct) == ece_bootstrap_interval(conf, correct)
    assert ece_bootstrap_interval(conf, correct, seed=1) != ece_bootstrap_interval(conf, correct, seed=2)


def test_ece_bootstrap_interval_degenerate():
    assert ece_bootstrap_interval([], []) is None
    assert ece_bootstrap_interval([0.7], [True]) is None
    # Every resample of identical pairs is the same sample: a zero-width interval at the estimate.
    assert ece_bootstrap_interval([0.75] * 10, [True] * 10) == pytest.approx((0.25, 0.25))
