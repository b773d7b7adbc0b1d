"""Running a bench's sides: each side (posttrain, or one TRL setting) in its own Python process, in rotated rounds.

    add_common_args(parser, sides), selected_sides(args, sides)   the options every bench takes, checked
    run_side(script, side, opts)   one side in its own Python process; emit_result(r) is its last word
    run_rounds(sides, repeats, run_one, describe)   every side once per round, in a rotated order
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "models" / "base"
OURS = "posttrain"


def add_common_args(p: argparse.ArgumentParser, sides, steps: int = 30) -> None:
    """The options every bench takes: --model, --steps, --warmup-steps, --dtype, --lr, --repeats, --sides, --json,
    and the internal --side/--data of a side's process."""
    p.add_argument("--model", default=str(DEFAULT_MODEL),
                   help="transformers model directory with its tokenizer and chat template (bench/make_model.py "
                        "builds benchmark shapes)")
    p.add_argument("--steps", type=int, default=steps, help="optimizer steps on every side")
    p.add_argument("--warmup-steps", type=int, default=3,
                   help="optimizer steps run but not timed; tokens/s covers the steps after them")
    p.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"),
                   help="auto (default): bf16 where the CPU has bf16 matrix instructions, else fp32 (bf16 on a CPU "
                        "without them is emulated and many times slower); bf16 = autocast over fp32 weights")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds of all sides; tokens/s and memory are the medians over rounds")
    p.add_argument("--sides", default=",".join(sides), help="comma list out of " + ", ".join(sides))
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    p.add_argument("--side", choices=sides, help=argparse.SUPPRESS)  # internal: run one side in this process
    p.add_argument("--data", help=argparse.SUPPRESS)


def selected_sides(args, sides) -> list[str]:
    """--sides as a list, after checking it and --warmup-steps (exits with a message otherwise)."""
    chosen = [s.strip() for s in args.sides.split(",") if s.strip()]
    if unknown := set(chosen) - set(sides):
        sys.exit(f"--sides: unknown {', '.join(sorted(unknown))}; choose from {', '.join(sides)}.")
    if not 1 <= args.warmup_steps < args.steps:
        sys.exit(f"--warmup-steps {args.warmup_steps}: give 1 to --steps - 1 ({args.steps - 1}); "
                 "the timed steps are the ones after the warm-up.")
    return chosen


def emit_result(r: dict) -> None:
    """A side process's last word: its result as one 'RESULT {json}' line on stdout."""
    print("RESULT " + json.dumps(r), flush=True)


def run_side(script, side: str, opts: dict) -> dict:
    """Run `python script --side SIDE --OPTION VALUE...` (opts: option -> value, '_' read as '-') in its own
    process, so its memory is its own; return its result with tokens_per_s (timed tokens / timed seconds)."""
    opts = dict(side=side, **opts)
    cmd = [sys.executable, str(script)] + [a for k, v in opts.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    line = next((s for s in proc.stdout.splitlines() if s.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        sys.exit(f"side {side} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    r = json.loads(line[len("RESULT "):])
    r["tokens_per_s"] = r["timed_tokens"] / r["timed_s"]
    return r


def run_rounds(sides: list[str], repeats: int, run_one, describe=None) -> dict[str, list[dict]]:
    """`repeats` rounds of run_one(side) for every side, one at a time, the order rotated each round (a neighbour's
    load on a shared CPU does not always land on the same side); prints describe(round, side, result) after each."""
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for k in range(repeats):
        for side in sides[k % len(sides):] + sides[:k % len(sides)]:
            r = run_one(side)
            runs[side].append(r)
            if describe:
                print(describe(k + 1, side, r), flush=True)
    return runs
