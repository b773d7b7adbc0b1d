"""Rollouts: what an online RL stage samples, scores and trains on.

A rollout is one prompt, the response the engine sampled for it, and what the loop computes
about it: the response's log-probs under the sampling policy and the frozen reference, the
value model's estimates, advantages and returns, one entry per *trained* response token. A token
the runtime injected (a tool result, mask 0 in the engine) is in the sequence the model reads but
carries no loss and no policy gradient: it is not a target, so it has no entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from posttrain.data.packing import Example, collate, pack_examples
from posttrain.data.prompts import PromptRow
from posttrain.modeling.forward import per_sequence


@dataclass
class Rollout:
    prompt: PromptRow
    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]  # 1 = sampled by the policy (trained), 0 = injected by the runtime
    text: str
    finished: bool  # ended with a stop token (False: cut at max_new_tokens)
    score: float = 0.0  # the reward the RL loss sees (after penalties and normalisation)
    proxy: float = 0.0  # the reward function's raw score
    gold: float | None = None  # the gold judge's score, when the prompt has a world meta (tracked, never trained on)
    tool_calls: int = 0  # tool calls the engine ran for this response
    correct: bool | None = None  # the first verifier's verdict (score 1), for stages that verify
    old_logps: list[float] = field(default_factory=list)
    ref_logps: list[float] = field(default_factory=list)
    old_values: list[float] = field(default_factory=list)
    advantages: list[float] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)

    def example(self, sequence_id: int) -> Example:
        return Example(self.prompt_ids + self.response_ids, [0] * len(self.prompt_ids) + self.response_mask,
                       sequence_id)

    @property
    def trained_tokens(self) -> int:
        return sum(self.response_mask)


def rollout_batch(rollouts: list[Rollout], pad_id: int, fields: tuple[str, ...] = ()) -> dict:
    """Pack rollouts into one batch (sequence i = rollouts[i]); add each named per-token field as [S, T]."""
    longest = max(len(r.prompt_ids) + len(r.response_ids) for r in rollouts)
    batch = collate(pack_examples([r.example(i) for i, r in enumerate(rollouts)], longest), pad_id)
    return _with_fields(batch, rollouts, fields)


def group_batch(rollouts: list[Rollout], pad_id: int, fields: tuple[str, ...] = ()) -> dict:
    """Like rollout_batch, with each distinct prompt laid out once: one row per prompt,
    [prompt | response a | response b | ...], for the responses sampled from it.

    Each response's positions continue from the prompt's end, so every response after the first jumps back
    to len(prompt): a branch that attends to the prompt and to itself (modeling.attention.segment_layout).
    `predictor` [B, T] names the position whose hidden state predicts each token (the prompt's last token
    for a response's first one). The G samples of a group then cost one prompt in the forward and backward
    instead of G; log-probs and gradients are those of rollout_batch up to float rounding
    (tests/test_grpo.py). Only for models where modeling.attention.shares_prefixes holds.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, r in enumerate(rollouts):
        groups.setdefault(tuple(r.prompt_ids), []).append(i)
    rows = []
    for prompt, members in groups.items():
        n = len(prompt)
        ids, mask, pos, seq, pred = list(prompt), [0] * n, list(range(n)), [members[0]] * n, [0] * n
        for i in members:
            r, start = rollouts[i], len(ids)
            k = len(r.response_ids)
            ids += r.response_ids
            mask += r.response_mask
            pos += range(n, n + k)
            seq += [i] * k
            pred += ([n - 1] + list(range(start, start + k - 1)))[:k]
        rows.append((ids, mask, pos, seq, pred))
    width = max(len(row[0]) for row in rows)
    pads = (pad_id, 0, None, -1, 0)  # positions of padding restart at 0: an example of its own
    columns = [[row[c] + (list(range(width - len(row[0]))) if fill is None else [fill] * (width - len(row[0])))
                for row in rows] for c, fill in enumerate(pads)]
    names = ("input_ids", "loss_mask", "position_ids", "sequence_ids", "predictor")
    batch = {name: torch.tensor(col, dtype=torch.long) for name, col in zip(names, columns)}
    batch["branched"] = True
    return _with_fields(batch, rollouts, fields)


def _with_fields(batch: dict, rollouts: list[Rollout], fields: tuple[str, ...]) -> dict:
    batch["n_sequences"] = len(rollouts)
    width = max(1, max(r.trained_tokens for r in rollouts))
    mask = torch.zeros(len(rollouts), width, dtype=torch.bool)
    for i, r in enumerate(rollouts):
        mask[i, :r.trained_tokens] = True
    batch["response_mask"] = mask
    for name in fields:
        t = torch.zeros(len(rollouts), width)
        for i, r in enumerate(rollouts):
            values = getattr(r, name)
            t[i, :len(values)] = torch.tensor(values, dtype=torch.float32)
        batch[name] = t
    return batch


def unflatten(flat: torch.Tensor, sequence: torch.Tensor, batch: dict) -> torch.Tensor:
    """Flat per-target values from modeling.forward (with their `sequence`) -> [S, T] like batch["response_mask"]."""
    out, _ = per_sequence(flat, sequence, batch["n_sequences"])
    width = batch["response_mask"].shape[1]
    return out if out.shape[1] == width else torch.nn.functional.pad(out, (0, width - out.shape[1]))
