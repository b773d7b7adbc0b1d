"""`posttrain contamination --data FILE`: n-gram overlap between training data and the probe sets."""

from __future__ import annotations

NAME = "contamination"
ORDER = 89
HELP = "measure how much of each probe set a training data file contains (13-gram overlap, as GPT-3's study)"
DESCRIPTION = """\
For every probe set, the share of its rows whose text the training data contains: a probe row counts when
one of its n-grams of lowercased words (13 by default) occurs in the data, or, for a probe prompt shorter
than n words, the whole prompt. Training stages run the same check on their data (train.contamination_n).
Exit 0 when no probe set is above --threshold, 1 when one is (the table says which), 2 on bad input.

  posttrain contamination --data runs/demo/world/sft.jsonl            # the world's probes/ next to it
  posttrain contamination --data mine.jsonl --probes runs/demo/world --n 8

See docs/governance.md."""


def add_arguments(parser) -> None:
    parser.add_argument("--data", action="append", required=True, metavar="FILE",
                        help="a training data file (.jsonl/.json/.parquet); repeatable")
    parser.add_argument("--probes", nargs="+", metavar="DIR_OR_FILE",
                        help="probe sets: a world directory, its probes/ folder or .jsonl files (default: the world "
                             "next to the first --data, else the built-in world's)")
    parser.add_argument("--n", type=int, default=13, help="n-gram length in words (default 13)")
    parser.add_argument("--threshold", type=float, default=0.01,
                        help="a probe set with more than this share of rows contaminated is reported (default 0.01)")


def run(args) -> int:
    import math
    import sys
    from pathlib import Path

    from posttrain.errors import PosttrainError
    from posttrain.governance.contamination import check_files, table

    if args.n < 1:
        raise PosttrainError(f"--n {args.n}: the n-gram length must be at least 1 (13 as GPT-3's study; 8 for short "
                             f"texts).")
    if not math.isfinite(args.threshold) or not 0 <= args.threshold <= 1:
        raise PosttrainError(f"--threshold {args.threshold}: must be a share between 0 and 1, e.g. 0.01 for 1%.")
    for p in args.probes or []:
        if not Path(p).exists():
            raise PosttrainError(f"--probes {p} does not exist. Give a world directory, its probes/ folder or probe "
                                 f".jsonl files.")
    result = check_files(args.data, args.probes, n=args.n, threshold=args.threshold)
    print(f"{args.n}-gram overlap of {', '.join(args.data)} ({result.training_words} words) with the probe sets of "
          f"{result.probes}:")
    print(table(result))
    warning = result.warning()
    if warning:
        print(f"posttrain contamination: error: {warning}", file=sys.stderr)
        return 1
    return 0
