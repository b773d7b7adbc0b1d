"""IFEval-style verifiable instructions: each is a rule a program checks, no judge model.

An instruction is a dict {"type": ..., plus its arguments}: lowercase, max_words
(n), keyword (word), json, ends_with (text). Following IFEval
(Zhou et al. 2023), a prompt counts as followed ("prompt-level strict") only if
every one of its instructions is followed; "instruction-level" accuracy pools
all instructions of all prompts. Add a rule by adding a checker to CHECKERS.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from posttrain.errors import PosttrainError
from posttrain.grading.phrases import mentions

_WORD = re.compile(r"\b\w+\b")


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def check_lowercase(response: str, instruction: dict) -> bool:
    """The whole response is in lowercase letters (and has at least one letter)."""
    return response.islower()


def check_max_words(response: str, instruction: dict) -> bool:
    """At most n words."""
    n = instruction.get("n", instruction.get("max_words", instruction.get("value")))
    if n is None:
        raise PosttrainError(
            f"max_words instruction {instruction} has no word limit; give it as {{'type': 'max_words', 'n': 20}}."
        )
    return count_words(response) <= int(n)


def check_keyword(response: str, instruction: dict) -> bool:
    """The keyword appears as a whole word, in any case."""
    word = instruction.get("word", instruction.get("keyword", instruction.get("value")))
    if not word:
        raise PosttrainError(
            f"keyword instruction {instruction} has no keyword; give it as {{'type': 'keyword', 'word': 'river'}}."
        )
    return mentions(response, str(word), case_sensitive_short=False)


def check_json(response: str, instruction: dict) -> bool:
    """The whole response parses as JSON (a ```json fence around it is allowed, as in IFEval)."""
    text = response.strip()
    text = re.sub(r"^```(?:json|JSON|Json)?\s*", "", text)
    text = re.sub(r"\s*```$", "", text).strip()
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def check_ends_with(response: str, instruction: dict) -> bool:
    """The response ends with the given text (trailing whitespace ignored)."""
    text = instruction.get("text")
    if not text:
        raise PosttrainError(
            f"ends_with instruction {instruction} has no text; give it as {{'type': 'ends_with', 'text': 'Cheers!'}}."
        )
    return response.rstrip().endswith(text)


CHECKERS: dict[str, Callable[[str, dict], bool]] = {
    "lowercase": check_lowercase,
    "max_words": check_max_words,
    "keyword": check_keyword,
    "json": check_json,
    "ends_with": check_ends_with,
}


def check_instructions(response: str, instructions: list[dict]) -> list[bool]:
    """One bool per instruction: was it followed?"""
    results = []
    for ins in instructions:
        kind = ins.get("type")
        if kind not in CHECKERS:
            raise PosttrainError(
                f"unknown ifeval instruction type '{kind}' in {ins}; known types: {', '.join(CHECKERS)}. "
                "Add a checker to posttrain.grading.ifeval.CHECKERS."
            )
        results.append(CHECKERS[kind](response, ins))
    return results


def ifeval_accuracy(per_prompt: list[list[bool]]) -> tuple[int, int, int, int]:
    """(prompts fully followed, prompts, instructions followed, instructions)."""
    prompts_ok = sum(all(r) for r in per_prompt)
    ins_ok = sum(sum(r) for r in per_prompt)
    return prompts_ok, len(per_prompt), ins_ok, sum(len(r) for r in per_prompt)
