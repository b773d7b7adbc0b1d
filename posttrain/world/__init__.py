"""The built-in world: facts, pretraining corpus, post-training sets and probes.

A deterministic, seeded generator of a small world whose truth is known, so that
every effect of post-training can be measured exactly. `build.build_world(seed, out)`
writes everything to a directory; the other modules work in-process:

- facts.py: the fact table (pure data; the gold judge in posttrain.grading reads it)
- corpus.py, documents_narrative.py, arithmetic.py, hazards.py, transcripts.py: the pretraining corpus
- chats.py, preferences.py, policies.py: the post-training sets
- probes.py, templates.py, sampling.py: the held-out probe sets and the phrasings

This package imports nothing on its own, so importing posttrain.world.facts loads that
table alone: the grading package (posttrain.grading) reads it without importing the world
generator, which itself imports grading (no cycle).
"""
