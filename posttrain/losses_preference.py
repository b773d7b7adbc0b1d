"""Preference losses as pure functions on tensors: Bradley-Terry, the DPO family, SimPO, ORPO.

Every function takes per-example sequence log-probs (summed over the completion,
or per-token averaged where the name says so) or scalar rewards, and returns
per-example losses whose mean is the training loss. Formulas follow TRL 1.16's
`RewardTrainer`, `DPOTrainer`, `CPOTrainer` and `ORPOTrainer`, which
`tests/test_losses_preference.py` checks numerically. KTO (unpaired data) lives
in `losses_preference_unpaired`.

Notation: for each pair, Δc = log π(y_c) - log π_ref(y_c), Δr likewise for the
rejected answer, Δ = Δc - Δr, β the temperature, ε the label smoothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from posttrain.losses_preference_unpaired import KTO_LOSS_TYPES


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
    """Sequence log-probs of a batch of pairs; lengths count completion tokens (IPO, sigmoid_norm, sft)."""

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


def token_mean_nll(summed_logps: torch.Tensor, num_tokens: torch.Tensor) -> torch.Tensor:
    """Scalar NLL averaged over every token of the batch: -Σᵢ log π(yᵢ) / Σᵢ |yᵢ| (token count clamped to ≥ 1).

    This is what `CrossEntropyLoss(reduction="mean")` gives on the same tokens: long
    answers weigh more than in a mean of per-sequence averages.
    """
    return -summed_logps.sum() / num_tokens.sum().clamp(min=1.0)


def sft(p: PairLogps, o: LossOptions) -> torch.Tensor:
    """NLL of the chosen answers, -Σᵢ log π(y_c,ᵢ) / Σᵢ |y_c,ᵢ|, the same for every pair of the batch.

    As TRL 1.16's DPOTrainer `sft`: a token-level mean over the whole batch (not a
    mean of per-answer averages), broadcast to [batch] so that the mean is that
    scalar; like AOT each entry depends on the whole batch. Reference-free; RPO
    (Pang et al. 2024, arXiv 2404.19733) is `["sigmoid", "sft"]` with weights [1, α].
    With no chosen token at all TRL gives NaN; the clamp gives 0 instead.
    """
    if p.chosen_lengths is None:
        raise ValueError("loss_type='sft' averages over chosen tokens: pass chosen_lengths= to dpo_loss.")
    return token_mean_nll(p.policy_chosen, p.chosen_lengths).expand(p.policy_chosen.shape[0])


LOSS_TYPES: dict[str, PreferenceLoss] = {
    fn.__name__: fn
    for fn in (
        sigmoid, hinge, ipo, robust, bco_pair, sppo_hard, nca_pair, exo_pair,
        aot, aot_unpaired, apo_zero, apo_down, discopop, sft, sigmoid_norm,
    )
}

# Losses that never look at π_ref; every other known loss type needs reference log-probs.
REFERENCE_FREE = frozenset({"sft", "simpo", "orpo"})
KNOWN_LOSS_TYPES = frozenset(LOSS_TYPES) | REFERENCE_FREE | frozenset(KTO_LOSS_TYPES)


def _as_list(loss_type: str | Sequence[str]) -> list[str]:
    return [loss_type] if isinstance(loss_type, str) else list(loss_type)


def needs_reference(loss_type: str | Sequence[str]) -> bool:
    """Whether a reference model is needed: True when any of the (combined) loss types uses π_ref."""
    types = _as_list(loss_type)
    unknown = [t for t in types if t not in KNOWN_LOSS_TYPES]
    if unknown or not types:
        raise ValueError(f"loss_type={loss_type!r}: give one or more of {sorted(KNOWN_LOSS_TYPES)}.")
    return any(t not in REFERENCE_FREE for t in types)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    beta: float,
    loss_type: str | Sequence[str] = "sigmoid",
    label_smoothing: float = 0.0,
    *,
    loss_weights: Sequence[float] | None = None,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    discopop_tau: float = 0.05,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example Σₖ wₖ·lossₖ over `loss_type` (keys of LOSS_TYPES), and the implicit rewards β·(log π - log π_ref).

    A list of loss types is combined as TRL 1.16's DPOTrainer does (`loss_type`
    list with `loss_weights`, default 1.0 each; e.g. MPO is ["sigmoid",
    "bco_pair", "sft"] with [0.8, 0.2, 1.0]): TRL sums wₖ·mean(lossₖ), which is
    the mean of the per-example weighted sum returned here.
    The reference log-probs may be None only when no loss type needs them
    (`sft`); the rewards are then β·log π.
    Returns (losses, chosen_rewards, rejected_rewards), each of shape [batch];
    the rewards are detached, for logging.
    """
    types = _as_list(loss_type)
    unknown = [t for t in types if t not in LOSS_TYPES]
    if unknown or not types:
        raise ValueError(f"loss_type={loss_type!r} is unknown; choose one or more of {sorted(LOSS_TYPES)}.")
    weights = [1.0] * len(types) if loss_weights is None else [float(w) for w in loss_weights]
    if len(weights) != len(types):
        raise ValueError(
            f"loss_weights has {len(weights)} weights for {len(types)} loss types {types}: give one weight per "
            "loss type, in the same order, or omit loss_weights to weight each by 1.0."
        )
    if beta <= 0:
        raise ValueError(f"beta={beta} must be > 0 (typical values 0.05 to 0.5).")
    if "robust" in types and not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"loss_type='robust' needs 0 <= label_smoothing < 0.5, got {label_smoothing}.")
    if "exo_pair" in types and not 0.0 < label_smoothing < 1.0:
        raise ValueError(f"loss_type='exo_pair' needs 0 < label_smoothing < 1 (e.g. 1e-3), got {label_smoothing}.")
    if ref_chosen_logps is None or ref_rejected_logps is None:
        if needs_reference(types):
            raise ValueError(f"loss_type={types} needs ref_chosen_logps and ref_rejected_logps (a reference model).")
        ref_chosen_logps = torch.zeros_like(policy_chosen_logps)
        ref_rejected_logps = torch.zeros_like(policy_rejected_logps)
    pair = PairLogps(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        chosen_lengths, rejected_lengths,
    )
    options = LossOptions(beta, label_smoothing, discopop_tau)
    losses = sum(w * LOSS_TYPES[t](pair, options) for t, w in zip(types, weights, strict=True))
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


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - eˣ) for x < 0, stable at both ends: log1p(-eˣ) below -log 2, log(-expm1(x)) above (Mächler 2012)."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


