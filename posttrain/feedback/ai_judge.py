"""An AI judge: preference labels from a language model reading a written principle (RLAIF).

As in Constitutional AI (Bai et al. 2022, section 4.1), the judge is a causal LM shown the conversation,
one principle drawn at random from a constitution, and a multiple-choice question:

    Consider the following conversation between a user and an assistant:
    <conversation>
    <principle>
    Which of these assistant replies follows this principle better?
    Options:
    (A) <first reply>
    (B) <second reply>
    The answer is: (            <- the judge's next token is read here

The label is soft: p(A) / (p(A) + p(B)) from the judge's next-token distribution at that last position,
each letter's probability summing every token that writes it there ("A", " A", and whatever the
tokenizer makes of "(A"). Language models prefer some positions over others, so each pair is judged
twice, the replies swapped, and p(first better) is the mean of the two orders (Bai et al. do the same).
The maths (normalising, swap averaging, fitting a long prompt into the context) are pure functions
below; `AIJudge` only builds prompts and runs one batched forward pass per group of them.
"""

from __future__ import annotations

import inspect
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from posttrain.errors import ConfigError, PosttrainError

QUESTION = ("Consider the following conversation between a user and an assistant:\n\n{conversation}\n\n"
            "{principle}\nWhich of these assistant replies follows this principle better?\n"
            "Options:\n(A) {a}\n(B) {b}")
ANSWER_PREFIX = "The answer is: ("  # written as the start of the judge's reply: its next token is the letter
SLACK = 8  # tokens kept free: re-tokenising cut texts can merge differently at the cut
CUT = "..."

# ---------------------------------------------------------------- the constitution

_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+(.*)$")


def parse_principles(text: str) -> list[str]:
    """One principle per list item of a markdown text (its indented continuation lines joined, bold marks
    dropped); a text without list items gives one principle per line that is not blank or a heading."""
    items: list[list[str]] = []
    lines: list[str] = []
    current = None
    for raw in text.splitlines():
        s = raw.strip()
        item = _ITEM.match(raw)
        if item:
            current = [item.group(1).strip()]
            items.append(current)
        elif s and not s.startswith("#") and current is not None:
            current.append(s)  # a wrapped line of the item above (a blank line or heading ends an item)
        else:
            current = None
        if s and not s.startswith("#") and not item:
            lines.append(s)
    chosen = [" ".join(parts) for parts in items] if items else lines
    plain = [re.sub(r"\*\*|__", "", p).strip() for p in chosen]
    return [p for p in plain if p]


def load_principles(path: str | Path | None = None, option: str = "--constitution") -> list[str]:
    """The principles of a constitution file, or of the built-in world's constitution (None)."""
    if path is None:
        from posttrain.world.policies import CONSTITUTION

        return parse_principles(CONSTITUTION)
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{option} {path} is not a file. Give a markdown file with one principle per list item "
                          f"(e.g. the world's policy/constitution.md), or leave {option} out for the world's own.")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{option} {path} is not UTF-8 text. Save it as UTF-8.") from None
    principles = parse_principles(text)
    if not principles:
        raise ConfigError(f"{option} {path} holds no principles. Write one principle per list item "
                          f"('- Be honest.' or '1. Be honest.') or per line.")
    return principles


# ---------------------------------------------------------------- pure maths


