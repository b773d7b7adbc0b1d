"""`posttrain lineage ARTIFACT_OR_NAME[@VERSION]`: the chain back to the base model."""

from __future__ import annotations

NAME = "lineage"
ORDER = 88
HELP = "print the chain from the base model to an artifact or a release: data, policies, gates, deployment"
DESCRIPTION = """\
Print, root first, every model in the lineage of an artifact or of a named release: its stage, artifact
id and weights sha256, the data files it was trained on (with sha256), the written policies by hash,
the contamination check, the outcome of each release gate, and each release with its deployment
configuration (system prompt, generation settings). The ledger is verified first (and, for a release,
that the artifact still holds the released weights); a tampered one is refused.

  posttrain lineage runs/demo/sft
  posttrain lineage world-assistant           # its latest version
  posttrain lineage world-assistant@1.0 --registry /path/registry.sqlite

See docs/governance.md."""


def add_arguments(parser) -> None:
    parser.add_argument("target", metavar="ARTIFACT_OR_NAME[@VERSION]",
                        help="an artifact directory, or a release name (latest version) or NAME@VERSION")
    parser.add_argument("--registry", metavar="FILE", help="the registry file (default $POSTTRAIN_REGISTRY, else "
                                                           "~/.posttrain/registry.sqlite)")


def run(args) -> int:
    from posttrain.governance.lineage import describe, resolve

    d, row = resolve(args.target, args.registry)
    print(describe(d, row))
    return 0
