"""`posttrain config`: show a stage's options, or regenerate docs/options.md."""

NAME = "config"
ORDER = 90
HELP = "Show every option of a stage with its default, or write the options reference (docs/options.md)."
DESCRIPTION = """  posttrain config show sft                   # table of sft options and defaults
  posttrain config show sft --set lr=1e-5     # the resolved config as YAML
  posttrain config docs --out docs/options.md # regenerate the reference page
  posttrain config docs --check               # exit 1 if the page is out of date"""


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = sub.add_parser("show", help="Show a stage's options.")
    s.add_argument("stage", help="Stage name, e.g. sft or pretrain.")
    s.add_argument("--config", help="YAML file to resolve.")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="Overrides to resolve.")
    d = sub.add_parser("docs", help="Write the options reference generated from the config classes.")
    d.add_argument("--out", default="docs/options.md", help="Where to write it (default docs/options.md).")
    d.add_argument("--check", action="store_true", help="Only check that --out is up to date.")


def run(args) -> int:
    from pathlib import Path

    import yaml

    from posttrain.config import TABLE_HEAD, load_config, options_table, to_dict
    from posttrain.errors import ConfigError
    from posttrain.stages.registry import options_page, stage_configs

    configs = stage_configs()
    if args.action == "show":
        if args.stage not in configs:
            raise ConfigError(f"unknown stage '{args.stage}'; stages: {', '.join(configs)}.")
        cls = configs[args.stage]
        if args.config or args.set:
            print(yaml.safe_dump(to_dict(load_config(cls, args.config, args.set, stage=args.stage)), sort_keys=False))
        else:
            print("\n".join([*TABLE_HEAD, *options_table(cls)]))
        return 0
    text = options_page()
    out = Path(args.out)
    if args.check:
        if not out.exists() or out.read_text() != text:
            print(f"{out} is out of date: run `posttrain config docs --out {out}`.")
            return 1
        print(f"{out} is up to date.")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0
