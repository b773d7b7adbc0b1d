"""Examples (token ids + loss mask) and packing them into rows.

A packed row holds several examples back to back. Position ids restart at 0
for each example; the model's attention builds a block-diagonal causal mask
from those restarts (transformers detects packed sequences from position ids
when no attention mask is given), so no token attends across an example
boundary (the forward pass must run with use_cache=False: transformers
only reads packing from position ids when there is no cache). The first token of every example is never a target: unpacked it has
no context, and packed its only context would be another example.

That dense mask costs T^2 per row of T tokens however short the examples are,
so on CPU the forward pass swaps in per-example attention (posttrain.modeling.attention):
the same attention, computed example by example.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Example:
    input_ids: list[int]
    loss_mask: list[int]
    sequence_id: int = 0  # which example of a micro-batch this is (pairs: 2i chosen, 2i+1 rejected)

    def __post_init__(self):
        if self.loss_mask:
            self.loss_mask = [0] + list(self.loss_mask[1:])


@dataclass
class PackedRow:
    input_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    sequence_ids: list[int] = field(default_factory=list)

    def add(self, ex: Example) -> None:
        self.input_ids += ex.input_ids
        self.loss_mask += ex.loss_mask
        self.position_ids += list(range(len(ex.input_ids)))
        self.sequence_ids += [ex.sequence_id] * len(ex.input_ids)

    def __len__(self) -> int:
        return len(self.input_ids)


def pack_examples(examples: list[Example], max_length: int) -> list[PackedRow]:
    """Best-fit decreasing: put each example (longest first) into the fullest row it fits in.

    Rows are kept in buckets by free space, so finding the best row costs at most
    max_length bucket look-ups instead of a scan over all rows.
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    rows: list[PackedRow] = []
    by_free: dict[int, list[PackedRow]] = {}
    for i in order:
        ex = examples[i]
        n = len(ex.input_ids)
        row = None
        for free in range(n, max_length + 1):
            if by_free.get(free):
                row = by_free[free].pop()
                break
        if row is None:
            row = PackedRow()
            rows.append(row)
        row.add(ex)
        by_free.setdefault(max_length - len(row), []).append(row)
    return rows


def unpacked_rows(examples: list[Example]) -> list[PackedRow]:
    rows = []
    for ex in examples:
        r = PackedRow()
        r.add(ex)
        rows.append(r)
    return rows


def collate(rows: list[PackedRow], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rows to the longest. Padding is its own segment (positions restart), no loss, sequence -1."""
    T = max(len(r) for r in rows)
    ids, mask, pos, seq = [], [], [], []
    for r in rows:
        pad = T - len(r)
        ids.append(r.input_ids + [pad_id] * pad)
        mask.append(r.loss_mask + [0] * pad)
        pos.append(r.position_ids + list(range(pad)))
        seq.append(r.sequence_ids + [-1] * pad)
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "loss_mask": torch.tensor(mask, dtype=torch.long),
        "position_ids": torch.tensor(pos, dtype=torch.long),
        "sequence_ids": torch.tensor(seq, dtype=torch.long),
    }
