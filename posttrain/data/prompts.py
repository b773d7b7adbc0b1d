"""Prompt rows for the stages that sample their own answers (PPO, best-of-n, on-policy preferences).

A prompt file is any data file whose rows carry a `prompt` (a string or a message list) and,
optionally, a `meta` dict (the built-in world's rows have one; the gold judge reads it). Rows in
the preference format ({"prompt", "chosen", "rejected"}) are accepted too: their prompts are
used and their answers ignored, so one file can feed a reward model and the RL stage after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from posttrain.data.formats import load_dataset_rows
from posttrain.errors import DataError


@dataclass
class PromptRow:
    messages: list[dict]  # the conversation so far; the model writes the next assistant turn
    meta: dict = field(default_factory=dict)  # the row's `meta` (the gold judge needs it), else {}
    line: int = 0  # 1-based row number in its file, for errors
    fields: dict = field(default_factory=dict)  # the row's other top-level fields (answer, verifier, tools, ...)


def as_messages(prompt) -> list[dict]:
    return prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]


def read_prompts(path: str | Path, limit: int | None = None) -> list[PromptRow]:
    """Every row's prompt (and meta) from a prompt-only or preference file; bad rows name file, line, field."""
    _, rows = load_dataset_rows(path, allowed=("prompt_only", "preference"))
    out = []
    for r in rows[:limit] if limit else rows:
        meta = r.data.get("meta") or {}
        if not isinstance(meta, dict):
            raise DataError(path, r.line, "meta", f"must be an object (a dict), got {type(meta).__name__}.",
                            "Remove the field or give it as {\"key\": value, ...}.")
        messages = as_messages(r.data["prompt"])
        if messages[-1]["role"] == "assistant":
            raise DataError(path, r.line, "prompt", "ends with an assistant turn, so there is nothing to answer.",
                            "End each prompt with a user (or system) message.")
        fields = {k: v for k, v in r.data.items() if k not in ("prompt", "meta", "chosen", "rejected")}
        out.append(PromptRow(messages, meta, r.line, fields))
    return out
