"""GRPO-family maths on tensors: group advantages, the clipped policy losses, DAPO's overlong penalty.

Conventions as in `posttrain.losses_rl`: per-token tensors are [B, T]; `mask` is 1 on response
tokens and 0 on (trailing) padding. Sequence rewards are [B], grouped by `group_size` G: rows
i*G .. i*G+G-1 are the G samples of prompt i.

Every function here reproduces TRL 1.16's `GRPOTrainer` (`_generate_and_score_completions` for
advantages, `_compute_loss` for losses and clip statistics) on a single process with no gradient
accumulation; tests/test_losses_grpo.py calls TRL's own method to check value and gradient.
"""

from __future__ import annotations

import torch

from posttrain.losses_rl import kl_k3, masked_mean

GROUP_EPS = 1e-4  # TRL adds this to the std (not to the variance) before dividing
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo")
SCALES = ("group", "batch", "none")


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be 1-D with a length divisible by group_size; got shape {tuple(rewards.shape)} "
            f"and group_size={group_size}. Pass one reward per sample, G samples per prompt in a row."
        )
    return rewards.view(-1, group_size)


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = GROUP_EPS
) -> torch.Tensor:
    """GRPO advantages: subtract the group mean, optionally divide by a std (TRL's `scale_rewards`).

        A_i = r_i - mean_group(r)                                     scale="none"   (Dr. GRPO)
        A_i = (r_i - mean_group(r)) / (std_group(r) + eps)            scale="group"  (GRPO)
        A_i = (r_i - mean_group(r)) / (std_batch(r) + eps)            scale="batch"  (mean still per group)

    std is the unbiased (Bessel, N-1) sample std, as TRL's `nanstd`. A group of one sample
    (G=1), or a batch of one, has std 0 in TRL, so A = r - r = 0 there. A zero-variance group gets
    A = 0 under every scale. NaN rewards are not supported (TRL masks unscorable samples).
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}.")
    g = _grouped(rewards, group_size)
    adv = (g - g.mean(dim=1, keepdim=True)).reshape(-1)
    if scale == "none":
        return adv
    if scale == "group":
        std = g.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(g)
        std = std.expand_as(g).reshape(-1)
    else:
        std = rewards.std() if rewards.numel() > 1 else torch.zeros((), dtype=rewards.dtype)
    return adv / (std + eps)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out: each sample's baseline is the mean of the other G-1 in its group.

        A_i = r_i - (sum_group(r) - r_i) / (G - 1)  =  G / (G - 1) * (r_i - mean_group(r))
    """
    if group_size < 2:
        raise ValueError(f"rloo_advantages needs group_size >= 2 (a baseline from the others), got {group_size}.")
    g = _grouped(rewards, group_size)
    return (g - (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)).reshape(-1)


