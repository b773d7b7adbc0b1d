"""Sampling helpers shared by the document and chat generators."""

from __future__ import annotations

import random
from typing import Sequence

from posttrain.world.facts import Fact
from posttrain.world.templates import TEMPLATES, fill, lower_first


class Deck:
    """Draw items in shuffled passes, so every item is used about equally often."""

    def __init__(self, rng: random.Random, items: Sequence):
        self.rng, self.items, self.pile = rng, list(items), []

    def draw(self, k: int = 1) -> list:
        out = []
        for _ in range(k):
            if not self.pile:
                self.pile = list(self.items)
                self.rng.shuffle(self.pile)
            out.append(self.pile.pop())
        return out


def declaration(rng: random.Random, fact: Fact, cloze_bias: float = 0.6) -> str:
    """One declarative sentence; cloze templates are favoured so recall prompts match the corpus."""
    t = TEMPLATES[fact.relation]
    pool = t.cloze if rng.random() < cloze_bias else t.declarative
    return fill(rng.choice(pool), fact)


def question_text(rng: random.Random, fact: Fact) -> str:
    """A question about the fact for pretraining documents: a train or corpus phrasing ending with '?'.

    Probe phrasings are never used here: the probes must meet them for the first time.
    """
    t = TEMPLATES[fact.relation]
    return fill(rng.choice([q for q in t.train + t.corpus if q.endswith("?")]), fact)


def wrong_answer(rng: random.Random, fact: Fact, pool: Sequence[Fact]) -> str:
    """A plausible wrong answer: another fact's answer for the same relation, from `pool`."""
    bad = {fact.answer.lower(), *(a.lower() for a in fact.aliases)}
    options = sorted({f.answer for f in pool if f.relation == fact.relation and f.answer.lower() not in bad})
    return rng.choice(options)


def with_context(context: str, request: str) -> str:
    """Prefix a request with a lead-in; mid-sentence ("..., but ") an ordinary first word is lowercased."""
    if not context or context.rstrip()[-1] in ".!?:":
        return context + request
    return context + lower_first(request)
