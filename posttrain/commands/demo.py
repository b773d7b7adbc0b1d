"""`posttrain demo`: a base model becomes an assistant on the built-in world."""

NAME = "demo"
ORDER = 1
HELP = "Run the demo: the shipped base model -> SFT -> probes, with a before/after table."
DESCRIPTION = """Runs recipes/demo.yaml through `posttrain run`: builds the built-in world, probes the
shipped base model, fine-tunes it (SFT) on the world's chats, probes the result, and prints a
before/after table of every probe, the targets of shared/VISION.md, and side-by-side samples.
Rerunning reuses finished stages.

  posttrain demo --quick          # smoke run, about 3 minutes on 2 CPU cores
  posttrain demo --out runs/demo  # the full demo"""


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true", help="Short SFT and fewer probe prompts (for CI smoke tests).")
    parser.add_argument("--out", help="Run directory (default runs/demo or runs/demo-quick).")
    parser.add_argument("--no-progress", action="store_true", help="No progress bars.")


def run(args) -> int:
    from posttrain.demo import run_demo

    run_demo(args.out or ("runs/demo-quick" if args.quick else "runs/demo"), quick=args.quick, progress=not args.no_progress)
    return 0
