"""`posttrain release ARTIFACT --name NAME --version V`: record a named release in the local registry."""

from __future__ import annotations

NAME = "release"
ORDER = 87
HELP = "record a named, versioned release of an artifact in the local registry (refused when its gates failed)"
DESCRIPTION = """\
Record NAME@VERSION for an artifact: a row in the release registry (one SQLite file: --registry, else
$POSTTRAIN_REGISTRY, else ~/.posttrain/registry.sqlite), a `release` entry in the artifact's ledger and a
Releases section in its card, each with the weights sha256, the gate outcome and the deployment
configuration (system prompt, generation settings).

Refused, with nothing written: a NAME@VERSION already released (a release is never replaced); an artifact
whose ledger fails verification or whose weights are not the recorded ones; an artifact with a failed
release gate (recorded by a recipe's `gates:`), unless --force --reason TEXT, which is recorded too.

  posttrain release runs/demo/sft --name world-assistant --version 1.0 \\
      --system-prompt "You answer questions about the world." --set generation.temperature=0.7
  posttrain lineage world-assistant@1.0

See docs/governance.md."""


def add_arguments(parser) -> None:
    parser.add_argument("artifact", metavar="ARTIFACT", help="an artifact directory written by a posttrain stage")
    parser.add_argument("--name", required=True, help="release name: letters, digits and . _ - / (e.g. world-assistant)")
    parser.add_argument("--version", required=True, help="release version, e.g. 1.0.0; a name's versions are never reused")
    parser.add_argument("--registry", metavar="FILE", help="the registry file (default $POSTTRAIN_REGISTRY, else "
                                                           "~/.posttrain/registry.sqlite); created by the first release")
    parser.add_argument("--force", action="store_true", help="release despite failed gates (needs --reason)")
    parser.add_argument("--reason", metavar="TEXT", help="why --force: recorded with the release")
    parser.add_argument("--system-prompt", metavar="TEXT", help="the system prompt the model is deployed with")
    parser.add_argument("--set", action="append", default=[], metavar="generation.KEY=VALUE",
                        help="a deployment generation setting (max_new_tokens, temperature, top_p, top_k, "
                             "stop_strings, seed); repeatable")


def run(args) -> int:
    from posttrain.governance.registry import registry_path
    from posttrain.governance.release import parse_sets, release

    generation = parse_sets(args.set)
    release(args.artifact, args.name, args.version, registry=registry_path(args.registry), force=args.force,
            reason=args.reason, system_prompt=args.system_prompt, generation=generation)
    return 0
