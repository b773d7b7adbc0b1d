"""Constraint verifiers: `instructions` (the project's IFEval checkers), `json_valid` and `length`."""

from __future__ import annotations

import json
import re

from posttrain.errors import ConfigError
from posttrain.grading.ifeval import check_instructions, count_words
from posttrain.grading.verifiers import VerifierResult

_FENCE = re.compile(r"```[ \t]*(?:json|JSON|Json)?[ \t]*\n(.*?)```", re.DOTALL)


def verify_instructions(response: str, spec: dict) -> VerifierResult:
    """Score the share of spec["instructions"] followed (IFEval instruction-level), or 1/0 when
    spec["strict"] is true (prompt-level: all must hold). Each instruction is a dict as in
    posttrain.grading.ifeval, e.g. {"type": "max_words", "n": 50}; an unknown type is an error."""
    instructions = spec.get("instructions")
    if not isinstance(instructions, list) or not instructions:
        raise ConfigError(f"instructions verifier spec {spec} needs a non-empty list 'instructions', "
                          "e.g. {'instructions': [{'type': 'lowercase'}]}.")
    followed = check_instructions(response, instructions)
    failed = [ins.get("type") for ins, ok in zip(instructions, followed) if not ok]
    share = sum(followed) / len(followed)
    score = float(share == 1) if spec.get("strict") else share
    reason = f"{sum(followed)}/{len(followed)} instructions followed"
    return VerifierResult(score, None, reason + (f"; broken: {', '.join(failed)}" if failed else ""))


def verify_json(response: str, spec: dict) -> VerifierResult:
    """Score 1 when the whole response, or failing that its first ```json fenced block, parses as JSON."""
    candidates = [response.strip()] + [m.strip() for m in _FENCE.findall(response)[:1]]
    for text in candidates:
        try:
            json.loads(text)
        except ValueError:
            continue
        return VerifierResult(1.0, text, "parses as JSON")
    if len(candidates) == 1:
        return VerifierResult(0.0, None, "the response is not JSON and holds no ```json block")
    return VerifierResult(0.0, None, "neither the response nor its ```json block parses as JSON")


def verify_length(response: str, spec: dict) -> VerifierResult:
    """Score 1 when the word count (IFEval's count: \\b\\w+\\b) is within spec["min_words"] and spec["max_words"]."""
    lo, hi = spec.get("min_words"), spec.get("max_words")
    if lo is None and hi is None:
        raise ConfigError(f"length verifier spec {spec} has neither 'min_words' nor 'max_words'; give e.g. {{'max_words': 100}}.")
    n = count_words(response)
    if lo is not None and n < int(lo):
        return VerifierResult(0.0, str(n), f"{n} words, fewer than the minimum {lo}")
    if hi is not None and n > int(hi):
        return VerifierResult(0.0, str(n), f"{n} words, more than the maximum {hi}")
    return VerifierResult(1.0, str(n), f"{n} words, within bounds")
