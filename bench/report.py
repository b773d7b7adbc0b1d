"""Reporting a bench: where it ran, each side's medians over rounds, the table, and posttrain against TRL.

    environment(dtype), environment_line(env), environment_sentence(env)   CPU, threads, dtype, matmul peak, versions
    summarise(runs, peak_flops)    medians over rounds, and the share of the matmul peak (6·N·tokens/s)
    MEASURE_HEADERS, measure_cells(r), markdown_table(headers, rows)
    Quality                        the held-out measure compared, and whether lower or higher is better
    ratio_lines(res, quality), verdict_lines(res, quality)   posttrain / each TRL setting, and the verdict
    goal_lines(res)                the issue's goals (x TRL's tokens/s, share of the matmul peak, memory), met or not
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from measure import matmul_peak_flops, spread
from sides import OURS


def environment(dtype: str) -> dict:
    """Where the numbers come from: CPU and threads, the dtype ("auto" resolved), library versions, and the matmul
    peak measured now with the threads the sides inherit."""
    import torch
    import transformers
    import trl

    from posttrain.models import device_name, resolve_dtype

    env = dict(device=device_name(torch.device("cpu")), dtype=resolve_dtype(dtype), torch=torch.__version__,
               transformers=transformers.__version__, trl=trl.__version__)
    env["matmul_peak_flops"] = matmul_peak_flops(env["dtype"])
    return env


def environment_line(env: dict) -> str:
    return (f"{env['device']} | dtype {env['dtype']} | matmul peak {env['matmul_peak_flops'] / 1e9:,.1f} GFLOP/s "
            f"| torch {env['torch']} | transformers {env['transformers']} | trl {env['trl']}")


def environment_sentence(env: dict) -> str:
    return (f"CPU: {env['device']}; torch {env['torch']}, transformers {env['transformers']}, trl {env['trl']}; "
            f"dtype {env['dtype']}; matmul peak {env['matmul_peak_flops'] / 1e9:,.1f} GFLOP/s (best of 5 "
            f"2048x2048 {env['dtype']} matmuls here).")


MEASURES = ("tokens_per_s", "mfu", "train_delta_mb", "train_peak_mb", "peak_rss_mb")
MEASURE_HEADERS = ("tokens/s", "6·N·tokens/s of matmul peak", "train peak Δ MB", "train peak MB", "process peak MB")


def summarise(runs: list[dict], peak_flops: float, extra=()) -> dict:
    """One side's rounds -> its first round's result with each measure (and each key of `extra`) the median over
    rounds (every round's value in <measure>_runs); mfu = model FLOP/s (6 x parameters x tokens/s) / the matmul
    peak."""
    for r in runs:
        r["mfu"] = 6 * r["params"] * r["tokens_per_s"] / peak_flops
    out = dict(runs[0])
    for k in (*MEASURES, *extra):
        out[k + "_runs"] = [r[k] for r in runs]
        out[k] = statistics.median(out[k + "_runs"])
    return out


def measure_cells(r: dict) -> list[str]:
    """The cells under MEASURE_HEADERS: median [min–max] over rounds."""
    return [spread(r["tokens_per_s_runs"]), spread([100 * m for m in r["mfu_runs"]], "{:.1f}") + "%",
            spread(r["train_delta_mb_runs"]), spread(r["train_peak_mb_runs"]), spread(r["peak_rss_mb_runs"])]


def markdown_table(headers, rows) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(r) + " |" for r in rows)]


@dataclass(frozen=True)
class Quality:
    """The held-out measure a bench compares (SFT: loss, lower is better; a reward model: accuracy, higher)."""

    key: str = "eval_loss"
    name: str = "held-out loss"
    lower_is_better: bool = True

    def better_or_within(self, ours: float, theirs: float, tolerance: float) -> bool:
        return ours <= theirs * (1 + tolerance) if self.lower_is_better else ours >= theirs * (1 - tolerance)


def ratio_lines(res: dict, quality: Quality = Quality()) -> list[str]:
    """posttrain / each TRL setting: tokens/s, training memory and quality."""
    ours = res[OURS]
    return [f"{OURS} / {s}: tokens/s x{ours['tokens_per_s'] / r['tokens_per_s']:.2f}, "
            f"train peak Δ x{ours['train_delta_mb'] / max(r['train_delta_mb'], 1):.2f}, "
            f"train peak x{ours['train_peak_mb'] / r['train_peak_mb']:.2f}, "
            f"process peak x{ours['peak_rss_mb'] / r['peak_rss_mb']:.2f}, "
            f"{quality.name} {ours[quality.key] - r[quality.key]:+.3f}"
            for s, r in res.items() if s != OURS]


def verdict_lines(res: dict, quality: Quality = Quality(), speed_goal: float = 1.5,
                  tolerance: float = 0.05) -> list[str]:
    """The verdict against TRL's fastest setting: WINS when posttrain has at least `speed_goal` x its steady-state
    tokens/s, needs no more training memory (the rise over the pre-training baseline) and its quality is better or
    within `tolerance`; then a line naming every other TRL setting that needed less training memory."""
    pt, trl = res[OURS], {s: r for s, r in res.items() if s != OURS}
    best = max(trl, key=lambda s: trl[s]["tokens_per_s"])
    b = trl[best]
    speed = pt["tokens_per_s"] / b["tokens_per_s"]
    mem_ok = pt["train_delta_mb"] <= b["train_delta_mb"]  # what training adds, not what each library imports
    q_ok = quality.better_or_within(pt[quality.key], b[quality.key], tolerance)
    good, bad = ("lower", "higher") if quality.lower_is_better else ("higher", "lower")
    better = pt[quality.key] <= b[quality.key] if quality.lower_is_better else pt[quality.key] >= b[quality.key]
    q_word = (good if better else f"{bad}, within {tolerance:.0%}") if q_ok else f"WORSE by more than {tolerance:.0%}"
    q_word = "equal" if pt[quality.key] == b[quality.key] else q_word
    won = speed >= speed_goal and mem_ok and q_ok
    lines = [f"Verdict: {OURS} {'WINS' if won else 'LOSES'} against TRL's fastest setting here ({best}): "
             f"x{speed:.2f} its steady-state tokens/s "
             f"(goal x{speed_goal:g}: {'met' if speed >= speed_goal else 'NOT met'}), "
             f"{'no more' if mem_ok else 'MORE'} training memory ({pt['train_delta_mb']:,.0f} vs "
             f"{b['train_delta_mb']:,.0f} MB over the pre-training baseline), {quality.name} "
             f"{pt[quality.key]:.3f} vs {b[quality.key]:.3f} ({q_word})."]
    leaner = [f"{s} {r['train_delta_mb']:,.0f} MB" for s, r in trl.items()
              if s != best and r["train_delta_mb"] < pt["train_delta_mb"]]
    if leaner:
        lines.append(f"Training memory: {OURS}'s {pt['train_delta_mb']:,.0f} MB is MORE than {', '.join(leaner)}.")
    return lines


def goal_lines(res: dict, speed_goal: float = 3.0, mfu_goal: float = 0.6) -> list[str]:
    """The issue's goals, each met or not: posttrain's steady-state tokens/s at least `speed_goal` x TRL's fastest
    setting, at least `mfu_goal` of the measured matmul peak (6·N·tokens/s), and no more training memory (the rise
    over the pre-training baseline) than any TRL setting."""
    pt, trl = res[OURS], {s: r for s, r in res.items() if s != OURS}
    best = max(trl, key=lambda s: trl[s]["tokens_per_s"])
    leanest = min(trl, key=lambda s: trl[s]["train_delta_mb"])
    speed = pt["tokens_per_s"] / trl[best]["tokens_per_s"]

    def met(ok):
        return "met" if ok else "NOT met"

    return [f"Goals: tokens/s >= x{speed_goal:g} TRL's fastest setting ({best}): x{speed:.2f}, "
            f"{met(speed >= speed_goal)}; >= {mfu_goal:.0%} of the matmul peak: {pt['mfu']:.1%}, "
            f"{met(pt['mfu'] >= mfu_goal)}; training memory <= every TRL setting's: {pt['train_delta_mb']:,.0f} MB vs "
            f"{trl[leanest]['train_delta_mb']:,.0f} MB ({leanest}), "
            f"{met(pt['train_delta_mb'] <= trl[leanest]['train_delta_mb'])}."]
