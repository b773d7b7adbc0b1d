"""How much text a model can take: its context length, prompts measured without tokenising megabytes, and
what to do with a prompt that does not fit.

A prompt's tokens plus the reply must fit the model's context (its position embeddings). A prompt that
leaves no room for even one new token is "overlong": an error, or, when asked, cut from the left (the
start of a prompt is dropped, its end, which the reply continues, is kept). A prompt that fits but
leaves less room than `max_new_tokens` gets a shorter reply budget instead.

Tokenising a huge prompt only to learn that it is too long can take minutes, so prompts are measured
on their tail: a token covers at most `max_token_chars` characters (the longest entry of the
vocabulary), so a tail of (n + 2) * max_token_chars characters surely holds more than n tokens, and
a text longer than that is longer than n tokens. The tail is grown from a small guess, so ordinary
text is tokenised about once.
"""

from __future__ import annotations

from posttrain.errors import PosttrainError

OVERLONG_MODES = ("error", "truncate")
# transformers' model_max_length for "unknown" is int(1e30); a real context is far below this.
_SENSIBLE_MAX = 10_000_000


class OverlongPromptError(PosttrainError):
    """A prompt leaves no room for a reply in the model's context; the message names it and the fix."""


def check_overlong_mode(mode: str) -> None:
    if mode not in OVERLONG_MODES:
        raise PosttrainError(f"overlong prompt handling must be one of {', '.join(OVERLONG_MODES)}, got {mode!r} "
                             f"(--overlong error|truncate).")


def context_length(model, tokenizer) -> int | None:
    """Positions the model can attend over: config.max_position_embeddings (or n_positions), else the
    tokenizer's model_max_length when it is a real number; None when neither says."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < _SENSIBLE_MAX else None


def max_token_chars(tokenizer) -> int:
    """Characters of the longest vocabulary entry (special tokens included): no token covers more text.

    Byte-level entries are written one character per byte, which is at least one per text character.
    """
    return max((len(t) for t in tokenizer.get_vocab()), default=1) or 1


def bounded_ids(encode, text: str, n: int, max_chars: int) -> tuple[list[int], bool]:
    """(ids, whole): the token ids of the whole `text` (whole=True); or, when it surely has more than n
    tokens, those of a tail of it holding more than n + 1 (whole=False), whose last n are the text's
    last n tokens. `encode(str) -> list[int]`.
    """
    limit = (n + 2) * max_chars  # a tail this long surely holds more than n + 1 tokens
    budget = min(8 * (n + 2), limit)  # most text has under 8 characters per token
    while len(text) > budget:
        ids = encode(text[-budget:])
        if len(ids) > n + 1:  # the first token of the tail may be a piece of a word: never keep it
            return ids, False
        if budget >= limit:
            break  # a normalizer merged characters: the bound did not hold, so read the whole text
        budget = min(4 * budget, limit)
    return encode(text), True


def fit(prompt_tokens: int, max_new_tokens: int, context: int | None, truncate: bool) -> tuple[int, int] | None:
    """(prompt tokens to keep, new tokens allowed), or None when the prompt is overlong and not truncated.

    A prompt fits when it leaves room for one new token (or is at most the context when none is asked);
    its reply budget is then what is left, at most max_new_tokens. An overlong prompt, truncated, keeps
    its last tokens: enough to leave room for max_new_tokens, but at least half the context.
    """
    if context is None:
        return prompt_tokens, max_new_tokens
    if prompt_tokens + min(1, max_new_tokens) <= context:
        return prompt_tokens, min(max_new_tokens, context - prompt_tokens)
    if not truncate:
        return None
    keep = context - min(max_new_tokens, context // 2)
    return keep, context - keep


def describe(labels: list[str], limit: int = 3) -> str:
    """'prompt 0, prompt 4 and 3 more' for notices about several prompts."""
    shown = ", ".join(labels[:limit])
    return shown + (f" and {len(labels) - limit} more" if len(labels) > limit else "")
