"""Pure choices of on-policy preference sampling: which responses form a pair, and how far labels agree with gold.

Scalar labellers (the gold judge, a reward model, a function) score every response of a prompt, and the
pair is the best against the worst: the widest gap the samples offer, and the same rule as the world's
own offline pairs. A tie (the best scores no more than `margin` above the worst) teaches nothing and is
dropped. The AI judge compares two responses at a time (two forward passes per pair), so it labels one
pair per prompt: two responses with different texts drawn at random, ordered by its soft label; a label
within `margin` of 0.5 is too unsure to train on and is dropped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


def extremes(scores: list[float], margin: float = 0.0) -> tuple[int, int] | None:
    """(best, worst) indices by score (the first of equals), or None when best - worst <= margin."""
    best = max(range(len(scores)), key=scores.__getitem__)
    worst = min(range(len(scores)), key=scores.__getitem__)
    return None if scores[best] - scores[worst] <= margin else (best, worst)


def two_distinct(texts: list[str], rng: random.Random) -> tuple[int, int] | None:
    """Indices of two responses with different texts, drawn at random; None when all texts are the same."""
    firsts = list({t: i for i, t in reversed(list(enumerate(texts)))}.values())  # first index of each text
    if len(firsts) < 2:
        return None
    i, j = rng.sample(sorted(firsts), 2)
    return i, j


def preferred_first(p_first: float, margin: float = 0.0) -> bool | None:
    """True when the first response is preferred, False for the second, None when |p - 0.5| <= margin."""
    if abs(p_first - 0.5) <= margin:
        return None
    return p_first > 0.5


@dataclass
class Agreement:
    """How often a labeller's chosen response also has the higher gold score (gold ties left out)."""

    agree: int = 0
    disagree: int = 0
    gold_ties: int = 0

    @property
    def judged(self) -> int:
        return self.agree + self.disagree

    @property
    def rate(self) -> float | None:
        return self.agree / self.judged if self.judged else None

    def as_dict(self) -> dict:
        from posttrain.evals.stats import wilson_interval

        ci = wilson_interval(self.agree, self.judged) if self.judged else None
        return {"rate": self.rate, "ci95": list(ci) if ci else None, "agree": self.agree,
                "disagree": self.disagree, "gold_ties": self.gold_ties}


def gold_agreement(pairs: list[tuple[float, float]]) -> Agreement:
    """Agreement over (gold score of the chosen response, gold score of the rejected one) pairs."""
    out = Agreement()
    for chosen, rejected in pairs:
        if chosen == rejected:
            out.gold_ties += 1
        elif chosen > rejected:
            out.agree += 1
        else:
            out.disagree += 1
    return out
