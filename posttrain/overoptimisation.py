"""Reward over-optimisation (Gao et al. 2022): the KL of best-of-n, the functional forms, their fits, the plot.

Optimising a proxy reward moves the policy away from where it started; Gao et al. measure that
distance as d = sqrt(KL(policy || start)) and find that the change of the *gold* reward from the
starting policy follows, for best-of-n sampling and for RL respectively,

    R_bon(d) = d (a - b d)          R_rl(d) = d (a - b log d)

while the proxy the policy is optimised against keeps rising. Both forms pass through the origin
(d = 0 is the starting policy, whose change is 0) and are linear in (a, b), so they are fitted by
ordinary least squares. Best-of-n has an analytic KL, `bon_kl(n)`; an RL run measures its own.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from posttrain.errors import PosttrainError

FORMS = {"bon": "d (a - b d)", "rl": "d (a - b log d)"}


def bon_kl(n: int) -> float:
    """KL(best-of-n || base) = log n - (n - 1) / n, in nats (Stiennon et al. 2020; Gao et al. 2022).

    Exact for a continuous reward with no ties; an upper bound otherwise. n = 1 gives 0.
    """
    if not isinstance(n, int) or n < 1:
        raise PosttrainError(f"best-of-n needs a whole n >= 1, got {n!r}.")
    return math.log(n) - (n - 1) / n


def bon_n_for_kl(kl: float) -> float:
    """The (real) n whose best-of-n KL is `kl`: the inverse of bon_kl, by bisection (bon_kl rises with n)."""
    if kl <= 0:
        return 1.0
    f = lambda n: math.log(n) - (n - 1) / n - kl  # noqa: E731: bon_kl for real n
    lo, hi = 1.0, 2.0
    while f(hi) < 0:
        lo, hi = hi, hi * 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


def form_value(form: str, d, a: float, b: float):
    """R(d) of a form ("bon" or "rl") at d (a float or an array); R(0) = 0 for both (d log d -> 0)."""
    d = np.asarray(d, dtype=float)
    if form == "bon":
        return d * (a - b * d)
    if form == "rl":
        safe = np.where(d > 0, d, 1.0)
        return np.where(d > 0, d * (a - b * np.log(safe)), 0.0)
    raise PosttrainError(f"unknown over-optimisation form {form!r}; use one of {', '.join(FORMS)}.")


@dataclass
class FormFit:
    form: str  # "bon": R = d (a - b d); "rl": R = d (a - b log d)
    a: float
    b: float
    r2: float | None  # 1 - SS_res / SS_tot over the fitted points (about their mean); None when all r are equal
    peak_d: float  # where the fitted R is largest on d >= 0 (see `interior`)
    peak_value: float  # R(peak_d)
    interior: bool  # True: the form has a maximum at peak_d > 0; False: it is monotone, peak_d is an end
    extrapolated: bool  # the peak lies beyond the largest measured d: a prediction, not a measurement
    points: int  # how many points (d > 0) were fitted

    def __call__(self, d):
        return form_value(self.form, d, self.a, self.b)

    def to_dict(self) -> dict:
        return {**asdict(self), "formula": FORMS[self.form], "peak_kl": self.peak_d ** 2}

    @classmethod
    def from_dict(cls, data: dict) -> FormFit:
        """The inverse of to_dict (its derived keys, formula and peak_kl, are dropped)."""
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def _fit(form: str, d, r) -> FormFit:
    """Least squares for R = a x1 - b x2, with x1 = d and x2 = d^2 (bon) or d log d (rl), on points with d > 0.

    d = 0 is the starting policy: R = 0 there whatever (a, b), so such points carry no information.
    """
    d, r = np.asarray(d, dtype=float), np.asarray(r, dtype=float)
    if d.shape != r.shape:
        raise PosttrainError(f"fit_{form}: {d.size} values of d but {r.size} rewards; give one reward per d.")
    keep = d > 0
    d, r = d[keep], r[keep]
    if np.unique(d).size < 2:
        raise PosttrainError(f"fitting R = {FORMS[form]} needs rewards at two or more distinct d > 0, got "
                             f"{np.unique(d).size}; measure more points (for best-of-n, two or more n > 1).")
    second = d * d if form == "bon" else d * np.log(d)
    (a, minus_b), *_ = np.linalg.lstsq(np.stack([d, -second], axis=1), r, rcond=None)
    a, b = float(a), float(minus_b)
    ss_res = float(((r - form_value(form, d, a, b)) ** 2).sum())
    ss_tot = float(((r - r.mean()) ** 2).sum())
    r2 = 1 - ss_res / ss_tot if ss_tot > 0 else None
    d_max = float(d.max())
    if b > 0 and (form == "rl" or a > 0):
        # bon: dR/dd = a - 2 b d = 0. rl: dR/dd = a - b (log d + 1) = 0. Both maxima (R'' < 0 for b > 0).
        peak = a / (2 * b) if form == "bon" else math.exp(a / b - 1)
        interior = True
    else:
        # No maximum inside d > 0: the form rises (peak at the largest measured d) or only falls (peak at 0).
        peak = d_max if float(form_value(form, d_max, a, b)) > 0 else 0.0
        interior = False
    return FormFit(form, a, b, r2, peak, float(form_value(form, peak, a, b)), interior,
                   peak > d_max * (1 + 1e-9), int(d.size))


def fit_bon(d, r) -> FormFit:
    """Fit Gao et al.'s best-of-n form R(d) = d (a - b d) to changes of reward r at d = sqrt(KL).

    Peak at d* = a / (2 b), R(d*) = a^2 / (4 b), when a, b > 0.
    """
    return _fit("bon", d, r)


def fit_rl(d, r) -> FormFit:
    """Fit Gao et al.'s RL form R(d) = d (a - b log d) to changes of reward r at d = sqrt(KL) (d <= 0 skipped).

    Peak where dR/dd = a - b (log d + 1) = 0: d* = exp(a / b - 1), R(d*) = b d*, when b > 0.
    """
    return _fit("rl", d, r)


@dataclass
class Curve:
    """One optimisation run to plot: changes of proxy and gold reward from the start, against d = sqrt(KL)."""

    name: str  # legend label, e.g. "best-of-n" or "PPO"
    d: list[float]
    proxy: list[float]
    gold: list[float] | None = None
    proxy_fit: FormFit | None = None
    gold_fit: FormFit | None = None
    proxy_ci: list[tuple[float, float]] | None = None  # 95% interval of each proxy point (error bars)
    gold_ci: list[tuple[float, float]] | None = None
    labels: list[str] = field(default_factory=list)  # a short tag per point ("n=4", "step 200"), may be empty


def _reach(d_max: float, fit: FormFit | None) -> float:
    """How far right to draw a fit: to its peak when that lies at most half the measured range beyond the data."""
    return max(d_max, fit.peak_d) if fit is not None and fit.interior and fit.peak_d <= 1.5 * d_max else d_max


def _draw(ax, curve: Curve, values, fit, ci, color, marker: str) -> None:
    d = np.asarray(curve.d, dtype=float)
    yerr = None
    if ci:
        lo, hi = np.asarray(ci, dtype=float).T
        yerr = np.stack([np.asarray(values) - lo, hi - np.asarray(values)]).clip(min=0)
    ax.errorbar(d, values, yerr=yerr, fmt=marker, color=color, capsize=3, ms=5, label=f"{curve.name} (measured)")
    if fit is not None:
        grid = np.linspace(0, _reach(float(d.max()), fit) * 1.05, 200)
        ax.plot(grid, fit(grid), "-", color=color, alpha=0.7, label=f"{curve.name} fit: {FORMS[fit.form]}"
                f", a={fit.a:.3g}, b={fit.b:.3g}")
    for x, y, tag in zip(d, values, curve.labels):
        ax.annotate(tag, (x, y), textcoords="offset points", xytext=(4, -11), fontsize=7, color="0.35")


def _mark_gold_peak(axes, curve: Curve, color) -> None:
    """A star on the highest measured gold point, and a dotted line at the fitted peak, on every panel."""
    i = int(np.argmax(curve.gold))
    axes[-1].plot(curve.d[i], curve.gold[i], "*", ms=16, color=color, mec="black", zorder=5,
                  label=f"{curve.name}: gold peak (measured, d={curve.d[i]:.2f})")
    fit = curve.gold_fit
    if fit is None or not fit.interior:
        return
    if fit.peak_d <= _reach(max(curve.d), fit):
        for ax in axes:
            ax.axvline(fit.peak_d, ls=":", color=color, lw=1.5,
                       label=f"{curve.name}: gold peak (fit, d={fit.peak_d:.2f})" if ax is axes[-1] else None)
    else:  # far beyond the data: named, not drawn, so the measured range keeps the width of the plot
        axes[-1].plot([], [], " ", label=f"{curve.name}: fitted gold peak beyond the plot, d={fit.peak_d:.2f}")


def plot_overoptimisation(curves: list[Curve], path, title: str = "Reward over-optimisation") -> Path:
    """Draw proxy and gold change vs d = sqrt(KL) for each curve (one panel each) and write a PNG atomically.

    Each curve gets its own colour in both panels; gold's highest measured point is starred and its fitted
    peak drawn as a dotted line across both, so one sees the proxy still rising where gold turns. The
    top axis reads KL in nats. Drawn with the Agg canvas: no display is needed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not curves:
        raise PosttrainError("plot_overoptimisation needs at least one curve to draw.")
    has_gold = any(c.gold is not None for c in curves)
    fig = Figure(figsize=(12 if has_gold else 6.5, 5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if has_gold else 1, sharex=True, squeeze=False)[0]
    for i, curve in enumerate(curves):
        color, marker = f"C{i % 10}", "os^Dv"[i % 5]  # colour and shape: readable in greyscale too
        _draw(axes[0], curve, curve.proxy, curve.proxy_fit, curve.proxy_ci, color, marker)
        if curve.gold is not None:
            _draw(axes[1], curve, curve.gold, curve.gold_fit, curve.gold_ci, color, marker)
            _mark_gold_peak(axes, curve, color)
    names = ["proxy reward: change from start", "gold reward: change from start"]
    for ax, name in zip(axes, names):
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_xlabel("d = sqrt(KL(policy || start))  [sqrt nats]")
        ax.set_ylabel(name)
        ax.set_title(name.split(":")[0].capitalize())
        ax.set_xlim(left=-0.02 * max(max(c.d) for c in curves))  # room for the marker of d = 0
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        # KL = d^2, kept monotone left of 0 so the top axis can map the margin.
        top = ax.secondary_xaxis("top", functions=(lambda x: np.sign(x) * np.square(x),
                                                   lambda k: np.sign(k) * np.sqrt(np.abs(k))))
        top.set_xlabel("KL [nats]")
    fig.suptitle(title)
    from posttrain.curves import save_png

    return save_png(fig, path)
