"""`posttrain audit verify|show PATH`: check or print the audit trail of a run, an artifact or a ledger file."""

from __future__ import annotations

import argparse

NAME = "audit"
ORDER = 85
HELP = "verify or show the audit trail (ledger.jsonl) of a run directory, an artifact or a ledger file"
DESCRIPTION = """\
Every artifact carries its lineage ledger (ARTIFACT/ledger.jsonl) and every recipe run a run ledger
(RUN_DIR/ledger.jsonl): append-only JSONL, each entry holding the sha256 of the one before it.

  posttrain audit verify PATH   check the hash chain (and, for an artifact or a run, that each artifact's
                                own stage run and weights are recorded); exit 0 when intact, 1 naming
                                every edited, removed, inserted or reordered entry by line and seq
  posttrain audit show PATH     one line per entry: seq, time, kind and its key facts

PATH is a ledger file, an artifact directory or a run directory. See docs/governance.md."""


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, help_ in (("verify", "check that the ledger's hash chain is intact (exit 1 naming each problem)"),
                          ("show", "print the ledger, one line per entry")):
        p = sub.add_parser(action, help=help_, description=DESCRIPTION,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("path", metavar="PATH", help="a ledger file, an artifact directory or a run directory")


def run(args) -> int:
    return _verify(args.path) if args.action == "verify" else _show(args.path)


def _verify(path) -> int:
    import sys

    from posttrain.governance.audit import check

    checked = check(path)
    bad = [c for c in checked if c.problems]
    for c in checked:
        where = f"{c.label} {c.path}"
        if not c.problems:
            print(f"ok: {c.entries} entries, chain intact: {where}")
        for problem in c.problems:
            print(f"FAILED: {where}: {problem}")
    if not bad:
        return 0
    n = sum(len(c.problems) for c in bad)
    first = bad[0]
    print(f"posttrain audit: error: {n} problem{'s' * (n > 1)} in {len(bad)} ledger{'s' * (len(bad) > 1)} (listed "
          f"above), first: {first.path}: {first.problems[0]}. A ledger is never edited by hand: restore it from a "
          f"copy (the run's ledger.jsonl and every later artifact's lineage hold its entries), or retrain what it "
          f"records.", file=sys.stderr)
    return 1


def _show(path) -> int:
    from posttrain.console import notice
    from posttrain.governance import ledger
    from posttrain.governance.audit import describe, ledgers

    for i, (file, label, _) in enumerate(ledgers(path)):
        if not file.is_file():
            notice(f"{label}: holds no ledger.jsonl")
            continue
        problems = ledger.verify(file)
        if problems:
            notice(f"{file} fails verification ({len(problems)} problem{'s' * (len(problems) > 1)}; "
                   f"`posttrain audit verify {file}` lists them): showing the entries that can be read")
        print(("\n" if i else "") + f"{label}: {file}")
        for e in ledger.read(file, strict=False):
            print(f"{e['seq']:>4}  {e.get('time', '-'):<20}  {e['kind']:<14}  {describe(e)}")
    return 0
