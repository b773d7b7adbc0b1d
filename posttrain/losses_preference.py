"""Preference losses as pure functions on tensors: Bradley-Terry, the DPO family, SimPO.

Every function takes per-example sequence log-probs (already summed over the
completion) or scalar rewards, and returns per-example losses; the trainer
that feeds them decides how to reduce. Formulas follow TRL 1.16's
`RewardTrainer`, `DPOTrainer` and `CPOTrainer` conventions, which
`tests/test_losses_preference.py` checks numerically.

Notation: for each pair, Δc = log π(y_c) - log π_ref(y_c), Δr likewise for the
rejected answer, Δ = Δc - Δr, β the temperature, ε the label smoothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | float | None = None,
    center_coef: float = 0.0,
) -> torch.Tensor:
    """Reward-model loss, a scalar: mean(-log σ(r_c - r_r - m)) + c · mean((r_c + r_r)²).

    The second term (TRL's `center_rewards_coefficient`) pulls the rewards
    towards zero mean so that their scale stays comparable across runs.
    """
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()
    if center_coef:
        loss = loss + center_coef * torch.mean((chosen_rewards + rejected_rewards) ** 2)
    return loss


@dataclass(frozen=True)
class PairLogps:
    """Sequence log-probs of a batch of pairs; lengths count completion tokens (IPO, sigmoid_norm)."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    chosen_lengths: torch.Tensor | None = None
    rejected_lengths: torch.Tensor | None = None

    @property
    def chosen_logratios(self) -> torch.Tensor:
        return self.policy_chosen - self.ref_chosen

    @property
    def rejected_logratios(self) -> torch.Tensor:
        return self.policy_rejected - self.ref_rejected

    def length_normalised_delta(self, loss_type: str) -> torch.Tensor:
        """Δc/|y_c| - Δr/|y_r|, lengths clamped to at least 1 token."""
        if self.chosen_lengths is None or self.rejected_lengths is None:
            raise ValueError(
                f"loss_type={loss_type!r} averages over completion tokens: pass chosen_lengths= and "
                "rejected_lengths= (number of completion tokens of each answer) to dpo_loss."
            )
        chosen = self.chosen_logratios / self.chosen_lengths.clamp(min=1.0)
        rejected = self.rejected_logratios / self.rejected_lengths.clamp(min=1.0)
        return chosen - rejected


@dataclass(frozen=True)
class LossOptions:
    beta: float
    label_smoothing: float = 0.0
    discopop_tau: float = 0.05


PreferenceLoss = Callable[[PairLogps, LossOptions], torch.Tensor]


def _smoothed_logistic(logits: torch.Tensor, eps: float) -> torch.Tensor:
    """-(1-ε) log σ(z) - ε log σ(-z): the logistic loss with labels flipped with probability ε."""
    return -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)


def sigmoid(p: PairLogps, o: LossOptions) -> torch.Tensor:
    """DPO: -(1-ε) log σ(βΔ) - ε log σ(-βΔ); ε > 0 is conservative DPO (cDPO).

    TRL 1.16's `sigmoid` ignores label smoothing; both agree at ε = 0.
    """
    return _smoothed_logistic(o.beta * (p.chosen_logratios - p.rejected_logratios), o.label_smoothing)


def hinge(p: PairLogps, o: LossOptions) -> torch.Tensor:
    """SLiC: max(0, 1 - βΔ)."""
    return torch.relu(1 - o.beta * (p.chosen_logratios - p.rejected_logratios))


def ipo(p: PairLogps, o: LossOptions) -> torch.Tensor:
    """IPO (Eq. 17): (Δc/|y_c| - Δr/|y_r| - 1/(2β))², on per-token averaged log-ratios."""
    return (p.length_normalised_delta("ipo") - 1 / (2 * o.beta)) ** 2


def robust(p: PairLogps, o: LossOptions) -> torch.Tensor:
    """Robust DPO: [-(1-ε) log σ(βΔ) + ε log σ(-βΔ)] / (1 - 2ε), unbiased under label noise ε < 1/2."""
    z = o.beta * (p.chosen_logratios - p.rejected_logratios)
    eps = o.label_smoothing
    return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)


def bco_pair(p: PairLogps, o: LossOptions) -> torch.Tensor:
    """BCO on pairs: -log σ(βΔc) - log σ(-βΔr)."""
    return -F.logsigmoid(o.beta * p.chosen_logratios) - F.logsigmoid(-o.beta * p.rejected_logratios)


def sppo_hard(p: PairLogps, o: LossOptions) -> torch.Tensor:
    """SPPO with hard win probabilities: (Δc - 1/(2β))² + (Δr + 1/(2β))²."""
    return (p.chosen_logratios - 0.5 / o.beta) ** 2 + (p.rejected_logratios + 0.5 / o.beta) ** 2


def nca_pair(p: PairLogps, o: LossOptions) -> torch.Tensor:
    """NCA on pairs: -log σ(βΔc) - ½ log σ(-βΔc) - ½ log σ(-βΔr)."""
    c, r = o.beta * p.chosen_logratios, o.beta * p.rejected_logratios
    return -F.logsigmoid(c) - 0.5 * F.logsigmoid(-c) - 0.5 * F.logsigmoid(-r)


