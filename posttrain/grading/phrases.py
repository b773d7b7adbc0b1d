"""The one phrase matcher: where phrases occur in a text as whole words.

Every grader that asks "does this text name X?" uses it: the gold judge (answers,
subjects, rude words, pushback markers), the strict answer reader (statements.py),
the IFEval keyword checker, the cloze probe and the corpus fact counts. The rules:

- whole words: a phrase never matches inside a longer word ("Rome" is not in "Romeo");
- loose inside: punctuation and spacing between a phrase's words are free
  ("Washington, D.C." ~ "Washington D.C", "New Delhi" ~ "New-Delhi");
- case-insensitive, except phrases of at most two characters (chemical symbols)
  when case_sensitive_short, so "it's" holds no sulfur "S";
- at one position the longest phrase wins, so "Papua New Guinea" is not also read
  as "Guinea".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    phrase: str  # which phrase (as given) matched


def _words_key(text: str, case_sensitive: bool) -> tuple[str, ...]:
    words = re.findall(r"\w+", text)
    return tuple(words) if case_sensitive else tuple(w.casefold() for w in words)


@lru_cache(maxsize=4096)  # a world has a few sets of values and subjects, matched again in every response
def _matcher(phrases: frozenset[str], case_sensitive_short: bool) -> tuple[re.Pattern, dict, dict] | None:
    """One alternation for a phrase set, longest phrase first, and maps from matched words back to phrases."""
    parts, exact, caseless = [], {}, {}
    for phrase in sorted(phrases, key=lambda p: (-len(p), p)):
        words = re.findall(r"\w+", phrase)
        if not words:
            continue
        body = r"[\W_]+".join(re.escape(w) for w in words)
        if case_sensitive_short and len(phrase) <= 2:
            parts.append(body)
            exact.setdefault(_words_key(phrase, True), phrase)
        else:
            parts.append(f"(?i:{body})")
            caseless.setdefault(_words_key(phrase, False), phrase)
    if not parts:
        return None
    return re.compile(rf"(?<!\w)(?:{'|'.join(parts)})(?!\w)"), exact, caseless


def _matcher_for(phrases: Iterable[str], case_sensitive_short: bool) -> tuple[re.Pattern, dict, dict] | None:
    return _matcher(frozenset(p.strip() for p in phrases if p and p.strip()), case_sensitive_short)


def find_phrases(text: str, phrases: Iterable[str], case_sensitive_short: bool = True) -> list[Span]:
    """Non-overlapping occurrences of the phrases, in text order, each Span naming the phrase as given."""
    matcher = _matcher_for(phrases, case_sensitive_short)
    if matcher is None:
        return []
    pattern, exact, caseless = matcher
    spans = []
    for m in pattern.finditer(text):
        phrase = exact.get(_words_key(m.group(), True)) or caseless[_words_key(m.group(), False)]
        spans.append(Span(m.start(), m.end(), phrase))
    return spans


def mentions(text: str, *phrases: str, case_sensitive_short: bool = True) -> bool:
    """Whether any of the phrases occurs in text, by the rules of find_phrases."""
    matcher = _matcher_for(phrases, case_sensitive_short)
    return matcher is not None and matcher[0].search(text) is not None
