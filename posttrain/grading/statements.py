"""Reading what a response asserts: its answer statement, negations and subjects.

The gold judge and the "answers the question" classifier both need more than
"the answer appears somewhere": a base model that lists "Asia, Africa, Europe",
writes "Not Europe; it is in Asia." or asks "Is Spain in Europe or Asia?" names
Europe without asserting it. So both read one statement, the response's answer:

- sentences end at . ? ! or a newline, but not inside a decimal ("2.5"), a
  dotted abbreviation ("e.g.", "D.C.", "Mr.") or a list enumerator ("2. ", "b) ");
  consecutive list items form one statement, so a list of options is read whole;
- the answer statement is the first sentence that names a value of the relation
  (the right one or a competitor); lead-ins before it that name no value and no
  subject ("Sure!", "You're right, my mistake.") are skipped, but a question or a
  sentence about some subject before it means the response does something else
  first (asks, continues the document), so there is none;
- a response that is one JSON document states its "answer" field;
- a value is negated when a negator ("not", "isn't", "rather than"...) precedes
  it in its clause ("Not Europe", "..., not Lyon") or "is not"/"is wrong" follows it.

Everything here is plain string work with no world knowledge: callers pass the
values and subjects, so the gold judge and the probes (evals) share one reader.
Values and subjects are found by the one phrase matcher (phrases.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from posttrain.grading.phrases import Span, find_phrases

# A sentence end: terminal punctuation (with closing quotes/brackets) before whitespace or the end, or a newline.
_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)|\n")
# A list enumerator opening a sentence: "2. ", "4) ", "(b) ", "b. ", "B) ", "Q3. ", "Question 2: ".
_ENUMERATOR = re.compile(
    r"(?:\(?\d{1,3}[.)]|\([A-Za-z]\)|[a-d][.)]|[A-Z]\)|Q(?:uestion)?\s*\d{1,3}\s*[.):]?)(?=\s|$)"
)
# Text before a "." that makes the period part of a token, not a sentence end.
_NOT_AN_END = (
    re.compile(r"(?:^|\s)\(?\d{1,3}$"),  # "2." an enumerator, inline or not ("1. Paris 2. Lyon")
    re.compile(r"^\s*(?:\(?[a-d]|Q(?:uestion)?\s*\d{1,3})$"),  # "b." "Q3." opening the sentence
    re.compile(r"(?:^|[\s(])(?:[A-Za-z]\.)+[A-Za-z]$"),  # "e.g." "i.e." "D.C." "U.S."
    # word abbreviations; none is a chemical symbol of the world ("Ca." ends a sentence)
    re.compile(r"(?:^|\s)(?:mr|mrs|ms|dr|st|vs|approx|fig)$", re.IGNORECASE),
)
_NEGATOR = re.compile(r"\b(?:not|never|nor|neither|rather than|instead of|other than|unlike|except)\b|n't\b",
                      re.IGNORECASE)
# Clause boundaries: a negator before one of these does not reach past it ("Not Asia; it is Europe").
_CLAUSE_BREAK = re.compile(r"[,;:()\u2013\u2014]|\s-\s|\b(?:but|and|although|though|while|whereas|however)\b",
                           re.IGNORECASE)
_NEGATED_AFTER = re.compile(r"\s*(?:is|was|are)(?:n't\b|\s+not\b|\s+(?:wrong|incorrect|a mistake)\b)", re.IGNORECASE)


@dataclass(frozen=True)
class Statement:
    text: str
    question: bool  # ends with "?" (for a list, any item does)
    list_item: bool  # opens with an enumerator: a worksheet line or a list of options


def _is_question(sentence: str) -> bool:
    return sentence.rstrip("\"')]").endswith("?")


@lru_cache(maxsize=4096)
def _bare(name: str) -> str:
    """A subject as it is written mid-sentence without its article: "the United Kingdom" -> "United Kingdom"."""
    return re.sub(r"^the\s+", "", name.strip(), flags=re.IGNORECASE)


def _period_is_end(before: str) -> bool:
    return not any(p.search(before) for p in _NOT_AN_END)


def split_sentences(text: str) -> list[str]:
    """Sentences of text, stripped, in order; see the module docstring for what ends one."""
    text = text.replace("\u2019", "'")
    out, start = [], 0
    for m in _END.finditer(text):
        if m.group().startswith(".") and not _period_is_end(text[start:m.start()]):
            continue
        piece = text[start:m.end()].strip()
        if piece:
            out.append(piece)
        start = m.end()
    rest = text[start:].strip()
    return out + [rest] if rest else out


def opens_list_item(sentence: str) -> bool:
    """The sentence starts with a list enumerator ("2. ", "Q3. ", "4) ", "(b) ")."""
    return _ENUMERATOR.match(sentence.lstrip()) is not None


def split_statements(text: str) -> list[Statement]:
    """Sentences, with consecutive list items joined into one statement (a list is read whole)."""
    out: list[Statement] = []
    for s in split_sentences(text):
        item = opens_list_item(s)
        if item and out and out[-1].list_item:
            prev = out[-1]
            out[-1] = Statement(f"{prev.text} {s}", prev.question or _is_question(s), True)
        else:
            out.append(Statement(s, _is_question(s), item))
    return out


def json_statement(text: str) -> str | None:
    """What a response that is one JSON document states: its "answer" field, else all its values.

    None when the response is not JSON (a ```json fence around it is allowed, as the ifeval check allows).
    """
    body = re.sub(r"^```(?:json|JSON|Json)?\s*", "", text.strip())
    body = re.sub(r"\s*```$", "", body).strip()
    if not body.startswith(("{", "[")):
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if isinstance(doc, dict):
        doc = doc["answer"] if "answer" in doc else list(doc.values())
    if isinstance(doc, list):
        return "; ".join(str(v) for v in doc)
    return str(doc)


def is_negated(text: str, span: Span) -> bool:
    """A negator earlier in the span's clause ("not in Asia", ", not Lyon"), or "is not"/"is wrong" right after it."""
    before = text[: span.start]
    breaks = list(_CLAUSE_BREAK.finditer(before))
    clause = before[breaks[-1].end():] if breaks else before
    return _NEGATOR.search(clause) is not None or _NEGATED_AFTER.match(text[span.end:]) is not None


def answer_statement(text: str, values: Iterable[str], case_sensitive_short: bool = True,
                     subjects: Iterable[str] = ()) -> Statement | None:
    """The statement that answers: the JSON answer, else the first sentence naming one of the values.

    Only lead-ins may come before it: sentences naming no value and none of `subjects`
    ("Sure!", "You're right, my mistake."). A question first, or a sentence about a subject
    first ("The young of a hare is called a leveret."), means the response does something
    else before answering: there is no answer statement.
    """
    values, subjects = list(values), [_bare(x) for x in subjects]
    stated = json_statement(text)
    if stated is not None:
        return Statement(stated, False, False)
    for s in split_statements(text):
        if s.question:
            return None
        if find_phrases(s.text, values, case_sensitive_short):
            return s
        if find_phrases(s.text, subjects, case_sensitive_short=False):
            return None
    return None


@dataclass(frozen=True)
class Reading:
    """What one response's answer statement asserts, for a question about `subject`."""

    statement: Statement | None
    right_asserted: bool  # a right value (answer or alias) named and not negated
    right_negated: bool  # a right value named under a negation ("not Paris")
    others_asserted: tuple[str, ...]  # competing values named and not negated
    others_negated: tuple[str, ...]  # competing values named under a negation ("not Lyon")
    names_subject: bool  # the asked subject is named
    names_other_subject: bool  # another subject is named

    @property
    def about_subject(self) -> bool:
        """Names the asked subject, or no other: "Paris." is about the asked country, "Kenya's is Nairobi." is not."""
        return self.names_subject or not self.names_other_subject

    @property
    def asserts_value(self) -> bool:
        return self.right_asserted or bool(self.others_asserted)

    @property
    def correct(self) -> bool:
        """Asserts a right value about the asked subject, never negates it, and asserts no competitor."""
        return (self.statement is not None and self.right_asserted and not self.right_negated
                and not self.others_asserted and self.about_subject)


def read_answer(text: str, right: Sequence[str], others: Sequence[str] = (), subject: str | None = None,
                other_subjects: Sequence[str] = (), case_sensitive_short: bool = True,
                unrelated_subjects: Sequence[str] = ()) -> Reading:
    """Read the answer statement of `text` against the right values and the competing ones.

    `other_subjects` are what the answer could be about instead (Kenya, for a question about
    France); `unrelated_subjects` (the hare, Uranus) only end the lead-in, since a passing
    "on Earth" in the answer is no claim about the planet. Subjects are looked for with the
    values masked out, so "Mexico City" does not name Mexico, and case-insensitively ("the
    United Kingdom" matches "United Kingdom").
    """
    right_set = {r.casefold() for r in right}
    others = [o for o in others if o.casefold() not in right_set]
    stop = [*([subject] if subject else []), *other_subjects, *unrelated_subjects]
    stmt = answer_statement(text, [*right, *others], case_sensitive_short, stop)
    if stmt is None:
        return Reading(None, False, False, (), (), False, False)
    spans = find_phrases(stmt.text, [*right, *others], case_sensitive_short)
    right_hits = [(s, is_negated(stmt.text, s)) for s in spans if s.phrase.casefold() in right_set]
    other_hits = [(s, is_negated(stmt.text, s)) for s in spans if s.phrase.casefold() not in right_set]
    masked = list(stmt.text)
    for s in spans:
        masked[s.start:s.end] = " " * (s.end - s.start)
    subjects = {_bare(x) for x in other_subjects} | ({_bare(subject)} if subject else set())
    named = {s.phrase.casefold() for s in find_phrases("".join(masked), subjects, case_sensitive_short=False)}
    asked = _bare(subject).casefold() if subject else None
    return Reading(
        statement=stmt,
        right_asserted=any(not neg for _, neg in right_hits),
        right_negated=any(neg for _, neg in right_hits),
        others_asserted=tuple(dict.fromkeys(s.phrase for s, neg in other_hits if not neg)),
        others_negated=tuple(dict.fromkeys(s.phrase for s, neg in other_hits if neg)),
        names_subject=asked in named if asked else False,
        names_other_subject=bool(named - {asked}),
    )
