"""Turning SFT rows into examples with loss masks, with over-length handling that is counted."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from posttrain.data.chat import end_of_turn_token_ids, tokenize_chat, tokenize_prompt_completion
from posttrain.context_window import max_token_chars
from posttrain.console import notice
from posttrain.data.formats import Row, cut_long_texts, text_budget
from posttrain.data.packing import Example
from posttrain.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class BuildStats:
    rows: int = 0
    examples: int = 0
    truncated: int = 0
    dropped: int = 0
    cut_turns: int = 0  # truncations that cut a trained turn before its end-of-turn token (dropped or kept)
    no_target: int = 0
    tokens: int = 0
    target_tokens: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def cuts_a_turn(ids: list[int], mask: list[int], keep: int, end_ids: set[int]) -> bool:
    """Would keeping only the first `keep` tokens cut a trained turn before its end-of-turn token?

    True when a run of loss-carrying tokens crosses the cut and the part cut off holds
    that run's end-of-turn token: the kept reply would teach the model never to stop.
    A cut just after the end-of-turn token (before ChatML's trailing newline) is harmless.
    """
    if keep <= 0 or keep >= len(ids) or not (mask[keep - 1] and mask[keep]):
        return False
    for tok, m in zip(ids[keep:], mask[keep:]):
        if not m:
            return False
        if tok in end_ids:
            return True
    return False


def build_examples(tokenizer, rows: list[Row], fmt: str, *, max_length: int, overlength: str = "truncate",
                   assistant_only: bool = True, cut_turns: str = "drop", path=None) -> tuple[list[Example], BuildStats]:
    """conversational / prompt_completion / text rows -> Examples. Over-length rows are truncated or dropped.

    A truncation that cuts a trained turn before its end-of-turn token is dropped
    (`cut_turns="drop"`) or kept with a warning (`"keep"`), and counted either way.
    """
    stats = BuildStats(rows=len(rows))
    end_ids = set(end_of_turn_token_ids(tokenizer))
    budget = text_budget(max_length, max_token_chars(tokenizer))
    out, n_cut = [], 0
    for row in rows:
        d, cut = cut_long_texts(row.data, budget)
        n_cut += cut
        try:
            if fmt == "conversational":
                tc = tokenize_chat(tokenizer, d["messages"], assistant_only=assistant_only)
            elif fmt == "prompt_completion":
                tc = tokenize_prompt_completion(tokenizer, d["prompt"], d["completion"], completion_only=assistant_only)
            elif fmt == "text":
                ids = tokenizer(d["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                tc = type("T", (), {"input_ids": ids, "loss_mask": [1] * len(ids)})
            else:
                raise DataError(path, row.line, None, f"format {fmt} cannot be used for supervised fine-tuning.")
        except DataError:
            raise
        except Exception as e:
            raise DataError(path, row.line, "messages" if fmt == "conversational" else None, f"could not be rendered: {e}") from None
        ids, mask = list(tc.input_ids), list(tc.loss_mask)
        if len(ids) > max_length:
            if overlength == "drop":
                stats.dropped += 1
                continue
            if cuts_a_turn(ids, mask, max_length, end_ids):
                stats.cut_turns += 1
                if cut_turns == "drop":
                    continue
            stats.truncated += 1
            ids, mask = ids[:max_length], mask[:max_length]
        ex = Example(ids, mask)
        if sum(ex.loss_mask) == 0:
            stats.no_target += 1
            continue
        out.append(ex)
        stats.tokens += len(ex.input_ids)
        stats.target_tokens += sum(ex.loss_mask)
    stats.examples = len(out)
    if n_cut:
        notice(f"{path}: cut {n_cut} text(s) longer than {budget:,} characters before tokenising; only the first "
               f"data.max_length={max_length} tokens of an example are kept, and those lie before the cut")
    if not out:
        raise DataError(path, None, None, f"left no usable examples ({stats.dropped} dropped as over-length, "
                        f"{stats.cut_turns} cut before a turn's end, {stats.no_target} without target tokens).",
                        "Raise data.max_length or check the data.")
    if stats.cut_turns and cut_turns == "keep":
        log.warning("%s: kept %d truncated examples whose trained turn lost its end-of-turn token; the model "
                    "learns replies that never end. Raise data.max_length or set data.cut_turns=drop.",
                    path, stats.cut_turns)
    return out, stats


def split_documents(tokenizer, rows: list[Row], max_length: int) -> tuple[list[Example], BuildStats]:
    """Pretraining text: each document + EOS, cut into chunks of at most max_length tokens, full loss."""
    stats = BuildStats(rows=len(rows))
    texts = [r.data["text"] for r in rows]
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
    out = []
    for ids in enc:
        ids = ids + [tokenizer.eos_token_id]
        for s in range(0, len(ids), max_length):
            chunk = ids[s:s + max_length]
            if len(chunk) < 2:
                continue
            ex = Example(chunk, [1] * len(chunk))
            out.append(ex)
            stats.tokens += len(chunk)
            stats.target_tokens += sum(ex.loss_mask)
    stats.examples = len(out)
    return out, stats


def replay_examples(tokenizer, rows: list[Row], max_length: int, budget_tokens: int, seed: int) -> list[Example]:
    """A deterministic random sample of text chunks (full loss) holding about `budget_tokens` tokens."""
    import random

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    out, total = [], 0
    for start in range(0, len(order), 256):
        if total >= budget_tokens:
            break
        chunk_rows = [rows[i] for i in order[start:start + 256]]
        for ex in split_documents(tokenizer, chunk_rows, max_length)[0]:
            if total >= budget_tokens:
                break
            out.append(ex)
            total += len(ex.input_ids)
    return out
