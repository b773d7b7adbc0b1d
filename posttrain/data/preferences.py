"""Preference rows -> token pairs, and packing a micro-batch of pairs into rows.

A row is {"prompt", "chosen", "rejected"} (docs/data.md), each a string or a list of messages,
plus an optional "margin" (a number: how much better chosen is, for the reward model's margin
loss). Conversational rows are rendered with the chat template: prompt + chosen and prompt +
rejected as two chats, whose completion (the tokens after the rendered prompt with its
generation prompt) carries the loss mask. Plain strings are prompt + completion + EOS. When
either side is a list of messages, a string prompt becomes one user turn and a string answer
one assistant turn.

A micro-batch of P pairs becomes 2P examples numbered 2i (chosen) and 2i+1 (rejected),
packed into rows like SFT's (no padding inside a row, attention per example), so one forward
pass scores both answers of every pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.context_window import max_token_chars
from posttrain.data.chat import render_chat, render_generation_prompt
from posttrain.data.formats import Row, cut_long_texts, text_budget
from posttrain.data.packing import Example, collate, pack_examples
from posttrain.errors import DataError, PosttrainError


@dataclass
class Pair:
    chosen: Example
    rejected: Example
    margin: float = 0.0
    ref_chosen: float = 0.0  # the frozen reference's summed completion log-probs (DPO), filled once before training
    ref_rejected: float = 0.0


@dataclass
class PairStats:
    rows: int = 0
    pairs: int = 0
    too_long: int = 0  # dropped: prompt + answer longer than max_length
    identical: int = 0  # dropped: chosen and rejected render to the same tokens (nothing to learn)
    tokens: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _as_messages(value, role: str) -> list[dict]:
    return value if isinstance(value, list) else [{"role": role, "content": value}]


def _tokenize(tok, prompt, answer, path, line: int, field: str) -> Example:
    """prompt + answer -> Example whose loss mask covers the answer (with its end-of-turn token)."""
    if isinstance(prompt, str) and isinstance(answer, str):
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        a = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        return Example(p + a, [0] * len(p) + [1] * len(a))
    msgs = _as_messages(prompt, "user")
    reply = _as_messages(answer, "assistant")
    if reply[-1]["role"] != "assistant":
        raise DataError(path, line, field, "must end with an assistant message (the answer being compared).")
    try:
        head = render_generation_prompt(tok, msgs)
        full = render_chat(tok, msgs + reply)
    except PosttrainError:
        raise
    except Exception as e:
        raise DataError(path, line, field, f"could not be rendered with the chat template: {e}") from None
    if not full.startswith(head):
        raise DataError(path, line, field, "renders a chat whose prompt is not a prefix of the whole chat, so the "
                        "answer's tokens cannot be located.", "Use a chat template that renders turns in order.")
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    mask = [1 if start >= len(head) and end > start else 0 for start, end in enc["offset_mapping"]]
    return Example(enc["input_ids"], mask)


def build_pairs(tok, rows: list[Row], *, max_length: int, path=None) -> tuple[list[Pair], PairStats]:
    """Preference rows -> Pairs; over-long and identical pairs are dropped and counted."""
    stats = PairStats(rows=len(rows))
    budget = text_budget(max_length, max_token_chars(tok))
    out = []
    for row in rows:
        d, _ = cut_long_texts(row.data, budget)
        margin = d.get("margin", 0.0)
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or margin != margin:
            raise DataError(path, row.line, "margin", f"must be a number, got {margin!r}.")
        chosen = _tokenize(tok, d["prompt"], d["chosen"], path, row.line, "chosen")
        rejected = _tokenize(tok, d["prompt"], d["rejected"], path, row.line, "rejected")
        if max(len(chosen.input_ids), len(rejected.input_ids)) > max_length:
            stats.too_long += 1
            continue
        if chosen.input_ids == rejected.input_ids:
            stats.identical += 1
            continue
        if not any(chosen.loss_mask) or not any(rejected.loss_mask):
            raise DataError(path, row.line, "chosen" if not any(chosen.loss_mask) else "rejected",
                            "has no answer tokens after the prompt.", "Give a non-empty answer.")
        out.append(Pair(chosen, rejected, float(margin)))
        stats.tokens += len(chosen.input_ids) + len(rejected.input_ids)
    stats.pairs = len(out)
    if not out:
        raise DataError(path, None, None, f"left no usable pairs ({stats.too_long} longer than data.max_length="
                        f"{max_length}, {stats.identical} with identical answers).", "Raise data.max_length or check the data.")
    return out, stats


def collate_pairs(pairs: list[Pair], pad_id: int, row_length: int) -> dict:
    """Pack the 2P answers of P pairs into rows of at most `row_length` tokens; example 2i is chosen, 2i+1 rejected."""
    examples = []
    for i, p in enumerate(pairs):
        examples.append(Example(p.chosen.input_ids, p.chosen.loss_mask, 2 * i))
        examples.append(Example(p.rejected.input_ids, p.rejected.loss_mask, 2 * i + 1))
    batch = collate(pack_examples(examples, row_length), pad_id)
    batch["n_pairs"] = len(pairs)
    batch["margin"] = torch.tensor([p.margin for p in pairs], dtype=torch.float32)
    batch["ref_chosen"] = torch.tensor([p.ref_chosen for p in pairs], dtype=torch.float32)
    batch["ref_rejected"] = torch.tensor([p.ref_rejected for p in pairs], dtype=torch.float32)
    return batch


def pair_tokens(pairs: list[Pair]) -> int:
    return sum(len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in pairs)