def exo_pair(p: PairLogps, o: LossOptions) -> torch.Tensor:
    """EXO (Eq. 16), KL(q ‖ p_ε) with q = [σ(βΔ), σ(-βΔ)], p_ε = [1-ε, ε]; needs 0 < ε < 1."""
    z = o.beta * (p.chosen_logratios - p.rejected_logratios)
    eps = torch.tensor(o.label_smoothing, dtype=z.dtype, device=z.device)
    kl_win = torch.sigmoid(z) * (F.logsigmoid(z) - torch.log1p(-eps))
    kl_lose = torch.sigmoid(-z) * (F.logsigmoid(-z) - torch.log(eps))
    return kl_win + kl_lose


def aot(p: PairLogps, o: LossOptions) -> torch.Tensor:
    """AOT (paired): smoothed logistic on β(sort(log π_c - log π_r) - sort(log π_ref,c - log π_ref,r)).

    Sorting runs over the batch, so each loss depends on the whole batch.
    """
    policy, _ = torch.sort(p.policy_chosen - p.policy_rejected, dim=0)
    ref, _ = torch.sort(p.ref_chosen - p.ref_rejected, dim=0)
    return _smoothed_logistic(o.beta * (policy - ref), o.label_smoothing)


def aot_unpaired(p: PairLogps, o: LossOptions) -> torch.Tensor:
    """AOT (unpaired): smoothed logistic on β(sort(Δc) - sort(Δr)), sorted over the batch."""
    chosen, _ = torch.sort(p.chosen_logratios, dim=0)
    rejected, _ = torch.sort(p.rejected_logratios, dim=0)
    return _smoothed_logistic(o.beta * (chosen - rejected), o.label_smoothing)


def apo_zero(p: PairLogps, o: LossOptions) -> torch.Tensor:
    """APO-zero (Eq. 7): 1 - σ(βΔc) + σ(βΔr); raise chosen, lower rejected."""
    return 1 - torch.sigmoid(o.beta * p.chosen_logratios) + torch.sigmoid(o.beta * p.rejected_logratios)


def apo_down(p: PairLogps, o: LossOptions) -> torch.Tensor:
    """APO-down (Eq. 8): σ(βΔc) + 1 - σ(β(Δc - Δr)); lower both, rejected more."""
    c = p.chosen_logratios
    return torch.sigmoid(o.beta * c) + 1 - torch.sigmoid(o.beta * (c - p.rejected_logratios))


def discopop(p: PairLogps, o: LossOptions) -> torch.Tensor:
    """DiscoPOP (Eq. 5): with z = βΔ and w = σ(z/τ), (1-w)·(-log σ(z)) + w·exp(-z)."""
    z = o.beta * (p.chosen_logratios - p.rejected_logratios)
    w = torch.sigmoid(z / o.discopop_tau)
    return (1 - w) * -F.logsigmoid(z) + w * torch.exp(-z)


def sigmoid_norm(p: PairLogps, o: LossOptions) -> torch.Tensor:
    """Length-normalised DPO: -log σ(β(Δc/|y_c| - Δr/|y_r|))."""
    return -F.logsigmoid(o.beta * p.length_normalised_delta("sigmoid_norm"))


LOSS_TYPES: dict[str, PreferenceLoss] = {
    fn.__name__: fn
    for fn in (
        sigmoid, hinge, ipo, robust, bco_pair, sppo_hard, nca_pair, exo_pair,
        aot, aot_unpaired, apo_zero, apo_down, discopop, sigmoid_norm,
    )
}


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    *,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    discopop_tau: float = 0.05,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example loss of `loss_type` (a key of LOSS_TYPES), and the implicit rewards β·(log π - log π_ref).

    Returns (losses, chosen_rewards, rejected_rewards), each of shape [batch];
    the rewards are detached, for logging.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r} is unknown; choose one of {sorted(LOSS_TYPES)}.")
    if beta <= 0:
        raise ValueError(f"beta={beta} must be > 0 (typical values 0.05 to 0.5).")
    if loss_type == "robust" and not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"loss_type='robust' needs 0 <= label_smoothing < 0.5, got {label_smoothing}.")
    if loss_type == "exo_pair" and not 0.0 < label_smoothing < 1.0:
        raise ValueError(f"loss_type='exo_pair' needs 0 < label_smoothing < 1 (e.g. 1e-3), got {label_smoothing}.")
    pair = PairLogps(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        chosen_lengths, rejected_lengths,
    )
    losses = LOSS_TYPES[loss_type](pair, LossOptions(beta, label_smoothing, discopop_tau))
    return losses, beta * pair.chosen_logratios.detach(), beta * pair.rejected_logratios.detach()


def simpo_loss(
    policy_chosen_logps_avg: torch.Tensor,
    policy_rejected_logps_avg: torch.Tensor,
    beta: float,
    gamma_beta_ratio: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO, reference-free: -(1-ε) log σ(β(ā_c - ā_r) - γ) - ε log σ(-(β(ā_c - ā_r) - γ)).

    ā are per-token averaged log-probs and γ = β · gamma_beta_ratio is the target
    reward margin (TRL's `simpo_gamma`). Returns (losses, β·ā_c, β·ā_r).
    """
    logits = beta * (policy_chosen_logps_avg - policy_rejected_logps_avg - gamma_beta_ratio)
    losses = _smoothed_logistic(logits, label_smoothing)
    return losses, beta * policy_chosen_logps_avg.detach(), beta * policy_rejected_logps_avg.detach()
