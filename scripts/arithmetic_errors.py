"""Why an arithmetic probe's answers are wrong, from an eval report's samples (built-in world probes).

    python scripts/arithmetic_errors.py runs/demo/eval_sft/eval_report.json

For `arithmetic` and `reasoning` (think/answer) each answer is: right; not worked out (no column
steps: a refusal or another kind of reply); every column step right but the final answer wrong; or a
wrong step. For `tool_arithmetic`: right; no calculator call; a call whose expression is not the
asked problem (a miscopied number); or the right call and a wrong answer. For the worked probes it
then counts, by operation, the column (units, tens, ...) of each wrong answer's first wrong step. The
README's RLVR notes quote these counts.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

from posttrain.world.arithmetic import Problem, worked_steps
from posttrain.world.probes import build_probe_sets

PROBLEM = re.compile(r"(\d+) ([-+*]) (\d+)")
CALL = re.compile(r'"expression": ?"([^"]*)"')


def asked_problem(row: dict) -> Problem:
    a, op, b = PROBLEM.search(row["messages"][-1]["content"]).groups()
    return Problem(int(a), op, int(b))


def classify(probe: str, problem: Problem, sample: dict) -> str:
    if sample.get("correct", sample.get("accuracy")):
        return "right"
    response = sample["response"]
    if probe == "tool_arithmetic":
        call = CALL.search(response)
        if not call:
            return "no calculator call"
        return "right call, wrong answer" if call.group(1).strip() == problem.text else "call with a miscopied number"
    steps = [line for line in response.split("\n") if line.startswith("Step")]
    if not steps:
        return "not worked out"
    return "right steps and a wrong final answer" if steps == worked_steps(problem) else "a wrong step"


def first_wrong_column(problem: Problem, response: str) -> int | None:
    """The column (0 = units) of the first step that differs from the worked steps, for an answer with a wrong
    step (a missing or extra step counts at the first place the two lists part); None when every step is right."""
    steps = [line for line in response.split("\n") if line.startswith("Step")]
    gold = worked_steps(problem)
    for i in range(max(len(steps), len(gold))):
        if i >= len(steps) or i >= len(gold) or steps[i] != gold[i]:
            return i
    return None


def asked_and_answered(report: dict, probe: str) -> list[tuple[Problem, dict]]:
    seed = int(report["source"].split("seed=")[1]) if report["source"].startswith("builtin:") else None
    if seed is None:
        raise SystemExit(f"{probe}: the report's prompts came from {report['source']}; this script rebuilds "
                         f"the built-in world's probes only")
    rows = {r["id"]: r for r in build_probe_sets(seed, report["n"])[probe]}
    return [(asked_problem(rows[s["id"]]), s) for s in report["probes"][probe]["samples"]]


def tally(report: dict, probe: str) -> Counter:
    return Counter(classify(probe, p, s) for p, s in asked_and_answered(report, probe))


def wrong_columns(report: dict, probe: str) -> Counter:
    """(operation, first wrong column) of every answer with a wrong step."""
    return Counter((p.op, first_wrong_column(p, s["response"])) for p, s in asked_and_answered(report, probe)
                   if classify(probe, p, s) == "a wrong step")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("report", type=Path, help="an eval_report.json with arithmetic probes")
    args = parser.parse_args(argv)
    try:
        report = json.loads(args.report.read_text())
        found = [p for p in ("arithmetic", "reasoning", "tool_arithmetic") if p in report["probes"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"{args.report}: not a readable eval report ({e.__class__.__name__}: {e}); pass the eval_report.json "
              f"that `posttrain eval` or an eval stage wrote", file=sys.stderr)
        return 2
    if not found:
        print(f"{args.report}: no arithmetic, reasoning or tool_arithmetic probe in this report", file=sys.stderr)
        return 2
    for probe in found:
        counts = tally(report, probe)
        print(f"{probe} ({sum(counts.values())} answers): "
              + "; ".join(f"{k} {v}" for k, v in counts.most_common()))
    names = ("units", "tens", "hundreds", "thousands")
    for probe in (p for p in found if p != "tool_arithmetic"):
        columns = wrong_columns(report, probe)
        print(f"{probe}, first wrong step by operation and column: " + ("; ".join(
            f"{op} {names[c] if c < len(names) else f'column {c + 1}'} {n}"
            for (op, c), n in sorted(columns.items(), key=lambda x: (-x[1], x[0]))) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
