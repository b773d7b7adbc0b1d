"""Confidence intervals and calibration error: the maths of the probe suite, as pure functions.

Proportions get a Wilson score interval (it stays inside [0, 1] and behaves at
0/n and n/n, where the normal approximation collapses to a zero-width interval).
Means get the normal approximation mean +- z * sd / sqrt(n) with the sample
standard deviation (n - 1 in the denominator). ECE has no closed form, so it gets
a seeded percentile bootstrap: the same samples always give the same interval.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for `successes` out of `n`; None when n == 0 (nothing measured)."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return None
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = (z / denom) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # Clamp rounding noise: the interval always contains p and lies in [0, 1].
    return max(0.0, min(p, center - half)), min(1.0, max(p, center + half))


def mean_interval(values: Sequence[float], z: float = Z95) -> tuple[float, float] | None:
    """Normal-approximation interval for the mean; None when fewer than two values (no spread)."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = z * math.sqrt(var) / math.sqrt(n)
    return mean - half, mean + half


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], n_bins: int = 15) -> float | None:
    """Standard ECE over `n_bins` equal-width confidence bins: sum_b |B_b|/n * |acc_b - conf_b|.

    Bin b holds confidences in [b/n_bins, (b+1)/n_bins); a confidence of exactly 1.0
    goes in the last bin. Empty bins contribute nothing. None when there are no samples.
    """
    if len(confidences) != len(correct):
        raise ValueError(f"{len(confidences)} confidences but {len(correct)} correctness labels")
    n = len(confidences)
    if n == 0:
        return None
    sums = [[0, 0.0, 0.0] for _ in range(n_bins)]  # count, sum of confidence, sum of correct
    for c, ok in zip(confidences, correct):
        if not 0.0 <= c <= 1.0:
            raise ValueError(f"confidence {c} is outside [0, 1]")
        b = min(int(c * n_bins), n_bins - 1)
        sums[b][0] += 1
        sums[b][1] += c
        sums[b][2] += float(ok)
    return sum(cnt / n * abs(acc / cnt - conf / cnt) for cnt, conf, acc in sums if cnt)


def ece_bootstrap_interval(confidences: Sequence[float], correct: Sequence[bool], n_bins: int = 15,
                           resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval for ECE: resample the (confidence, correct) pairs with replacement.

    Seeded with its own generator, so a report is reproducible and the global random
    state is untouched. ECE is biased upward on small samples (noise adds |acc - conf|
    in every bin), so the resampled values can all lie above the point estimate; the
    interval is widened to contain it, as a reported value outside its own interval
    reads as a bug. None when there are fewer than two samples (no spread to resample).
    """
    point = expected_calibration_error(confidences, correct, n_bins)
    n = len(confidences)
    if point is None or n < 2:
        return None
    rng = random.Random(seed)
    pairs = list(zip(confidences, correct))
    values = []
    for _ in range(resamples):
        sample = rng.choices(pairs, k=n)
        values.append(expected_calibration_error([c for c, _ in sample], [ok for _, ok in sample], n_bins))
    values.sort()
    tail = (1.0 - level) / 2
    lo = values[int(math.floor(tail * (resamples - 1)))]
    hi = values[int(math.ceil((1.0 - tail) * (resamples - 1)))]
    return min(lo, point), max(hi, point)
