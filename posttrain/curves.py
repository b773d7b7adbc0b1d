"""Training curves as a PNG: reward, accuracy and response length through an RL run."""

from __future__ import annotations

import os
from pathlib import Path


def save_png(fig, path) -> Path:
    """Write a matplotlib figure as a PNG atomically: a crash mid-write leaves no half-written file.

    The temporary sibling is named as posttrain.outputs expects (.NAME.tmp-PID), so a killed run's leftover
    is cleaned up; open() (unlike mkstemp) gives the file the user's usual permissions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png", dpi=120)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


PANELS = (("Reward", "reward", "track_proxy"), ("Accuracy", "pass@1", "track_accuracy"),
          ("Response length [tokens]", "response_length", "track_response_length"))


def plot_training_curves(lines: list[dict], path, title: str) -> Path:
    """Three panels against the iteration: the training batch's value (line) and the held-out
    tracking's (markers) of reward, accuracy (pass@1 / first verifier) and response length."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(PANELS))
    for ax, (name, train_key, held_key) in zip(axes, PANELS):
        train = [(m["step"], m[train_key]) for m in lines if train_key in m]
        held = [(m["step"], m[held_key]) for m in lines if held_key in m]
        if train:
            ax.plot(*zip(*train), color="C0", lw=1.2, label="training batch")
        if held:
            ax.plot(*zip(*held), color="C1", marker="o", lw=1.2, label="held-out prompts")
        ax.set_title(name)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if train or held:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(title)
    return save_png(fig, path)
