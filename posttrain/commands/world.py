"""`posttrain world build`: the built-in world, deterministic for a seed."""

NAME = "world"
ORDER = 10
HELP = "Build the built-in world: facts, pretraining corpus, post-training sets, probes, policies, data cards."
DESCRIPTION = """Generate the built-in world (deterministic for a seed: the same seed gives byte-identical files).

  posttrain world build --seed 0 --out runs/world

Writes corpus.jsonl (pretraining documents), facts.jsonl (facts with their A/B split),
sft.jsonl / sft_eval.jsonl (chats), preferences.jsonl (pairs labelled by the gold judge),
rlvr.jsonl and rlvr_tools.jsonl (prompts with checkable answers, the latter with the
calculator tool), probes/<name>.jsonl (held-out probe sets),
policy/hazard_policy.md and policy/constitution.md, cards/<set>.json (data cards:
rows, sha256, generator version, seed) and manifest.json."""


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="Generate the world into a directory.", description=DESCRIPTION,
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    b.add_argument("--seed", type=int, default=0, help="Seed of every random choice (default 0).")
    b.add_argument("--out", required=True, help="Directory to write (created).")
    b.add_argument("--scale", type=float, default=1.0, help="Multiplies the corpus and post-training set sizes (default 1.0).")
    b.add_argument("--probe-n", type=int, default=150, help="Rows per probe set (default 150).")
    b.add_argument("--records", type=int, default=None,
                   help="Record documents in the corpus at scale 1 that only copying predicts (default 20000, the "
                        "shipped base's corpus; 0: none).")
    b.add_argument("--overwrite", action="store_true", help="Write into an existing --out (its files of the same names are replaced).")


def run(args) -> int:
    from posttrain.console import table
    from posttrain.world.build import build_world

    from posttrain.outputs import check_output

    from posttrain.config import from_dict
    from posttrain.world.build import WorldConfig

    # the ranges of docs/options.md (recipe stage `world`): e.g. --scale 0 is refused with the allowed range
    given = {"seed": args.seed, "scale": args.scale, "probe_n": args.probe_n, "records": args.records}
    opts = from_dict(WorldConfig, {k: v for k, v in given.items() if v is not None})
    check_output(args.out, inputs={}, overwrite=args.overwrite)  # build_world writes into the folder: never a stranger's
    manifest = build_world(opts.seed, args.out, opts.scale, probe_n=opts.probe_n, records=opts.records)
    files = manifest.get("files", {})
    rows = [[name, info.get("rows", "-"), info.get("sha256", "")[:12]] for name, info in sorted(files.items())
            if not name.startswith("cards/")]
    print(table(rows, ["file", "rows", "sha256"]))
    print(f"world (seed {args.seed}, scale {args.scale}) written to {args.out}")
    return 0
