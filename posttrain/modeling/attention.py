"""Causal attention inside each example of a packed batch, as a transformers attention function.

A packed row holds several examples whose position ids restart at 0. transformers would build
a dense block-diagonal mask costing T^2 per row of T tokens; on CPU `attention_within_examples`
swaps in `segment_attention`, which gathers examples of similar length and attends each with a
plain causal mask, at L^2 per example of L tokens. Same result up to float rounding
(tests/test_segment_attention.py).

The layout also reads branches (position ids that jump back to p > 0): G responses to one prompt laid
out once as [prompt | response 1 | response 2 | ...], each response attending to the prompt and itself.
transformers has no such mask, so only this attention reads that layout (`shares_prefixes`).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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

    An example starts at each row start and wherever the position goes back to 0. A position that jumps
    anywhere else, to p > 0, starts a branch of the current example: a continuation of that example's first
    p tokens (the shared prompt of G sampled responses, laid out once), which attends to those p tokens and
    to itself, not to the other branches. A branch is attended as the example prefix + branch, of which only
    the branch's slots are kept. Examples are sorted by length and grouped while they are at least `similar`
    times the group's longest, which bounds the padding inside a block.
    """
    B, T = position_ids.shape
    pos = position_ids.detach().cpu()
    start = torch.ones_like(pos, dtype=torch.bool)
    start[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    firsts = start.reshape(-1).nonzero().flatten().tolist()
    ends = firsts[1:] + [B * T]
    flat = pos.reshape(-1).tolist()
    segments = []  # (flat index of the shared prefix, its length p, flat index of the own tokens, their number)
    trunk = (0, 0)  # the current example: its first flat index and the length of its first run
    for first, end in zip(firsts, ends):
        shared = flat[first]
        if shared == 0 or first % T == 0:
            trunk = (first, end - first)
            shared = 0
        elif trunk[0] // T != first // T or shared > trunk[1]:
            raise ValueError(f"position ids jump to {shared} at flat index {first}, beyond the {trunk[1]} tokens "
                             f"of the example it would branch from.")
        segments.append((trunk[0], shared, first, end - first))
    segments.sort(key=lambda x: -(x[1] + x[3]))
    blocks, kept, i = [], [], 0
    while i < len(segments):
        longest = segments[i][1] + segments[i][3]
        j = i
        while j < len(segments) and segments[j][1] + segments[j][3] >= similar * longest:
            j += 1
        gather, keep = [], []
        for k, (prefix, shared, first, own) in enumerate(segments[i:j]):
            # A padding slot re-reads the example's first token; it comes after the real ones, so none sees it.
            gather.append(torch.cat([torch.arange(prefix, prefix + shared), torch.arange(first, first + own),
                                     torch.full((longest - shared - own,), prefix)]))
            keep.append(torch.arange(k * longest + shared, k * longest + shared + own))
        gather, keep = torch.cat(gather), torch.cat(keep)
        blocks.append(((j - i, longest), gather.to(position_ids.device), keep.to(position_ids.device)))
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
    if not _segment_attention_fits(model, position_ids.device):
        yield {}
        return
    AttentionInterface.register(SEGMENT_ATTENTION, segment_attention)
    cfg._attn_implementation = SEGMENT_ATTENTION  # transformers then builds no mask: none is needed
    try:
        yield {"segments": segment_layout(position_ids)}
    finally:
        cfg._attn_implementation = "sdpa"


def _segment_attention_fits(model, device: torch.device) -> bool:
    cfg = model.config
    checkpointing = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.x name
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    return (torch.device(device).type == "cpu" and cfg._attn_implementation == "sdpa" and not checkpointing
            and getattr(cfg, "sliding_window", None) is None
            and all(t == "full_attention" for t in getattr(cfg, "layer_types", None) or ()))


def shares_prefixes(model, device: torch.device) -> bool:
    """Whether `model` (a transformers model or a peft wrapper) reads branched batches on `device`: its
    attention here is `segment_attention` and its logits are the head of the trunk's hidden states."""
    from posttrain.modeling.forward import PLAIN_HEAD, unwrap

    base = unwrap(model)
    return getattr(base.config, "model_type", None) in PLAIN_HEAD and _segment_attention_fits(base, device)
