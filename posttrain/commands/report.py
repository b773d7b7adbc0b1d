"""`posttrain report RUN_DIR`: one self-contained HTML page about a recipe run."""

from __future__ import annotations

import os
from pathlib import Path

NAME = "report"
ORDER = 80
HELP = "Write one self-contained HTML page about a run: pipeline map, probe table, curves, gates, samples."
DESCRIPTION = """Read a run directory (`posttrain run RECIPE --out DIR`) and write one HTML file that
needs no network (open it in any browser, mail it, attach it to a review):

  - the pipeline as a map of stages and artifacts (parent -> child, from provenance.json);
  - every probe of every eval stage with its 95% interval and its change from the eval
    of the parent model, better or worse beyond the parent's interval marked;
  - training curves from each stage's metrics.jsonl (loss; reward, KL and response
    length for RL stages) and the over-optimisation curve;
  - gate outcomes recorded in provenance ("no gates declared" otherwise);
  - the same held-out probe prompts answered by each eval stage, side by side.

  posttrain report runs/demo                      # writes runs/demo/report.html
  posttrain report runs/demo --out /tmp/demo.html

A report written before is replaced; any other existing file only with --overwrite.
Parts of the run that cannot be read are listed on the page and as notices. See docs/report.md."""


def add_arguments(parser):
    parser.add_argument("run_dir", metavar="RUN_DIR", help="Run directory of `posttrain run` (or one stage folder of it).")
    parser.add_argument("--out", metavar="FILE.html", help="Where to write the page (default RUN_DIR/report.html).")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace an existing --out that is not a posttrain report (never a file the report reads).")


def is_report(path: Path) -> bool:
    """Whether `path` is a page `posttrain report` wrote (its generator meta tag, near the top)."""
    from posttrain.reporting.page import GENERATOR

    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return f'<meta name="generator" content="{GENERATOR}'.encode() in head


def check_out(out, reads: list[Path], overwrite: bool) -> Path:
    """The resolved --out, or an OutputError naming it and the fix (see docs/safety.md)."""
    from posttrain.errors import OutputError
    from posttrain.outputs import check_output, refuse_protected, resolved

    refuse_protected(out, "--out")
    target = resolved(out, "--out")
    if target.is_dir():
        raise OutputError(f"--out {out} is a directory; the report is one HTML file. Give a file name, "
                          f"e.g. --out {Path(out) / 'report.html'}.")
    if target in {resolved(p, "RUN_DIR") for p in reads}:
        raise OutputError(f"--out {out} is a file this report reads from the run; writing there would destroy it "
                          f"(--overwrite does not change this). Choose another --out, e.g. one ending in .html.")
    if target.exists() and not target.is_file():
        raise OutputError(f"--out {out} exists and is not a regular file (a pipe, socket or device). "
                          f"Choose another --out.")
    if target.is_file() and not is_report(target) and not overwrite:
        raise OutputError(f"--out {out} is a file ({target.stat().st_size} bytes) that is not a posttrain report; "
                          f"posttrain never replaces existing data unless asked. Choose another --out, or pass "
                          f"--overwrite to replace it.")
    check_output(target, inputs={}, overwrite=True, option="--out")  # the folder it goes in: a writable directory
    return target


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary sibling named as posttrain.outputs expects, then rename: never half a page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def run(args) -> int:
    from posttrain.console import notice
    from posttrain.reporting.page import render
    from posttrain.reporting.rundir import read_run

    run_ = read_run(args.run_dir)
    out = args.out if args.out is not None else str(Path(args.run_dir) / "report.html")
    target = check_out(out, run_.reads, args.overwrite)
    page = render(run_)
    write_atomic(target, page)
    for st in run_.stages:
        for problem in st.problems:
            notice(f"report: {problem}")
    evals = sum(1 for s in run_.stages if s.kind == "eval")
    stages = len(run_.stages)
    print(f"wrote {out} ({len(page.encode()) / 1024:.0f} KB): {stages} stage{'s' * (stages != 1)}, "
          f"{evals} eval{'s' * (evals != 1)}. "
          f"Open it in a browser; it needs no network.")
    return 0
