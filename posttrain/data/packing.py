"""Examples (token ids + loss mask) and packing them into rows.

A packed row holds several examples back to back. Position ids restart at 0
for each example; the model's attention builds a block-diagonal causal mask
from those restarts (transformers detects packed sequences from position ids
when no attention mask is given), so no token attends across an example
boundary (the forward pass must run with use_cache=False: transformers
only reads packing from position ids when there is no cache). The first token of every example is never a target: unpacked it has
no context, and packed its only context would be another example.

That dense mask costs T^2 per row of T tokens however short the examples are,
so on CPU the trainer swaps in `segment_attention` for its own forward passes:
the same attention, computed example by example (see `attention_within_examples`).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class Example:
    input_ids: list[int]
    loss_mask: list[int]

    def __post_init__(self):
        if self.loss_mask:
            self.loss_mask = [0] + list(self.loss_mask[1:])


@dataclass
class PackedRow:
    input_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)

    def add(self, ex: Example) -> None:
        self.input_ids += ex.input_ids
        self.loss_mask += ex.loss_mask
        self.position_ids += list(range(len(ex.input_ids)))

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
    """Right-pad rows to the longest. Padding is its own segment (positions restart) with no loss."""
    T = max(len(r) for r in rows)
    ids, mask, pos = [], [], []
    for r in rows:
        pad = T - len(r)
        ids.append(r.input_ids + [pad_id] * pad)
        mask.append(r.loss_mask + [0] * pad)
        pos.append(r.position_ids + list(range(pad)))
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "loss_mask": torch.tensor(mask, dtype=torch.long),
        "position_ids": torch.tensor(pos, dtype=torch.long),
    }


# ------------------------------------------------------------ attention inside packed examples

SEGMENT_ATTENTION = "posttrain_segments"


@dataclass
class SegmentLayout:
    """The examples of a packed batch, grouped by length for attention.

    Each block holds S examples padded to the longest, L: `gather` [S*L] are their tokens' flat positions
    in the [B*T] batch (a padding slot re-reads its example's first token), `keep` the real slots of the
    block. `inverse` puts the real slots of all blocks, concatenated, back in token order.
    """

    blocks: list[tuple[tuple[int, int], torch.Tensor, torch.Tensor]]
    inverse: torch.Tensor


def segment_layout(position_ids: torch.Tensor, similar: float = 0.75) -> SegmentLayout:
    """Find the examples of a batch from its position ids and group those of similar length.

    An example starts at each row start and wherever a position does not follow the previous one by 1
    (the rule transformers uses to detect packing). Examples are sorted by length and grouped while they
    are at least `similar` times the group's longest, which bounds the padding inside a block.
    """
    B, T = position_ids.shape
    pos = position_ids.detach().cpu()
    start = torch.ones_like(pos, dtype=torch.bool)
    start[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    firsts = start.reshape(-1).nonzero().flatten()
    lengths = torch.diff(firsts, append=torch.tensor([B * T]))
    order = lengths.argsort(descending=True, stable=True)
    lens, firsts = lengths[order].tolist(), firsts[order].tolist()
    blocks, kept, i = [], [], 0
    while i < len(lens):
        j = i
        while j < len(lens) and lens[j] >= similar * lens[i]:
            j += 1
        offsets = torch.arange(lens[i])
        valid = offsets < torch.tensor(lens[i:j])[:, None]
        gather = (torch.tensor(firsts[i:j])[:, None] + offsets * valid).flatten()
        keep = valid.flatten().nonzero().flatten()
        blocks.append(((j - i, lens[i]), gather.to(position_ids.device), keep.to(position_ids.device)))
        kept.append(gather[keep])
        i = j
    kept = torch.cat(kept)
    inverse = torch.empty_like(kept)
    inverse[kept] = torch.arange(len(kept))
    return SegmentLayout(blocks, inverse.to(position_ids.device))


def segment_attention(module, query, key, value, attention_mask=None, dropout=0.0, scaling=None,
                      segments: SegmentLayout | None = None, **kwargs):
    """Causal attention inside each example of a packed batch: a transformers attention function.

    The same result as sdpa with the block-diagonal mask built from restarting position ids, at a cost of
    L^2 per example instead of T^2 per row: each block of similar-length examples is gathered and attended
    with a plain causal mask (an example's padding slots come after its tokens, so no real token sees them).
    query [B, H, T, D], key/value [B, Hkv, T, D] -> ([B, T, H, D], None), as transformers expects.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if segments is None or kwargs.get("sliding_window") is not None:
        raise RuntimeError("segment_attention needs the packed layout (segments=...) and full attention.")
    B, H, T, D = query.shape
    q = query.transpose(1, 2).reshape(B * T, H, D)
    k, v = (x.transpose(1, 2).reshape(B * T, -1, D) for x in (key, value))
    if k.shape[1] != H:  # grouped-query attention: each key/value head serves H / Hkv query heads
        k, v = (x.repeat_interleave(H // x.shape[1], dim=1) for x in (k, v))
    outs = []
    for (S, L), gather, keep in segments.blocks:
        qb, kb, vb = (x.index_select(0, gather).view(S, L, H, D).transpose(1, 2) for x in (q, k, v))
        # On CPU the plain kernel beats the flash kernel (whose backward is slow) on short blocks.
        with sdpa_kernel(SDPBackend.MATH) if L <= 128 else nullcontext():
            o = F.scaled_dot_product_attention(qb, kb, vb, dropout_p=dropout, is_causal=True, scale=scaling)
        outs.append(o.transpose(1, 2).reshape(S * L, H, D).index_select(0, keep))
    return torch.cat(outs).index_select(0, segments.inverse).view(B, T, H, D), None


@contextmanager
def attention_within_examples(model, position_ids: torch.Tensor):
    """Run `model`'s next forward pass with `segment_attention`; yields the extra keyword arguments it needs.

    Only where it computes the model's own attention (up to float rounding): sdpa, full attention in every
    layer (no sliding window), no gradient checkpointing (the recomputation in backward would run after we
    switch back), and only on CPU, where it was measured (GPUs keep their fused kernels). Otherwise it yields
    {} and the model keeps its attention.
    """
    from transformers import AttentionInterface

    cfg = model.config
    checkpointing = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.x name
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    usable = (position_ids.device.type == "cpu" and cfg._attn_implementation == "sdpa" and not checkpointing
              and getattr(cfg, "sliding_window", None) is None
              and all(t == "full_attention" for t in getattr(cfg, "layer_types", None) or ()))
    if not usable:
        yield {}
        return
    AttentionInterface.register(SEGMENT_ATTENTION, segment_attention)
    cfg._attn_implementation = SEGMENT_ATTENTION  # transformers then builds no mask: none is needed
    try:
        yield {"segments": segment_layout(position_ids)}
    finally:
        cfg._attn_implementation = "sdpa"