def batch_baseline_advantages(rewards: torch.Tensor, normalize: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """REINFORCE++ style: the baseline is the batch mean, optionally whitened by the batch std.

        A_i = r_i - mean_batch(r)                                    normalize=False
        A_i = (r_i - mean_batch(r)) / (std_batch(r) + eps)           normalize=True (unbiased std)
    """
    adv = rewards - rewards.mean()
    if not normalize:
        return adv
    if rewards.numel() < 2:
        raise ValueError("batch_baseline_advantages(normalize=True) needs at least 2 rewards for a std.")
    return adv / (rewards.std() + eps)


def zero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Bool [B/G]: True where all G rewards of a group are equal (no learning signal in GRPO).

    DAPO's dynamic sampling drops these groups; their share is the logged `frac_reward_zero_std`.
    (TRL tests isclose(std, 0) with atol 1e-8; this is exact equality.)
    """
    g = _grouped(rewards, group_size)
    return g.amax(dim=1) == g.amin(dim=1)


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: str = "dapo",
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    delta: float | None = None,
    beta: float = 0.0,
    ref_logps: torch.Tensor | None = None,
    importance_sampling_level: str = "token",
    max_completion_length: int | None = None,
    num_items: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO-family policy loss on per-token log-probs [B, T] and sequence advantages [B].

    Importance weight (GSPO when sequence-level):
        w_t = exp(logp_t - old_t)                                   level "token"     -> [B, T]
        w   = exp(masked_mean_t(logp - old))                        level "sequence"  -> [B, 1]
    Per-token loss l (A broadcast over tokens):
        clip losses (grpo, dr_grpo, dapo, bnpo):
            l = -min(w' * A, clip(w, 1 - epsilon_low, 1 + epsilon_high) * A),
            w' = min(w, delta) if delta is set (INTELLECT-2 two-sided clip), else w
        cispo:
            l = -sg(min(w, epsilon_high)) * A * logp_t              (epsilon_high caps the ratio
                                                                    itself, TRL's eps_max, e.g. 5.0)
        plus beta * k3(logp, ref_logp) per token when beta != 0.
    Aggregation over valid tokens (m):
        grpo:    mean_b( sum_t(l m) / max(sum_t m, 1) )             per-sequence mean, then batch mean
        bnpo:    sum(l m) / max(sum(m), 1)                           token mean over this batch
        dr_grpo: sum(l m) / (B * max_completion_length)             constant normaliser
        dapo, cispo: sum(l m) / max(num_items, 1)                   num_items = valid tokens in the
                                                                    global batch (default: sum(m))
    At sequence level l is [B, 1] and is summed once per valid token, so dapo/bnpo/dr_grpo weight a
    sequence by its length (TRL warns about this; grpo gives the GSPO paper's objective).

    Stats (no grad), as TRL logs them: clip_low_fraction = mean of (w' < 1 - eps_low) & (A < 0),
    clip_high_fraction = mean of (w' > 1 + eps_high) & (A > 0) (for cispo: (w > eps_high) & (A > 0),
    and clip_low_fraction = 0); means are over valid tokens, or over sequences at sequence level.
    kl = masked mean of the k3 term (0 when beta == 0).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}.")
    if loss_type == "dr_grpo" and max_completion_length is None:
        raise ValueError("loss_type='dr_grpo' divides by B * max_completion_length; pass max_completion_length.")
    if beta != 0.0 and ref_logps is None:
        raise ValueError("beta != 0 adds a KL to the reference model; pass ref_logps (reference per-token log-probs).")
    m = mask.to(logps.dtype)
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages

    log_ratio = logps - old_logps
    if importance_sampling_level == "token":
        log_w = log_ratio
    elif importance_sampling_level == "sequence":
        log_w = ((log_ratio * m).sum(-1) / m.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    else:
        raise ValueError(f"importance_sampling_level must be 'token' or 'sequence', got {importance_sampling_level!r}.")
    w = torch.exp(log_w)

    if loss_type == "cispo":
        per_token = -torch.clamp(w, max=epsilon_high).detach() * adv * logps
    else:
        w_clipped = torch.clamp(w, 1 - epsilon_low, 1 + epsilon_high)
        if delta is not None:
            w = torch.clamp(w, max=delta)
        per_token = -torch.min(w * adv, w_clipped * adv)

    if beta != 0.0:
        kl = kl_k3(logps, ref_logps)
        per_token = per_token + beta * kl

    # Padding is zeroed with `where` so NaN/inf there cannot leak (same value and grad as TRL's l * m).
    summed = torch.where(mask.bool(), per_token * m, torch.zeros_like(per_token * m))
    if loss_type == "grpo":
        loss = (summed.sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = summed.sum() / m.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = summed.sum() / (per_token.size(0) * max_completion_length)
    else:  # dapo, cispo
        n = m.sum() if num_items is None else torch.as_tensor(num_items, dtype=logps.dtype)
        loss = summed.sum() / n.clamp(min=1.0)

    with torch.no_grad():

        def frac(x: torch.Tensor) -> torch.Tensor:
            x = x.to(logps.dtype)
            return x.mean() if x.shape[1] == 1 else masked_mean(x, m)

        if loss_type == "cispo":
            low = torch.zeros((), dtype=logps.dtype)
            high = frac((w > epsilon_high) & (adv > 0))
        else:
            low = frac((w < 1 - epsilon_low) & (adv < 0))
            high = frac((w > 1 + epsilon_high) & (adv > 0))
        kl_mean = masked_mean(kl, m) if beta != 0.0 else torch.zeros((), dtype=logps.dtype)
    return loss, {"clip_low_fraction": low, "clip_high_fraction": high, "kl": kl_mean}


def dapo_overlong_penalty(lengths: torch.Tensor, max_len: int, cache_len: int) -> torch.Tensor:
    """DAPO's soft overlong punishment (paper eq. 13; TRL's `get_soft_overlong_punishment`).

        R(L) = 0                                       L <= max_len - cache_len
        R(L) = ((max_len - cache_len) - L) / cache_len  max_len - cache_len < L <= max_len
        R(L) = -1                                      L > max_len
    """
    length = lengths.to(torch.float64)
    start = max_len - cache_len
    ramp = (start - length) / max(cache_len, 1)
    return torch.where(length <= start, torch.zeros_like(length), torch.where(length <= max_len, ramp, -1.0))
