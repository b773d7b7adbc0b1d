"""The over-optimisation maths (Gao et al. 2022): best-of-n KL, the two functional forms, their fits and peaks, the plot."""

from __future__ import annotations

import math

import numpy as np
import pytest

from posttrain.errors import PosttrainError
from posttrain.overoptimisation import (
    Curve,
    FormFit,
    bon_kl,
    bon_n_for_kl,
    fit_bon,
    fit_rl,
    form_value,
    plot_overoptimisation,
)


def test_bon_kl_values():
    assert bon_kl(1) == 0.0
    assert bon_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert bon_kl(4) == pytest.approx(math.log(4) - 0.75)
    assert bon_kl(32) == pytest.approx(math.log(32) - 31 / 32)
    assert bon_kl(16) == pytest.approx(2.7725887 - 0.9375, abs=1e-7)  # 4 ln 2 - 15/16
    assert bon_kl(10**6) - (math.log(10**6) - 1) == pytest.approx(1e-6)  # log n - 1 for large n
    assert all(bon_kl(n) < bon_kl(n + 1) for n in range(1, 50))
    for bad in (0, -3, 2.5):
        with pytest.raises(PosttrainError, match="n >= 1"):
            bon_kl(bad)


@pytest.mark.parametrize("n", [1, 2, 7, 32, 1000])
def test_bon_n_for_kl_inverts_bon_kl(n):
    assert bon_n_for_kl(bon_kl(n)) == pytest.approx(n, rel=1e-9)


def _d_grid():
    return np.sqrt([bon_kl(n) for n in (1, 2, 4, 8, 16, 32, 64, 128)])


def _derivative(fit: FormFit, d: float, h: float = 1e-6) -> float:
    return float((fit(d + h) - fit(d - h)) / (2 * h))


def test_fit_bon_recovers_exact_points_and_its_peak():
    a, b = 0.8, 0.3
    d = _d_grid()
    fit = fit_bon(d, d * (a - b * d))
    assert (fit.a, fit.b) == (pytest.approx(a, abs=1e-10), pytest.approx(b, abs=1e-10))
    assert fit.r2 == pytest.approx(1.0) and fit.points == 7  # d = 0 is not a fitted point
    assert fit.form == "bon" and fit.interior
    assert fit.peak_d == pytest.approx(a / (2 * b)) and fit.peak_value == pytest.approx(a * a / (4 * b))
    assert _derivative(fit, fit.peak_d) == pytest.approx(0, abs=1e-6)
    assert _derivative(fit, fit.peak_d - 0.1) > 0 > _derivative(fit, fit.peak_d + 0.1)  # a maximum
    assert not fit.extrapolated  # 1.33 < sqrt(bon_kl(128)) = 1.94


def test_fit_rl_recovers_exact_points_and_its_peak():
    a, b = 0.5, 0.4
    d = np.linspace(0, 4, 21)  # d = 0 is skipped: log 0
    fit = fit_rl(d, form_value("rl", d, a, b))
    assert (fit.a, fit.b) == (pytest.approx(a, abs=1e-10), pytest.approx(b, abs=1e-10))
    assert fit.points == 20 and fit.interior
    assert fit.peak_d == pytest.approx(math.exp(a / b - 1))
    assert fit.peak_value == pytest.approx(b * fit.peak_d)  # R(d*) = d* (a - (a - b)) = b d*
    assert _derivative(fit, fit.peak_d) == pytest.approx(0, abs=1e-6)
    assert fit(fit.peak_d) > max(fit(fit.peak_d - 0.05), fit(fit.peak_d + 0.05))


@pytest.mark.parametrize("form,fitter,a,b", [("bon", fit_bon, 1.2, 0.5), ("rl", fit_rl, 0.9, 0.6)])
def test_fits_recover_noisy_points(form, fitter, a, b):
    rng = np.random.default_rng(0)
    d = np.repeat(np.linspace(0.1, 2.5, 25), 8)
    r = form_value(form, d, a, b) + rng.normal(0, 0.02, d.size)
    fit = fitter(d, r)
    assert fit.a == pytest.approx(a, abs=0.02) and fit.b == pytest.approx(b, abs=0.02)
    assert 0.9 < fit.r2 < 1.0


