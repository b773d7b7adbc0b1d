"""`posttrain preferences sample`: on-policy preference pairs from a policy's own samples."""

from __future__ import annotations

import argparse

from posttrain.commands.generate import add_model_arguments

NAME = "preferences"
ORDER = 45
HELP = "make preference pairs from a policy's own samples, labelled by gold, a reward model or an AI judge"
DESCRIPTION = """\
Preference data made from a policy's own samples (on-policy, for iterative DPO or a fresh reward model).

  posttrain preferences sample ARTIFACT --prompts FILE --out FILE.jsonl --label LABELLER [options]

See `posttrain preferences sample --help`."""

SAMPLE_DESCRIPTION = """\
Sample --n responses per prompt from ARTIFACT (temperature 1 by default), label them, and write one
preference pair per prompt in the format `posttrain dpo` and `posttrain reward` read:
  {"prompt": [...], "chosen": [{"role": "assistant", ...}], "rejected": [...], "meta": {...}}

--label says who decides which response is better:
  gold              the built-in world's exact judge; every prompt row needs the world's "meta"
  RM_DIR            a reward model from `posttrain reward`
  module:function   your function f(prompt, response, meta) -> float (module in the current directory)
  ai:JUDGE_DIR      an AI judge (RLAIF, Constitutional AI): a causal LM shown a principle drawn from
                    --constitution (default: the world's) and asked "which reply follows it better:
                    (A) ... (B) ...?". The label is its next-token p(A) / (p(A) + p(B)), averaged over
                    both orders of the replies to cancel its position bias.

Pairs: scoring labellers (gold, RM_DIR, module:function) score all --n responses and pair the best
with the worst, dropping ties (best - worst <= --margin). The AI judge compares two responses with
different texts drawn at random, dropping labels with |p - 0.5| <= --margin. A prompt whose samples
are all the same text gives no pair. Each row keeps its prompt's meta and adds "labeller" and the
label (scores, or the probability, the principle and both orders' probabilities).

When the prompts carry the world's meta ("task"), every pair is also graded by the gold judge, and the
summary reports how often the labeller's chosen response has the higher gold score (gold ties left
out), with a 95% interval. The summary is printed and written to OUT.summary.json beside --out.

examples:
  posttrain preferences sample runs/demo/sft --prompts runs/demo/world/preferences.jsonl \\
      --out /tmp/prefs.jsonl --n 4 --label gold
  posttrain preferences sample runs/demo/sft --prompts runs/demo/world/preferences.jsonl \\
      --out /tmp/prefs_rm.jsonl --label runs/demo/reward --limit 200
  posttrain preferences sample runs/demo/sft --prompts runs/demo/world/preferences.jsonl \\
      --out /tmp/prefs_ai.jsonl --n 2 --label ai:runs/demo/sft --margin 0.05 \\
      --constitution runs/demo/world/policy/constitution.md
"""


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = sub.add_parser("sample", help="sample, label and pair a policy's responses", description=SAMPLE_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(s)
    s.add_argument("--prompts", required=True, metavar="FILE",
                   help="prompt rows (prompt-only or preference format; .jsonl/.json/.parquet); their 'meta' is kept")
    s.add_argument("--out", required=True, metavar="FILE.jsonl", help="preference rows to write (never replaced "
                   "unless --overwrite); the summary goes to FILE.summary.json")
    s.add_argument("--label", required=True, metavar="gold|RM_DIR|ai:JUDGE_DIR|module:function",
                   help="who labels the pairs (see above)")
    s.add_argument("--n", type=int, default=4, metavar="N", help="responses sampled per prompt (default: 4)")
    s.add_argument("--constitution", metavar="FILE.md", help="principles for the AI judge, one per list item "
                   "(default: the built-in world's constitution)")
    s.add_argument("--margin", type=float, default=0.0, metavar="M",
                   help="drop weaker labels: score gap <= M, or |p - 0.5| <= M for the AI judge (default: 0)")
    s.add_argument("--limit", type=int, metavar="N", help="use only the first N prompts (default: all)")
    s.add_argument("--batch-size", type=int, default=32, metavar="N",
                   help="sequences generated together (default: 32)")
    g = s.add_argument_group("sampling")
    g.add_argument("--temperature", type=float, default=1.0, metavar="T",
                   help="sampling temperature (default: 1; 0 is greedy, which makes every sample the same)")
    g.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling (default: 1, off)")
    g.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="most tokens per response "
                   "(default: 128)")
    g.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seed of sampling, of the pairs the AI judge compares and of its principles (default: 0)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out (never an input)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")


def run(args) -> int:
    from pathlib import Path

    from posttrain.config import from_dict
    from posttrain.console import summary
    from posttrain.errors import PosttrainError
    from posttrain.feedback.config import PreferencesConfig
    from posttrain.feedback.sampling import (
        parse_label, sample_preferences, summary_items, summary_path, write_preferences,
    )
    from posttrain.outputs import check_output

    # Options, inputs and outputs are checked before any model loads.
    opts = from_dict(PreferencesConfig, {"n": args.n, "label": args.label, "limit": args.limit, "seed": args.seed,
                                         "temperature": args.temperature, "max_new_tokens": args.max_new_tokens,
                                         "constitution": args.constitution, "margin": args.margin})
    if args.batch_size < 1:
        raise PosttrainError(f"--batch-size must be at least 1, got {args.batch_size}.")
    if not Path(args.prompts).exists():
        raise PosttrainError(f"--prompts {args.prompts} does not exist. Give a file of prompt rows, e.g. the "
                             f"preferences.jsonl of `posttrain world build`.")
    kind, judge = parse_label(opts.label)
    if kind != "ai" and opts.constitution:
        raise PosttrainError(f"--constitution is read by the AI judge only, but --label is {opts.label!r}. Drop "
                             f"--constitution, or label with ai:JUDGE_DIR.")
    inputs = {"--prompts": args.prompts, "ARTIFACT": args.artifact, "--constitution": opts.constitution,
              "--label": judge if kind == "ai" else opts.label if kind == "reward_model" else None}
    check_output(args.out, inputs=inputs, overwrite=args.overwrite)
    check_output(summary_path(args.out), inputs=inputs, overwrite=args.overwrite,
                 option=f"the summary file (beside --out {args.out})")

    rows, result = sample_preferences(
        args.artifact, args.prompts, opts.n, opts.label, limit=opts.limit, seed=opts.seed,
        temperature=opts.temperature, max_new_tokens=opts.max_new_tokens, top_p=args.top_p, margin=opts.margin,
        constitution=opts.constitution, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
        chat_template=args.chat_template, progress=not args.no_progress)
    out, side = write_preferences(args.out, rows, result)
    print(summary(f"preferences sampled from {args.artifact}", summary_items(result)))
    print(f"\nwrote {len(rows)} pairs to {out}; summary in {side}")
    return 0
