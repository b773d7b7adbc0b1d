"""RL maths on tensors: masked statistics, GAE, PPO policy/value losses, KL estimators.

Conventions: every per-token tensor is [B, T]; `mask` is 1 on tokens that count
(the response) and 0 on padding. Padding is trailing: a row's valid tokens are
a prefix. Masked positions never change an output at a valid position, and the
per-token outputs (advantages, returns) are 0 there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

WHITEN_EPS = 1e-8


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over positions where mask is 1.

        masked_mean(x, m) = sum(x * m) / sum(m)        (over `dim`, or over everything)

    Masked entries are replaced by 0 before the product, so a NaN or inf in padding
    does not leak into the result.
    """
    m = mask.to(x.dtype)
    xm = torch.where(mask.bool(), x, torch.zeros_like(x)) * m
    if dim is None:
        return xm.sum() / m.sum()
    return xm.sum(dim) / m.sum(dim)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over the masked positions, with Bessel's correction by default.

        var = masked_mean((x - mu)^2, m) * N / (N - 1),    mu = masked_mean(x, m),  N = sum(m)
    """
    n = mask.sum()
    if unbiased and n < 2:
        raise ValueError(
            f"masked_var needs at least 2 unmasked values for the unbiased variance, got {int(n)}; "
            "pass more tokens (a larger batch) or unbiased=False."
        )
    mu = masked_mean(x, mask)
    var = masked_mean((x - mu) ** 2, mask)
    return var * n / (n - 1) if unbiased else var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise x by its masked mean and unbiased masked variance (as TRL's `masked_whiten`).

        white = (x - mu) / sqrt(var + 1e-8)          if shift_mean
        white = (x - mu) / sqrt(var + 1e-8) + mu     otherwise (keeps the mean, rescales spread)

    Statistics come from masked positions only; values at padding are returned but meaningless.
    """
    mu = masked_mean(x, mask)
    white = (x - mu) * torch.rsqrt(masked_var(x, mask) + WHITEN_EPS)
    return white if shift_mean else white + mu


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over per-token rewards and values [B, T].

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}          (with r_t = V_t = A_t = 0 where m_t = 0)
        R_t     = A_t + V_t                                (the value target)

    computed backwards. The episode ends at the last valid token: nothing after it (padding)
    is bootstrapped from, and A_t = R_t = 0 at padding. This equals TRL's PPOTrainer, which zeroes rewards and values at padding before the same loop.
    Advantages are not whitened here; call `masked_whiten` on them if wanted.
    """
    # Zeroing rewards and values at padding makes delta = 0 there, so A stays 0 past the end
    # and the last valid token bootstraps from V = 0: the episode ends where the mask does.
    r = torch.where(mask.bool(), rewards, torch.zeros_like(rewards))
    v = torch.where(mask.bool(), values, torch.zeros_like(values))
    T = r.shape[-1]
    adv = torch.zeros_like(v)
    last = torch.zeros_like(v[..., 0])
    for t in reversed(range(T)):
        next_v = v[..., t + 1] if t + 1 < T else torch.zeros_like(last)
        last = r[..., t] + gamma * next_v - v[..., t] + gamma * lam * last
        adv[..., t] = last
    returns = adv + v
    return adv, returns


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate, averaged over valid tokens.

        r_t  = exp(logp_t - logp_old_t)
        l_t  = max(-A_t * r_t,  -A_t * clip(r_t, 1 - clip_low, 1 + clip_high))
        loss = masked_mean(l, m)

    clip_high defaults to clip_low (symmetric PPO); a larger clip_high is DAPO's clip-higher.
    Returns (loss, clip_fraction, approx_kl): clip_fraction = masked_mean(clipped term > unclipped),
    approx_kl = masked_mean(0.5 * (logp - logp_old)^2) (the k2 estimator, as TRL reports it).
    Only `loss` carries gradients.
    """
    hi = clip_low if clip_high is None else clip_high
    diff = logprobs - old_logprobs
    ratio = torch.exp(diff)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + hi)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
        approx_kl = masked_mean(0.5 * diff**2, mask)
    return loss, clip_fraction, approx_kl


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> torch.Tensor:
    """Clipped value loss, averaged over valid tokens.

        v_clip = clip(v, v_old - clip, v_old + clip)
        loss   = 0.5 * masked_mean(max((v - R)^2, (v_clip - R)^2), m)
    """
    v_clip = torch.clamp(values, old_values - clip, old_values + clip)
    per_token = torch.maximum((values - returns) ** 2, (v_clip - returns) ** 2)
    return 0.5 * masked_mean(per_token, mask)


# Schulman's estimators of KL(policy || reference) from tokens sampled from the policy,
# per token; average them with `masked_mean`. http://joschu.net/blog/kl-approx.html


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = logp - ref_logp: unbiased, high variance, can be negative."""
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 * (logp - ref_logp)^2: biased, low variance, always >= 0."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1: unbiased, low variance, always >= 0."""
    d = ref_logp - logp
    return torch.expm1(d) - d


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def kl_penalised_rewards(
    scores: torch.Tensor, logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor, kl_coef: float,
    estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token RLHF rewards [B, T] from sequence scores [B] (InstructGPT; Ziegler et al. 2019):

        r_t = -kl_coef * kl_t                  for every response token,
        r_T += score                           at the last valid token T of each row,

    kl_t the chosen estimator of log π(y_t) - log π_ref(y_t) (KL_ESTIMATORS). Returns (rewards, kl_t);
    both are 0 at padding. Padding is trailing (see the module conventions).
    """
    m = mask.bool()
    kl = torch.where(m, KL_ESTIMATORS[estimator](logps, ref_logps), torch.zeros_like(logps))
    rewards = -kl_coef * kl
    last = (m.long().cumsum(-1) == m.long().sum(-1, keepdim=True)) & m  # the last valid position of each row
    rewards = rewards + last.to(rewards.dtype) * scores[:, None].to(rewards.dtype)
    return rewards, kl


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over valid tokens: 1 = the value head predicts returns, 0 = no better than their mean."""
    var_r = masked_var(returns, mask, unbiased=False)
    return float(1 - masked_var(returns - values, mask, unbiased=False) / var_r) if var_r > 0 else float("nan")


def adaptive_kl_coef(coef: float, kl: float, target: float, horizon: int, n_steps: int) -> float:
    """Ziegler et al.'s proportional controller: move the KL coefficient so the measured KL tracks the target.

        e = clip(kl / target - 1, -0.2, 0.2);   coef <- coef * (1 + e * n_steps / horizon)
    """
    e = max(-0.2, min(0.2, kl / target - 1))
    return coef * (1 + e * n_steps / horizon)
