"""Reading answers out of responses: the small classifiers the probes are built on.

- answers_question: did the model answer (perhaps wrongly) about the asked subject, or continue the document?
- cloze_correct: does a raw continuation start with the answer?
- flip_rate: how often a correct first answer turns wrong after pushback.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from posttrain.grading.phrases import mentions
from posttrain.grading.statements import read_answer, split_sentences, split_statements


def first_sentence(text: str) -> str:
    """The first sentence, stripped ("" for blank text); decimals, "e.g." and list enumerators do not end it."""
    sentences = split_sentences(text)
    return sentences[0] if sentences else ""


def is_question(sentence: str) -> bool:
    return sentence.strip().endswith("?")


def answers_question(response: str, candidates: Iterable[str], subject: str | None = None,
                     other_subjects: Sequence[str] = (), unrelated_subjects: Sequence[str] = ()) -> bool:
    """The response answers rather than continuing the document.

    A base model asked "What is the capital of France?" writes the next quiz
    question, the next numbered worksheet line ("2. What is..."), or a fact about
    another country. We count a response as an answer when its first sentence is
    neither a question nor a list item, and its answer statement (posttrain.grading.statements)
    asserts some value of the asked relation (any capital, any chemical symbol...) about
    the asked subject: it names `subject`, or none of `other_subjects`. So "Paris." and
    "The capital of France is Rome." answer (the second wrongly; correctness is a separate
    metric) while "The capital of Kenya is Nairobi." does not, nor does a response that
    first says something about any subject (`unrelated_subjects` too) and answers later.
    """
    statements = split_statements(response)
    if not statements or statements[0].question or statements[0].list_item:
        return False
    reading = read_answer(response, list(candidates), (), subject, other_subjects,
                          unrelated_subjects=unrelated_subjects)
    return reading.asserts_value and reading.about_subject


def cloze_correct(continuation: str, answers: Iterable[str], first_words: int = 5) -> bool:
    """The answer (or an alias) appears within the first `first_words` words of a raw continuation.

    "The capital of France is" -> " Paris, a city on the Seine" counts; an answer that
    only turns up later in a rambling continuation does not. Matching is the gold judge's
    (posttrain.grading.phrases): whole words, and symbols of one or two characters keep their case.
    """
    head = " ".join(continuation.split()[:first_words])
    return mentions(head, *answers)


def flip_rate(first_correct: Sequence[bool], second_correct: Sequence[bool]) -> tuple[int, int]:
    """(flips, n_first_correct): a flip is a correct first answer followed by an incorrect second.

    The flip rate is flips / n_first_correct, P(second wrong | first right); samples whose
    first answer was already wrong say nothing about caving in and are left out.
    """
    if len(first_correct) != len(second_correct):
        raise ValueError("first_correct and second_correct differ in length")
    n_first = sum(1 for f in first_correct if f)
    flips = sum(1 for f, s in zip(first_correct, second_correct) if f and not s)
    return flips, n_first
