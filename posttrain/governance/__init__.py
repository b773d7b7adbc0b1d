"""Governance: what answers "which post-training version, data, policy and evaluation made this model?".

  ledger.py         the audit trail: an append-only JSONL file, each entry chained to the previous by its sha256
  record.py         what stages, recipe steps and evals write into it (stage runs, data, policies, judges, evals)
  card.py           the model card (README.md, Hugging Face format), generated from provenance and the ledger
  targets.py        known limitations for the card: targets missed, regressions against the parent
  audit.py          what `posttrain audit verify` checks for a ledger file, an artifact or a run directory
  gates.py          release gates: a recipe's declarations checked, and evaluated on reports and metrics
  gate_run.py       what a recipe run does with gates: record the outcomes, stop on a failed fatal gate
  contamination.py  n-gram overlap between training data and the probe sets (every training stage; a command)
  registry.py       the release registry: one SQLite file of name@version rows
  release.py        `posttrain release` and a recipe's `release:`: checks, the registry row, the ledger entry
  lineage.py        `posttrain lineage`: the chain from the base model to an artifact or a release

docs/governance.md describes the files and the `posttrain audit`, `card`, `release`, `lineage` and
`contamination` commands.
"""