class ORPOTerms(NamedTuple):
    losses: torch.Tensor  # per example: chosen_nll - λ·log σ(ℓ); its mean is TRL's ORPO loss
    or_losses: torch.Tensor  # per example: -λ·log σ(ℓ)
    chosen_rewards: torch.Tensor  # λ·ā_c, detached
    rejected_rewards: torch.Tensor  # λ·ā_r, detached
    log_odds: torch.Tensor  # ℓ, detached; TRL logs its mean as "log_odds_chosen"
    log_sigmoid_odds: torch.Tensor  # log σ(ℓ), detached; TRL logs its mean as "log_odds_ratio"


def orpo_loss(
    chosen_avg_logps: torch.Tensor,
    rejected_avg_logps: torch.Tensor,
    beta: float,
    *,
    chosen_nll: torch.Tensor | float,
) -> ORPOTerms:
    """ORPO (Hong et al. 2024, arXiv 2403.07691; odds Eq. 4, L_OR Eq. 7), reference-free: L_SFT + λ·L_OR.

    With ā the per-token averaged log-probs of the completions, log odds(y) =
    ā - log(1 - e^ā) and ℓ = log odds(y_c) - log odds(y_r); L_OR = -log σ(ℓ), and
    λ is `beta` (TRL's ORPOConfig.beta). `chosen_nll` is L_SFT: TRL's ORPOTrainer
    takes the token-mean cross-entropy over the prompt *and* completion tokens of
    the chosen sequences (`token_mean_nll` of those); pass 0.0 for L_OR alone.
    Matches TRL's `ORPOTrainer.odds_ratio_loss` (whose `losses` is +λ·log σ(ℓ),
    subtracted from the NLL) and `get_batch_loss_metrics`. Like TRL, half-precision
    inputs are computed in float32.
    """
    if beta <= 0:
        raise ValueError(f"beta={beta} must be > 0 (ORPO's λ, typical 0.1).")
    if chosen_avg_logps.dtype in (torch.float16, torch.bfloat16):
        chosen_avg_logps, rejected_avg_logps = chosen_avg_logps.float(), rejected_avg_logps.float()
    log_odds = (chosen_avg_logps - rejected_avg_logps) - (log1mexp(chosen_avg_logps) - log1mexp(rejected_avg_logps))
    log_sigmoid_odds = F.logsigmoid(log_odds)
    or_losses = -beta * log_sigmoid_odds
    return ORPOTerms(
        chosen_nll + or_losses, or_losses, beta * chosen_avg_logps.detach(), beta * rejected_avg_logps.detach(),
        log_odds.detach(), log_sigmoid_odds.detach(),
    )
