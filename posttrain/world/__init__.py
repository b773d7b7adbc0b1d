"""The built-in world: facts, pretraining corpus, post-training sets, probes and the gold judge.

A deterministic, seeded generator of a small world whose truth is known, so that
every effect of post-training can be measured exactly. `build_world(seed, out)`
writes everything to a directory; the other functions work in-process.
"""

from posttrain.world.build import WORLD_VERSION, build_world
from posttrain.world.corpus import build_corpus
from posttrain.world.facts import Fact, all_facts, split_facts
from posttrain.world.judge import Verdict, extract_final_number, judge
from posttrain.world.policies import CONSTITUTION, HAZARD_POLICY
from posttrain.world.probes import PROBE_NAMES, build_probe_sets
from posttrain.world.templates import cloze_prompts

__all__ = [
    "WORLD_VERSION", "build_world", "build_corpus", "Fact", "all_facts", "split_facts", "Verdict",
    "extract_final_number", "judge", "CONSTITUTION", "HAZARD_POLICY", "PROBE_NAMES", "build_probe_sets",
    "cloze_prompts",
]