def choice_probability(logits: torch.Tensor, ids_a: list[int], ids_b: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(p_A / (p_A + p_B), p_A + p_B) per row of last-position logits [N, V], in fp32.

    A letter's probability is the sum over its token ids; the ratio is sigmoid(log p_A - log p_B), which stays
    exact when both are tiny. The second value says how much probability the judge put on the letters at all.
    """
    logp = logits.float().log_softmax(dim=-1)
    log_a = logp[:, ids_a].logsumexp(dim=-1)
    log_b = logp[:, ids_b].logsumexp(dim=-1)
    return torch.sigmoid(log_a - log_b), log_a.exp() + log_b.exp()


def swap_average(p_a_first_as_a: torch.Tensor, p_a_first_as_b: torch.Tensor) -> torch.Tensor:
    """p(first better), averaged over the two orders.

    p_a_first_as_a: the judge's normalised p(A) with the first reply shown as (A), i.e. p(first better) there;
    p_a_first_as_b: its p(A) with the replies swapped, i.e. p(second better), so that order says 1 - it.
    A judge that always answers "A" gets 0.5 for every pair: pure position bias cancels.
    """
    return (p_a_first_as_a + (1.0 - p_a_first_as_b)) / 2


def cap_lengths(lengths: list[int], budget: int) -> int:
    """The largest cap c with sum(min(length, c)) <= budget: cut only the longest parts, to equal lengths."""
    if sum(lengths) <= budget:
        return max(lengths, default=0)
    rest, ordered = budget, sorted(lengths)
    for i, length in enumerate(ordered):
        share = rest // (len(ordered) - i)
        if length > share:
            return max(share, 0)
        rest -= length
    return ordered[-1]


def choice_token_ids(tokenizer, prefix: str, letter: str) -> list[int]:
    """Every single token that writes `letter` next after `prefix`: the tokenizer's own continuation of
    prefix + letter when that adds exactly one token, and the tokens "A" and " A" when each is one token."""
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    ids = set()
    for text in (letter, " " + letter):
        one = encode(text)
        if len(one) == 1:
            ids.add(one[0])
    head, full = encode(prefix), encode(prefix + letter)
    if len(full) == len(head) + 1 and full[:len(head)] == head:
        ids.add(full[-1])
    return sorted(ids)


# ---------------------------------------------------------------- the judge


@dataclass
class Judgement:
    p_first: float  # p(first reply better): the mean of the two orders
    principle: str
    p_first_shown_a: float  # p(first better) with the first reply shown as (A)
    p_first_shown_b: float  # p(first better) with it shown as (B): 1 - the judge's p(A) in that order
    mass: float  # p(A) + p(B), mean of both orders: the share of the next token the letters got


def render_conversation(messages: list[dict]) -> str:
    return "\n".join(f"{m['role'].capitalize()}: {m.get('content') or ''}" for m in messages)


class AIJudge:
    """A causal LM artifact judging pairs of replies against principles sampled (seeded) from a constitution."""

    def __init__(self, path, principles: list[str], seed: int = 0, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 16, chat_template: str = "auto"):
        from posttrain.context_window import context_length
        from posttrain.data.chat import ensure_chat_template
        from posttrain.models import load_model_and_tokenizer, resolve_device, resolve_dtype

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model, self.tok = load_model_and_tokenizer(path, self.device)
        self.model.eval()
        ensure_chat_template(self.tok, chat_template)
        self.principles, self.batch_size, self.rng = principles, batch_size, random.Random(f"{seed}:ai-judge")
        self.context = context_length(self.model, self.tok) or 4096
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.ids_a, self.ids_b = (choice_token_ids(self.tok, ANSWER_PREFIX, x) for x in "AB")
        if not self.ids_a or not self.ids_b or set(self.ids_a) & set(self.ids_b):
            raise PosttrainError(f"the AI judge {path}: its tokenizer has no separate single tokens for the answers "
                                 f"'A' and 'B' (found {self.ids_a} and {self.ids_b}), so its choice cannot be read "
                                 f"from one next-token distribution. Use a judge with a byte-level or "
                                 f"SentencePiece tokenizer.")
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self.keep_last = "logits_to_keep" in inspect.signature(type(base).forward).parameters

    def _encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _render(self, conversation: str, principle: str, a: str, b: str) -> str:
        from posttrain.data.chat import render_generation_prompt

        question = QUESTION.format(conversation=conversation, principle=principle, a=a, b=b)
        return render_generation_prompt(self.tok, [{"role": "user", "content": question}]) + ANSWER_PREFIX

    def prompt_pair(self, messages: list[dict], principle: str, first: str, second: str) -> tuple[list[int], list[int]]:
        """Token ids of the two prompts (first shown as A, then as B), long texts cut to fit the context:
        the conversation keeps its end, the replies their starts, each cut to the same length."""
        fixed = len(self._encode(self._render("", principle, "", "")))
        budget = self.context - fixed - 3 * SLACK
        if budget < 3 * 16:
            raise PosttrainError(f"the AI judge's context of {self.context} tokens leaves {budget} tokens for the "
                                 f"conversation and replies after the question and the principle "
                                 f"{principle[:60]!r}; shorten the principles or use a judge with a longer context.")
        texts = [render_conversation(messages), first, second]
        parts = [self._encode(t) for t in texts]
        cap = cap_lengths([len(p) for p in parts], budget)
        if any(len(p) > cap for p in parts):
            texts = [t if len(p) <= cap else CUT + self.tok.decode(p[-cap:]) if i == 0 else
                     self.tok.decode(p[:cap]) + CUT for i, (t, p) in enumerate(zip(texts, parts))]
        conversation, first, second = texts
        keep = self.context - 1  # the last resort: keep the end, where the question is
        return (self._encode(self._render(conversation, principle, first, second))[-keep:],
                self._encode(self._render(conversation, principle, second, first))[-keep:])

    @torch.inference_mode()
    def choice_probabilities(self, prompts: list[list[int]]) -> tuple[list[float], list[float]]:
        """(normalised p(A), p(A) + p(B)) of each prompt: one forward per batch of left-padded prompts,
        the vocabulary projected at the last position only."""
        from posttrain.models import autocast, head_in_fp32

        p_a, mass = [0.0] * len(prompts), [0.0] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths, little padding
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            width = max(len(prompts[i]) for i in idx)
            pads = [width - len(prompts[i]) for i in idx]
            ids = torch.tensor([[self.pad_id] * k + prompts[i] for k, i in zip(pads, idx)], device=self.device)
            mask = torch.tensor([[0] * k + [1] * (width - k) for k in pads], device=self.device)
            # Positions count real tokens only, so a left-padded prompt reads as the same prompt unpadded.
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            extra = {"logits_to_keep": 1} if self.keep_last else {}
            with autocast(self.dtype, self.device), head_in_fp32(self.model, self.device):
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                                    **extra).logits[:, -1, :]
            p, m = choice_probability(logits, self.ids_a, self.ids_b)
            for i, pi, mi in zip(idx, p.tolist(), m.tolist()):
                p_a[i], mass[i] = pi, mi
        return p_a, mass

    def judge(self, conversations: list[list[dict]], firsts: list[str], seconds: list[str]) -> list[Judgement]:
        """Judge each (first, second) pair under a principle drawn per pair, in both orders."""
        principles = [self.rng.choice(self.principles) for _ in conversations]
        prompts = []
        for messages, principle, a, b in zip(conversations, principles, firsts, seconds):
            prompts.extend(self.prompt_pair(messages, principle, a, b))
        p_a, mass = self.choice_probabilities(prompts)
        as_a, as_b = torch.tensor(p_a[0::2]), torch.tensor(p_a[1::2])
        averaged = swap_average(as_a, as_b).tolist()
        return [Judgement(p, principle, pa, 1.0 - pb, (ma + mb) / 2) for p, principle, pa, pb, ma, mb in
                zip(averaged, principles, as_a.tolist(), as_b.tolist(), mass[0::2], mass[1::2])]
