"""Arithmetic accuracy on the held-out probe against problems held out by a hash: what the probe's rule costs.

    python scripts/heldout_partition.py runs/demo/world runs/demo/sft runs/rlvr/grpo

The world's held-out rule (`is_probe_problem` in posttrain/world/arithmetic.py) reads only the operands' last
digits, so the `arithmetic` probe's first columns are digit pairs that training never shows in that column.
This script draws other small problems, the same mix, from a partition decided by a hash of the whole problem,
keeps those in no training stream of WORLD (every JSONL file outside probes/), asks them in the probes'
held-out phrasings, and grades them with the probe's own grader, greedily as `posttrain eval` does. Each model
gets both accuracies with 95% Wilson intervals.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
import sys
from pathlib import Path

PROBLEM = re.compile(r"\d+ [-+*] \d+")


def hashed(problem) -> bool:
    """A tenth of all problems, by a hash of the whole problem (every digit counts)."""
    return int(hashlib.sha256(problem.text.encode()).hexdigest(), 16) % 10 == 0


def trained_problems(world: Path) -> set[str]:
    """Every 'a op b' written anywhere in the world's training streams (its JSONL files outside probes/)."""
    files = [f for f in sorted(world.rglob("*.jsonl")) if "probes" not in f.relative_to(world).parts]
    if not files:
        raise SystemExit(f"{world}: no JSONL streams here; pass the world directory the models trained on "
                         "(a run's world/, written by its world stage or `posttrain world build`)")
    return {m for f in files for m in PROBLEM.findall(f.read_text())}


def hashed_rows(n: int, seen: set[str], seed: int = 0) -> list[dict]:
    """n rows of distinct small problems from the hash partition, none in `seen`, asked as the probe asks."""
    from posttrain.world.arithmetic import ASK_PROBE, sample_problem

    rng, rows, used = random.Random(f"{seed}:hashed-partition"), [], set()
    while len(rows) < n:
        p = sample_problem(rng, "probe", held_out=hashed)
        if p.text in seen or p.text in used:
            continue
        used.add(p.text)
        question = rng.choice(ASK_PROBE).format(p=p.text)
        rows.append({"id": f"hashed-{len(rows):04d}", "messages": [{"role": "user", "content": question}],
                     "meta": {"task": "arithmetic", "answer": str(p.answer), "question": p.text}})
    return rows


def accuracy(model_dir: str, rows_by_set: dict[str, list[dict]], dtype: str) -> dict[str, tuple[float, float, float]]:
    from posttrain.engine import Engine
    from posttrain.evals.probe import ProbeContext, get_probes
    from posttrain.evals.sources import ProbeSource
    from posttrain.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(model_dir, "cpu")
    engine = Engine(model, tok, batch_size=128, dtype=dtype)
    probe = get_probes(["arithmetic"])[0]
    ctx = ProbeContext(tokenizer=tok, facts_loader=ProbeSource(None).facts)
    out = {}
    for name, rows in rows_by_set.items():
        result = probe.score(rows, probe.generate(probe, engine, rows), ctx)
        out[name] = (result.value, result.ci_low, result.ci_high)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("world", type=Path, help="the world directory the models trained on")
    parser.add_argument("models", nargs="+", help="model directories")
    parser.add_argument("--n", type=int, default=150, help="rows of each set (the eval's n)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16"))
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    for model in args.models:
        if not (Path(model) / "config.json").is_file():
            parser.error(f"{model}: not a model directory (no config.json); pass a posttrain artifact or a "
                         "local transformers model directory")
    if not args.world.is_dir():
        parser.error(f"{args.world}: not a directory; pass the world directory the models trained on")
    from posttrain.cli import run_reporting_errors
    from posttrain.evals.sources import ProbeSource

    sets = {"arithmetic probe (last-digit rule)": ProbeSource(None).rows("arithmetic", args.n),
            "hash partition, in no stream": hashed_rows(args.n, trained_problems(args.world))}
    print(f"| model | {' | '.join(sets)} |\n|---|---|---|")

    def rows():
        for model in args.models:
            acc = accuracy(model, sets, args.dtype)
            print(f"| {model} | " + " | ".join(f"{100 * v:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
                                             for v, lo, hi in acc.values()) + " |", flush=True)

    return run_reporting_errors(rows)


if __name__ == "__main__":
    sys.exit(main())
