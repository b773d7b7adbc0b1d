"""pass@k of models on held-out probes: how much of a probe a model solves when it may sample k times.

    python scripts/pass_at_k.py runs/demo/sft runs/rlvr/grpo
    python scripts/pass_at_k.py runs/demo/sft --probes arithmetic --samples 32 --temperature 0.7

Each model answers every row of each probe `--samples` times at `--temperature` (the probe's own prompts,
token limit, tools and grader), and pass@k for k = 1, 2, 4, ... up to --samples is the unbiased estimate
1 - C(n - c, k) / C(n, k) over the n samples of a row of which c are right (Chen et al. 2021), averaged over
rows. Comparing a policy before and after RL tells whether RL taught it to solve problems it could not
solve before (pass@k at large k rises) or to give more often an answer it could already sample (pass@1
rises towards the start's pass@k, pass@k at large k stays): the README's RLVR notes quote both.

Probes graded right or wrong per row: arithmetic, reasoning, large_arithmetic, tool_arithmetic,
knowledge_exposure. Rows come from the built-in world (seed 0) unless --data names a world directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from posttrain.cli import run_reporting_errors
from posttrain.stages.grpo import pass_at_k

PROBES = ("arithmetic", "reasoning", "large_arithmetic", "tool_arithmetic", "knowledge_exposure")


def ks(samples: int) -> list[int]:
    """1, 2, 4, ... up to samples, and samples itself."""
    out = [1]
    while out[-1] * 2 <= samples:
        out.append(out[-1] * 2)
    return out if out[-1] == samples else out + [samples]


def row_correct(per_sample: list[dict]) -> list[bool]:
    """Right or wrong of each sample record a probe's grader wrote (`correct` or `accuracy`)."""
    return [bool(s["correct"] if "correct" in s else s["accuracy"]) for s in per_sample]


def pass_curve(correct: list[bool], samples: int) -> dict[int, float]:
    """pass@k for each k of ks(samples), from prompt-major right/wrong flags, `samples` per row."""
    counts = [sum(correct[i:i + samples]) for i in range(0, len(correct), samples)]
    return {k: sum(pass_at_k(samples, c, k) for c in counts) / len(counts) for k in ks(samples)}


def measure(model_dir: str, probes: list[str], samples: int, temperature: float, n: int | None, data: str | None,
            seed: int, dtype: str) -> dict[str, dict[int, float]]:
    from posttrain.engine import Engine
    from posttrain.evals.probe import ProbeContext, get_probes
    from posttrain.evals.sources import ProbeSource
    from posttrain.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(model_dir, "cpu")
    engine = Engine(model, tok, batch_size=128, dtype=dtype)
    source = ProbeSource(data)
    ctx = ProbeContext(tokenizer=tok, facts_loader=source.facts)
    out = {}
    for probe in get_probes(probes):
        probe = dataclasses.replace(probe, params={**probe.params, "n": samples, "temperature": temperature,
                                                   "seed": seed})
        rows = probe.rows(source, n)
        completions = probe.generate(probe, engine, rows)
        result = probe.score([r for r in rows for _ in range(samples)], completions, ctx)
        out[probe.name] = pass_curve(row_correct(result.per_sample), samples)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model directories (posttrain artifacts or transformers models)")
    parser.add_argument("--probes", default="arithmetic,reasoning", help=f"comma list of: {', '.join(PROBES)}")
    parser.add_argument("--samples", type=int, default=16, help="samples per row (the largest k)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (GRPO's default)")
    parser.add_argument("--n", type=int, default=150, help="rows per probe (the eval's n)")
    parser.add_argument("--data", help="a world directory (default: the built-in world, seed 0)")
    parser.add_argument("--seed", type=int, default=1, help="sampling seed")
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16"))
    args = parser.parse_args(argv)
    probes = [p.strip() for p in args.probes.split(",") if p.strip()]
    bad = [p for p in probes if p not in PROBES]
    if bad or not probes:
        parser.error(f"--probes {args.probes}: {', '.join(bad) or 'none given'} is not one of {', '.join(PROBES)}")
    if args.samples < 1 or args.n < 1 or args.temperature <= 0:
        parser.error("--samples and --n must be at least 1 and --temperature above 0 (pass@k needs sampling)")
    for model in args.models:
        if not (Path(model) / "config.json").is_file():
            parser.error(f"{model}: not a model directory (no config.json); pass a posttrain artifact or a "
                         "local transformers model directory")
    print(f"pass@k, {args.samples} samples a row at temperature {args.temperature}, {args.n} rows a probe")
    header = " | ".join(f"pass@{k}" for k in ks(args.samples))
    print(f"| model | probe | {header} |\n|---|---|" + "---|" * len(ks(args.samples)))

    def rows():
        for model in args.models:
            curves = measure(model, probes, args.samples, args.temperature, args.n, args.data, args.seed, args.dtype)
            for probe, curve in curves.items():
                print(f"| {model} | {probe} | " + " | ".join(f"{100 * v:.1f}%" for v in curve.values()) + " |",
                      flush=True)

    return run_reporting_errors(rows)


if __name__ == "__main__":
    sys.exit(main())