def test_points_at_d_zero_carry_no_information():
    d, r = np.array([0.5, 1.0, 1.5]), np.array([0.3, 0.4, 0.3])
    plain = fit_bon(d, r)
    padded = fit_bon(np.r_[0.0, 0.0, d], np.r_[7.0, -3.0, r])  # whatever R is claimed at d = 0
    assert (padded.a, padded.b, padded.r2) == pytest.approx((plain.a, plain.b, plain.r2))
    assert fit_rl(np.r_[-1.0, 0.0, d], np.r_[5.0, 5.0, r]).a == pytest.approx(fit_rl(d, r).a)


def test_no_interior_peak_is_flagged():
    d = np.array([0.5, 1.0, 1.5, 2.0])
    rising = fit_bon(d, d * (0.5 + 0.2 * d))  # b = -0.2: convex, rises over the whole range
    assert rising.b == pytest.approx(-0.2) and not rising.interior
    assert rising.peak_d == 2.0 and rising.peak_value == pytest.approx(2.0 * (0.5 + 0.4))
    falling = fit_bon(d, d * (-0.1 - 0.2 * d))  # a < 0: below the start everywhere
    assert not falling.interior and falling.peak_d == 0.0 and falling.peak_value == 0.0
    beyond = fit_bon(d, d * (1.0 - 0.1 * d))  # d* = 5: predicted, not measured
    assert beyond.interior and beyond.extrapolated and beyond.peak_d == pytest.approx(5.0)
    rl_rising = fit_rl(d, d * (0.3 + 0.2 * np.log(d)))  # b < 0 in the RL form: rises without bound
    assert not rl_rising.interior and rl_rising.peak_d == 2.0


def test_fit_needs_two_distinct_points():
    with pytest.raises(PosttrainError, match="two or more distinct d > 0"):
        fit_bon([0.0, 0.7, 0.7], [0.0, 0.1, 0.2])
    with pytest.raises(PosttrainError, match="one reward per d"):
        fit_rl([0.5, 1.0], [0.1])


def test_fit_round_trips_through_a_dict():
    fit = fit_bon(_d_grid(), _d_grid() * (0.8 - 0.3 * _d_grid()))
    data = fit.to_dict()
    assert data["formula"] == "d (a - b d)" and data["peak_kl"] == pytest.approx(fit.peak_d ** 2)
    assert FormFit.from_dict(data) == fit


def _read_png(path):
    import matplotlib.image

    return matplotlib.image.imread(path)


def test_plot_writes_a_png_with_bon_and_rl_series(tmp_path):
    d = _d_grid()
    proxy, gold = d * (1.0 - 0.05 * d), d * (0.6 - 0.4 * d)
    bon = Curve("best-of-n", list(d), list(proxy), list(gold), fit_bon(d, proxy), fit_bon(d, gold),
                proxy_ci=[(p - 0.05, p + 0.05) for p in proxy], gold_ci=[(g - 0.02, g + 0.02) for g in gold],
                labels=[f"n={n}" for n in (1, 2, 4, 8, 16, 32, 64, 128)])
    rd = np.linspace(0.2, 2.0, 6)
    rl_gold = form_value("rl", rd, 0.2, 0.4)
    rl = Curve("PPO", list(rd), list(rd * 0.9), list(rl_gold), gold_fit=fit_rl(rd, rl_gold))
    out = plot_overoptimisation([bon, rl], tmp_path / "plots" / "curve.png", "test")
    assert out == tmp_path / "plots" / "curve.png" and out.stat().st_size > 10_000
    pixels = _read_png(out)
    assert pixels.ndim == 3 and pixels.shape[0] > 300 and pixels.shape[1] > 1000  # two panels side by side
    assert np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0).shape[0] > 10  # not one colour
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["curve.png"]  # no temporary left behind


def test_plot_without_gold_has_one_panel_and_replaces_the_file(tmp_path):
    path = tmp_path / "proxy.png"
    path.write_bytes(b"old")
    plot_overoptimisation([Curve("best-of-n", [0.0, 0.5, 1.0], [0.0, 0.4, 0.7])], path)
    pixels = _read_png(path)
    assert pixels.shape[1] < pixels.shape[0] * 2  # a single panel: roughly 6.5 x 5 inches
    assert pixels.std() > 0.01
    with pytest.raises(PosttrainError, match="at least one curve"):
        plot_overoptimisation([], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
