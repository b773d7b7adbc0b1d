"""`think_answer`: the R1-style format reward, and `answer_text` for verifiers that read the answer only.

The rules, checked in this order so the reason names the first one broken:
1. each of <think>, </think>, <answer>, </answer> appears exactly once;
2. the order is <think> ... </think> <answer> ... </answer>;
3. nothing but whitespace before <think>;
4. nothing but whitespace between </think> and <answer>, and after </answer>
   (text there is an answer outside the tags, which the other verifiers would not read).
"""

from __future__ import annotations

import re

from posttrain.grading.verifiers import VerifierResult

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def answer_text(response: str) -> str | None:
    """The stripped content of the last <answer>...</answer>, None if there is none."""
    found = _ANSWER.findall(response)
    return found[-1].strip() if found else None


def verify(response: str, spec: dict) -> VerifierResult:
    """Score 1 when the response follows all four rules, else 0 with the broken rule as the reason."""
    for tag in _TAGS:
        n = response.count(tag)
        if n != 1:
            return VerifierResult(0.0, None, f"{tag} appears {n} times; it must appear exactly once")
    starts = [response.index(tag) for tag in _TAGS]
    if starts != sorted(starts):
        return VerifierResult(0.0, None, "tags out of order; expected <think>...</think><answer>...</answer>")
    if response[: starts[0]].strip():
        return VerifierResult(0.0, None, "text before <think>; the response must start with <think>")
    between = response[starts[1] + len("</think>"): starts[2]]
    if between.strip():
        return VerifierResult(0.0, None, "text between </think> and <answer>; only whitespace may separate them")
    if response[starts[3] + len("</answer>"):].strip():
        return VerifierResult(0.0, answer_text(response), "text after </answer>; the response must end there")
    return VerifierResult(1.0, answer_text(response), "<think> then <answer>, each once")
