"""Governance: what answers "which post-training version, data, policy and evaluation made this model?".

  ledger.py   the audit trail: an append-only JSONL file, each entry chained to the previous by its sha256
  record.py   what stages, recipe steps and evals write into it (stage runs, data, policies, judges, evals)
  card.py     the model card (README.md, Hugging Face format), generated from provenance and the ledger
  targets.py  known limitations for the card: targets missed, regressions against the parent
  audit.py    what `posttrain audit verify` checks for a ledger file, an artifact or a run directory

docs/governance.md describes the files and the `posttrain audit` and `posttrain card` commands.
"""
