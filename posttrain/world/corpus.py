"""The pretraining corpus: web-like documents in which every fact appears many times.

Document kinds: encyclopedia snippets, study notes, quiz worksheets (questions
mostly without answers), forum threads, stories (documents_narrative.py),
arithmetic worksheets (arithmetic.py), fictional hazard manuals (hazards.py) and
a small share of small-talk chat transcripts (transcripts.py), so the chat
special tokens are seen in pretraining, and record documents that only copying
predicts (records.py; the world option `records`).

Questions use the train and corpus phrasings only: probe phrasings are held out
of every stream (sampling.question_text).

Two properties matter for the demo:
- every fact is stated often (around 30 times, in several phrasings, including
  its cloze sentences) so a ~5M-parameter model recalls it;
- a question line is almost always followed by another question line (quiz
  sheets, forum threads), so the base model continues a question with more
  questions instead of answering it.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from posttrain.world.arithmetic import sample_problem, worksheet
from posttrain.world.documents_narrative import forum_thread, story
from posttrain.world.facts import Fact, split_facts
from posttrain.world.hazards import HAZARDS, manual
from posttrain.world.records import record
from posttrain.grading.phrases import mentions
from posttrain.world.sampling import Deck, declaration, question_text
from posttrain.world.templates import cap, fill, statement
from posttrain.world.transcripts import transcript

# Documents per kind at scale 1.0 (encyclopedia: rounds over every subject).
COUNTS = {"encyclopedia_rounds": 12, "notes": 320, "quizzes": 1000, "forum": 800, "stories": 500,
          "worksheets": 1000, "manuals": 200, "transcripts": 150}

_FILLER = {
    "geography": ("{Subject} is a country with a long history.", "Its landscapes range from coasts to highlands.",
                  "Travel guides describe its markets, museums and old streets.", "Many visitors arrive by air.",
                  "The country has its own flag, anthem and government."),
    "chemistry": ("{Subject} is a chemical element.", "Chemists list it in the periodic table.",
                  "Students meet {subject} in their first chemistry course.", "Its atoms have a fixed number of protons."),
    "astronomy": ("{Subject} is a planet in our solar system.", "Telescopes have observed {subject} for centuries.",
                  "Space probes have sent back pictures of {subject}.", "Like every planet, {subject} orbits the Sun."),
    "animals": ("The {subject} is a well-known animal.", "Picture books for children often show the {subject}.",
                "Zoologists have studied the {subject} for a long time.", "The {subject} appears in many folk tales."),
}
_TOPIC_TITLES = {"geography": "Geography", "chemistry": "Chemistry", "astronomy": "Astronomy", "animals": "Animal"}


def _subject_groups(facts: list[Fact]) -> list[list[Fact]]:
    """Facts grouped by (topic, subject), in first-appearance order."""
    groups: dict[tuple[str, str], list[Fact]] = {}
    for f in facts:
        groups.setdefault((f.topic, f.subject), []).append(f)
    return list(groups.values())


def encyclopedia(rng: random.Random, group: list[Fact]) -> str:
    first = group[0]
    title = rng.choice([cap(first.subject), f"{cap(first.subject)} - encyclopedia entry", f"About {first.subject}"])
    sentences = [fill(s, first) for s in rng.sample(_FILLER[first.topic], 2)]
    for fact in group:
        a = declaration(rng, fact)
        b = declaration(rng, fact, cloze_bias=0.3)
        sentences += [a] if a == b else [a, b]
    rng.shuffle(sentences)
    return f"{title}\n\n{' '.join(sentences)}"


def study_notes(rng: random.Random, deck: Deck, number: int) -> str:
    facts = deck.draw(rng.randint(8, 16))
    head = rng.choice([f"Study notes, week {number % 40 + 1}", "Things to remember for the test",
                       f"Revision sheet {number}", "Flash facts", "My notes from class"])
    bullet = rng.choice(["- ", "* ", ""])
    return "\n".join([head, ""] + [bullet + declaration(rng, f) for f in facts])


def quiz(rng: random.Random, deck: Deck, number: int) -> str:
    """A worksheet of questions. Most have no answers; about one in five ends with an answer key."""
    facts = deck.draw(rng.randint(6, 14))
    topic = _TOPIC_TITLES[facts[0].topic]
    head = rng.choice([f"{topic} quiz {number}", "Pop quiz", f"Trivia night, round {number % 9 + 1}",
                       "Homework questions", "Questions for review", f"Worksheet {number}"])
    lines = [head, rng.choice(["", "Name: ____________", "Answer in full sentences.", "Time: 10 minutes"]), ""]
    style = rng.choice(["{k}. ", "Q{k}. ", "", "{k}) "])
    items = [question_text(rng, f) for f in facts]
    if rng.random() < 0.15:
        items.insert(rng.randrange(len(items) + 1), f"What is {sample_problem(rng).text}?")
    lines += [style.format(k=k) + q for k, q in enumerate(items, 1)]
    if rng.random() < 0.2:
        lines += ["", "Answer key"] + [f"{k}. {statement(f)}" for k, f in enumerate(facts, 1)]
    return "\n".join(lines)


@dataclass(frozen=True)
class Document:
    """One pretraining document and which facts it draws on: "A", "B", "none" (no facts) or "records" (no
    facts; a copying record, which the SFT replay leaves out)."""
    text: str
    split: str


def build_corpus_documents(facts_a: list[Fact], facts_b: list[Fact], seed: int, scale: float = 1.0,
                           reserved: frozenset[str] = frozenset(), records: int = 0) -> list[Document]:
    """Pretraining documents tagged with the fact split they use, shuffled deterministically for the seed.
    `records`: record documents to add (records.py; already scaled); `reserved`: numbers (as text) they never
    write, the probes' answers.

    Every document that states facts draws them from one split only, so the
    documents of facts A and of no facts form a replay stream that states no
    facts-B fact (build.py writes it as replay.jsonl).
    """
    rng = random.Random(f"{seed}:corpus")
    decks = {"A": Deck(rng, facts_a), "B": Deck(rng, facts_b)}
    share_a = len(facts_a) / (len(facts_a) + len(facts_b))

    def n(kind: str) -> int:
        return max(1, round(COUNTS[kind] * scale))

    def split() -> str:
        return "A" if rng.random() < share_a else "B"

    docs: list[Document] = []
    groups = [(g, name) for name, part in (("A", facts_a), ("B", facts_b)) for g in _subject_groups(part)]
    for _ in range(n("encyclopedia_rounds")):
        docs += [Document(encyclopedia(rng, g), name) for g, name in groups]
    for kind, make in (("notes", lambda d, k: study_notes(rng, d, k)), ("quizzes", lambda d, k: quiz(rng, d, k)),
                       ("forum", lambda d, k: forum_thread(rng, d)), ("stories", lambda d, k: story(rng, d))):
        for k in range(n(kind)):
            name = split()
            docs.append(Document(make(decks[name], k), name))
    docs += [Document(worksheet(rng, k), "none") for k in range(n("worksheets"))]
    docs += [Document(manual(rng, HAZARDS[k % len(HAZARDS)], k), "none") for k in range(n("manuals"))]
    docs += [Document(transcript(rng), "none") for _ in range(n("transcripts"))]
    stream = random.Random(f"{seed}:records")  # its own stream: the other documents stay as they were
    docs += [Document(record(stream, k, reserved), "records") for k in range(records)]
    rng.shuffle(docs)
    return docs


def build_corpus(facts: list[Fact], seed: int, scale: float = 1.0) -> list[str]:
    """Pretraining documents (plain text) for the seed's fact split."""
    facts_a, facts_b = split_facts(facts, seed)
    return [d.text for d in build_corpus_documents(facts_a, facts_b, seed, scale)]


def count_fact_mentions(docs: list[str], facts: list[Fact]) -> dict[str, int]:
    """Per fact id, how many corpus sentences contain both its subject and its answer.

    Matching follows the gold judge (whole words; short answers case-sensitive).
    """
    sentences = [s for d in docs for s in re.split(r"(?<=[.!?])\s+|\n", d) if s]
    index: dict[str, list[int]] = {}
    for i, s in enumerate(sentences):
        for w in set(re.findall(r"\w+", s.lower())):
            index.setdefault(w, []).append(i)
    counts = {}
    for f in facts:
        key = re.findall(r"\w+", f.answer.lower())[0]
        counts[f.id] = sum(1 for i in index.get(key, ())
                           if mentions(sentences[i], f.answer) and mentions(sentences[i], f.subject, case_sensitive_short=False))
    return counts
