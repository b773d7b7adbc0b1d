"""`posttrain eval ARTIFACT`: run the probe suite on a model and write eval_report.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from posttrain.commands.generate import add_overlong_argument
from posttrain.errors import PosttrainError

NAME = "eval"
ORDER = 60
HELP = "run the probe suite on a model or artifact and write its eval report"


def _probe_list() -> str:
    import textwrap

    from posttrain.evals.probe import get_probes

    return "\n".join(
        textwrap.fill(p.description, width=100, initial_indent=f"  {p.name:<22} ", subsequent_indent=" " * 25)
        for p in get_probes(None)
    )


DESCRIPTION = f"""\
Run the probe suite on ARTIFACT (a posttrain artifact or any local transformers
model directory), print a table of every metric with its 95% confidence
interval, and write the full report (per-sample prompt hashes and responses,
chat template hash, code version, device) to ARTIFACT/eval_report.json.

Probes (chat probes use the model's chat template and greedy decoding):
{_probe_list()}

Proportions get Wilson 95% intervals, means mean +- 1.96 sd/sqrt(n).
Without --data the prompts come from the built-in world (seed 0).
A prompt that leaves no room for the reply in the model's context stops the eval
naming the probe and the prompt, unless --overlong truncate (then it keeps its last tokens).
"""


def _refusal_classifier_names() -> str:
    try:
        from posttrain.grading.refusal import REFUSAL_CLASSIFIERS
    except ImportError:
        return "xstest"
    return ", ".join(REFUSAL_CLASSIFIERS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", metavar="ARTIFACT", help="model directory: weights (safetensors) and tokenizer")
    parser.add_argument("--probes", default=None, metavar="A,B,...", help="comma-separated probes to run (default: all)")
    parser.add_argument("--data", default=None, metavar="WORLD_DIR",
                        help="world directory from `posttrain world build` (default: the built-in world, seed 0)")
    parser.add_argument("--n", type=int, default=None, metavar="N", help="at most N prompts per probe set (default: all)")
    parser.add_argument("--out", default=None, metavar="REPORT.json",
                        help="write the report here instead of ARTIFACT/eval_report.json")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="prompts per generation batch (default 32)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1... (default auto)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                        help="compute dtype; auto picks bf16 where the hardware runs it fast")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (the built-in probes decode greedily)")
    parser.add_argument("--refusal-classifier", default="xstest", metavar="NAME",
                        help=f"how refusals are detected: {_refusal_classifier_names()} (default xstest)")
    add_overlong_argument(parser)


def run(args) -> int:
    from posttrain.evals.probe import get_probes
    from posttrain.evals.report import format_table
    from posttrain.evals.runner import run_probes
    from posttrain.models import load_model_and_tokenizer

    artifact = Path(args.artifact)
    probes = [p.strip() for p in args.probes.split(",") if p.strip()] if args.probes else None
    if args.batch_size < 1:
        raise PosttrainError(f"--batch-size must be at least 1, got {args.batch_size}.")
    get_probes(probes)  # unknown names fail here, before the model loads
    model, tokenizer = load_model_and_tokenizer(artifact, device=args.device)
    report = run_probes(
        model, tokenizer, probes=probes, source=args.data, n=args.n, batch_size=args.batch_size,
        dtype=args.dtype, seed=args.seed, refusal_classifier=args.refusal_classifier,
        progress=True, model_name=str(artifact), overlong_prompt=args.overlong,
    )
    out = Path(args.out) if args.out else artifact / "eval_report.json"
    report.save(out)
    print(format_table(report))
    print(f"\n{len(report.probes)} probes in {report.header['wall_time_s']:.1f}s on {report.header['device']} "
          f"({report.header['dtype']}); report written to {out}")
    from posttrain.governance.ledger import LEDGER
    from posttrain.governance.record import record_eval

    if (artifact / LEDGER).is_file():  # an artifact with an audit trail: the eval joins it, the card shows it
        record_eval(out, artifact)
        print(f"recorded in {artifact / LEDGER}; model card {artifact / 'README.md'} regenerated")
    return 0
