"""How sure was the model of the answer it gave?

Confidence is the probability the model gave its own answer line:
exp(sum of the log-probabilities of the generated tokens of the first line),
read from the engine's raw (untempered) log-softmax values. "First line" means
the tokens up to and including the first one whose text ends the first
non-blank line; if the response is a single line, every generated token counts,
the end-of-turn token included when the engine returns it, because stopping is
part of the answer ("Paris" and "Paris and Lyon" share a prefix). Tokens with
mask 0 (injected by a tool, not sampled) are left out.
"""

from __future__ import annotations

import math

from posttrain.evals.stats import expected_calibration_error


def answer_token_count(token_texts: list[str]) -> int:
    """How many leading tokens make up the first non-blank line (all of them if there is one line)."""
    seen = ""
    for i, piece in enumerate(token_texts):
        seen += piece
        stripped = seen.lstrip()
        if "\n" in stripped:
            return i + 1
    return len(token_texts)


def answer_confidence(completion, tokenizer=None) -> float:
    """Probability of the first line of `completion`, from its token logprobs (see module docstring)."""
    ids = list(completion.token_ids)
    logprobs = list(completion.logprobs)
    mask = list(completion.mask) if getattr(completion, "mask", None) is not None else [1] * len(ids)
    k = len(ids)
    if tokenizer is not None and ids:
        k = answer_token_count([tokenizer.decode([t]) for t in ids])
    total = sum(lp for lp, m in zip(logprobs[:k], mask[:k]) if m)
    return min(1.0, max(0.0, math.exp(total)))


def calibration_summary(confidences: list[float], correct: list[bool], n_bins: int = 15) -> dict:
    """ECE, accuracy and mean confidence; a calibrated model has accuracy close to mean confidence."""
    n = len(confidences)
    return {
        "ece": expected_calibration_error(confidences, correct, n_bins),
        "accuracy": sum(correct) / n if n else None,
        "mean_confidence": sum(confidences) / n if n else None,
        "n": n,
    }
