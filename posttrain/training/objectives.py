"""Objectives: what a stage trains on, in the four calls the trainer makes.

The trainer knows nothing about losses. An objective turns a list of items (packed
rows, preference pairs...) into a batch, says how many units the loss averages over
(target tokens, pairs...), how many real tokens the items hold, and returns the
batch's *summed* loss with summed metrics. The trainer divides both by the units of
the whole optimizer step, so accumulation matches one big batch.

Each stage's objective is a few lines calling the pure functions of `posttrain.losses*`
on what `posttrain.modeling.forward` returns; the preference objectives live next to
their stages (stages/reward.py, stages/dpo.py).
"""

from __future__ import annotations

from typing import Protocol

import torch

from posttrain.data.packing import PackedRow, collate
from posttrain.data.preferences import Pair, collate_pairs, pair_tokens
from posttrain.modeling.forward import nll_and_count


class Objective(Protocol):
    def collate(self, items: list) -> dict:
        """Items -> a batch: a dict of CPU tensors (other values are passed through as they are)."""

    def units(self, batch: dict) -> int:
        """What the loss is averaged over (target tokens, pairs...)."""

    def tokens(self, items: list) -> int:
        """Real (unpadded) tokens the items hold, for throughput."""

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """(summed loss, summed metrics) of the batch; the trainer divides both by the step's units."""


class NextToken:
    """Next-token cross-entropy on the target tokens of packed rows (pretraining, SFT):

        L = -(1/N) Σ_{t: m[t+1]=1} log p(x[t+1] | x[<=t]),   N = number of target tokens.
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def collate(self, items: list[PackedRow]) -> dict:
        return collate(items, self.pad_id)

    def units(self, batch: dict) -> int:
        return int(batch["loss_mask"][:, 1:].sum())

    def tokens(self, items: list[PackedRow]) -> int:
        return sum(len(r) for r in items)

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        return nll_and_count(model, batch)[0], {}


class PairObjective:
    """What the preference objectives share: pairs packed into rows (chosen 2i, rejected 2i+1); units are pairs.

    Subclasses (stages/reward.py, stages/dpo.py) define `loss`.
    """

    def __init__(self, pad_id: int, row_length: int, opts):
        self.pad_id, self.row_length, self.opts = pad_id, row_length, opts

    def collate(self, pairs: list[Pair]) -> dict:
        return collate_pairs(pairs, self.pad_id, self.row_length)

    def units(self, batch: dict) -> int:
        return batch["n_pairs"]

    def tokens(self, pairs: list[Pair]) -> int:
        return pair_tokens(pairs)
