"""Loss functions: pure tensor maths, no loops over data, each checked against a reference in tests.

Conventions: `logits[..., t, :]` predicts token t+1. A loss mask marks *targets*:
mask[t] = 1 means token t is predicted (from tokens < t) and counts in the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def shift_targets(input_ids: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align targets with the positions that predict them.

    Returns (targets, weights) of shape [B, T-1]: position t predicts input_ids[t+1]
    and counts when loss_mask[t+1] is 1.
    """
    return input_ids[:, 1:], loss_mask[:, 1:]


def token_nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over rows of -log softmax(logits)[target]; logits [N, V], targets [N]. Computed in fp32."""
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def target_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per row, in fp32; logits [N, V], targets [N] -> [N]."""
    return -F.cross_entropy(logits.float(), targets, reduction="none")


def sft_loss(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Masked next-token cross-entropy, averaged over target tokens.

        L = -(1/N) * sum_{b,t : m[b,t+1]=1} log p_theta(x[b,t+1] | x[b,<=t]),   N = sum_{b,t} m[b,t+1]

    logits [B, T, V]; input_ids, loss_mask [B, T]. With no target tokens the loss is 0.
    """
    targets, weights = shift_targets(input_ids, loss_mask)
    sel = weights.bool()
    n = sel.sum()
    if n == 0:
        return logits.sum() * 0.0
    return token_nll_sum(logits[:, :-1][sel], targets[sel]) / n
