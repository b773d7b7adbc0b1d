"""Preference losses for unpaired data (each answer labelled desirable or not): KTO and unpaired APO-zero.

Pure functions on per-example sequence log-probs (summed over the completion),
matching TRL 1.16's `KTOTrainer._compute_loss`, which
`tests/test_losses_preference.py` checks numerically.

Notation: Δ = log π(y|x) - log π_ref(y|x) for an answer of the batch, z₀ the
reference point (a detached KL estimate), β the temperature, λ_D / λ_U the
weights of desirable / undesirable answers.
"""

from __future__ import annotations

import torch

KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")


def kto_reference_point(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """z₀ = max(0, mean(log π(y'|x) - log π_ref(y'|x))), detached, a scalar.

    The y' are mismatched completions (each prompt paired with another example's
    answer, as TRL's collator cycles them), so the mean estimates KL(π ‖ π_ref).
    In multi-process training, average the per-process means before the clamp,
    as TRL does.
    """
    return (policy_kl_logps - ref_kl_logps).mean().detach().clamp(min=0)


def kto_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    kl: torch.Tensor | float | None,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    loss_type: str = "kto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-answer losses, desirable answers first, then undesirable; either set may be empty.

    kto (Ethayarajh et al. 2024, arXiv 2402.01306, L_KTO = E[λ_y - v(x, y)]):
      desirable   λ_D·(1 - σ(β(Δ - z₀))),   undesirable   λ_U·(1 - σ(β(z₀ - Δ))).
    apo_zero_unpaired (APO Eq. 7, D'Oosterlinck et al. 2024, arXiv 2408.06266, unpaired):
      desirable   λ_D·(1 - σ(βΔ)),          undesirable   λ_U·σ(βΔ);   `kl` is unused (pass None).
    `kl` is z₀ from `kto_reference_point`; it is detached here. The mean of the
    returned losses is TRL's loss (`losses.nanmean()`); with no answer at all it is
    empty and its mean NaN, as in TRL. Returns (losses, chosen_rewards,
    rejected_rewards), the rewards βΔ detached, of the sizes of each set.
    """
    if loss_type not in KTO_LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r} is unknown; choose one of {list(KTO_LOSS_TYPES)}.")
    if beta <= 0:
        raise ValueError(f"beta={beta} must be > 0 (KTO's default is 0.1).")
    for name, policy, ref in (("chosen", policy_chosen_logps, ref_chosen_logps),
                              ("rejected", policy_rejected_logps, ref_rejected_logps)):
        if policy.shape != ref.shape:
            raise ValueError(f"policy_{name}_logps {tuple(policy.shape)} and ref_{name}_logps "
                             f"{tuple(ref.shape)} must have the same shape (one entry per {name} answer).")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    if loss_type == "kto":
        if kl is None:
            raise ValueError("loss_type='kto' needs kl= (the reference point z₀, see kto_reference_point).")
        kl = kl.detach() if isinstance(kl, torch.Tensor) else kl
        chosen_losses = 1 - torch.sigmoid(beta * (chosen_logratios - kl))
        rejected_losses = 1 - torch.sigmoid(beta * (kl - rejected_logratios))
    else:
        chosen_losses = 1 - torch.sigmoid(beta * chosen_logratios)
        rejected_losses = torch.sigmoid(beta * rejected_logratios)
    losses = torch.cat((desirable_weight * chosen_losses, undesirable_weight * rejected_losses), 0)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()
