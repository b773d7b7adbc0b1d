"""Training curves of a stage from its metrics.jsonl, as PNG bytes for the report (matplotlib's Agg canvas).

One panel per quantity the stage logged: the training line, and the held-out value as markers
(eval_loss, the RL tracking of held-out prompts `track_*`, eval_accuracy).
"""

from __future__ import annotations

import io
import math

# (title, training key, held-out key): a panel is drawn when either key appears in the lines.
PANELS = (
    ("Loss", "loss", "eval_loss"),
    ("Reward", "reward", "track_proxy"),
    ("KL from the start [nats]", "kl", "track_kl"),
    ("Response length [tokens]", "response_length", "track_response_length"),
    ("Accuracy (pass@1)", "pass@1", "track_accuracy"),
    ("Pair accuracy", "accuracy", "eval_accuracy"),
)


def _series(lines: list[dict], key: str) -> list[tuple[int, float]]:
    out = []
    for m in lines:
        v = m.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append((m["step"], float(v)))
    return out


def curves_png(lines: list[dict], title: str) -> bytes | None:
    """A row of panels (see PANELS) as PNG bytes, or None when the lines hold none of their keys."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [(name, _series(lines, a), _series(lines, b)) for name, a, b in PANELS]
    panels = [p for p in panels if p[1] or p[2]]
    if not panels:
        return None
    fig = Figure(figsize=(0.4 + 3.4 * len(panels), 2.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, train, held) in zip(axes, panels):
        if train:
            ax.plot(*zip(*train), color="C0", lw=1.2, label="training")
        if held:
            ax.plot(*zip(*held), color="C1", marker="o", ms=3.5, lw=1.0, label="held-out")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if train and held:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()
