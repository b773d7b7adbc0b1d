"""`posttrain card ARTIFACT`: regenerate an artifact's model card (README.md) from its provenance and ledger."""

from __future__ import annotations

NAME = "card"
ORDER = 86
HELP = "regenerate an artifact's model card (README.md) from its provenance, lineage ledger and eval reports"
DESCRIPTION = """\
Write ARTIFACT/README.md, the model card in the Hugging Face format: YAML metadata (base_model, datasets,
license, tags, pipeline_tag, model-index with every probe result and its 95% interval) and sections on the
recipe, the safety policy it was trained against (by hash and in full), evaluation against the parent,
known limitations (every target missed, by how much), intended and out-of-scope uses, and the weights hash.

The card is generated, never edited: every stage writes it, evals regenerate it, and this command rewrites
it (e.g. after `posttrain eval ARTIFACT --out elsewhere.json`, with --eval elsewhere.json).

  posttrain card runs/demo/sft
  posttrain card runs/demo/sft --eval runs/demo/eval_sft/eval_report.json

See docs/governance.md."""


def add_arguments(parser) -> None:
    parser.add_argument("artifact", metavar="ARTIFACT", help="an artifact directory written by a posttrain stage")
    parser.add_argument("--eval", action="append", default=[], metavar="REPORT.json",
                        help="an eval report of this artifact to include (repeatable); its own eval_report.json and "
                             "the evals in its ledger are always included")


def _check_report(path: str) -> None:
    import json
    from pathlib import Path

    from posttrain.errors import PosttrainError
    from posttrain.evals.report import REPORT_FORMAT

    p = Path(path)
    if not p.is_file():
        raise PosttrainError(f"--eval {path} is not a file. Give an eval_report.json written by `posttrain eval`.")
    try:
        report = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise PosttrainError(f"--eval {path} is not JSON ({e}). Give an eval_report.json written by "
                             f"`posttrain eval`.") from None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT or not isinstance(report.get("probes"), dict):
        raise PosttrainError(f"--eval {path} is not a posttrain eval report (no \"format\": \"{REPORT_FORMAT}\" "
                             f"with probes). Give an eval_report.json written by `posttrain eval`.")


def run(args) -> int:
    from pathlib import Path

    from posttrain.errors import PosttrainError
    from posttrain.governance import ledger
    from posttrain.governance.card import write_model_card
    from posttrain.outputs import resolved

    artifact = Path(args.artifact)
    resolved(artifact, "ARTIFACT")
    if not (artifact / "provenance.json").is_file():
        raise PosttrainError(f"{args.artifact} holds no provenance.json: it is not an artifact written by a posttrain "
                             f"stage, so there is no lineage to describe. Give an artifact directory.")
    for report in args.eval:
        _check_report(report)
    own = artifact / ledger.LEDGER
    problems = ledger.verify(own) if own.is_file() else []
    if problems:
        raise PosttrainError(f"{own} fails verification ({problems[0]}{'; ...' if len(problems) > 1 else ''}), so a "
                             f"card made from it could carry altered facts. Restore the ledger from a copy first; "
                             f"`posttrain audit verify {artifact}` lists every problem.")
    path = write_model_card(artifact, eval_reports=args.eval)
    print(f"model card written to {path}")
    return 0
