"""Grading: the ground floor that the world, the evals and RL all import.

- judge.py: the gold judge, exact programmatic scoring of a response against a row's meta
- statements.py: the strict reading of what a response asserts (its answer statement)
- phrases.py: the one phrase matcher (whole words, case-insensitive, short symbols keep their case)
- refusal.py: refusal classifiers (XSTest string match)
- ifeval.py: IFEval-style verifiable instructions

Layering: nothing here imports posttrain.evals, and of posttrain.world only the fact table,
posttrain.world.facts, which the judge reads for competitors and subjects: pure data that
imports nothing of posttrain (the posttrain.world package itself imports nothing). The world
generator and the evals import grading, never the other way round, so there is no cycle;
tests/test_grading_layers.py holds this.
"""
