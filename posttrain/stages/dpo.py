"""Direct preference optimisation and its variants, on preference pairs.

For each pair, with log π summed over the answer's tokens and Δ = [log π(y_c) - log π_ref(y_c)]
- [log π(y_r) - log π_ref(y_r)], the default loss is DPO's  -log σ(β Δ); `loss.type` picks
any loss of losses_preference.LOSS_TYPES (IPO, hinge, robust, BCO, APO, DiscoPOP, ...), a
weighted combination (e.g. sigmoid + sft, RPO), or reference-free SimPO or ORPO. Only the maths differs: it lives in
losses_preference; this file feeds it.

The reference's log-probs are computed once, before the first step, and cached with the pairs:
the frozen reference is the starting model (with LoRA, the same weights with adapters off, so no
second copy is held), or `loss.ref_model`. Both answers of every pair go through one forward pass,
packed without padding like SFT. Logged per step: loss, implicit rewards β·(log π - log π_ref)
of chosen and rejected, their margin, pairwise accuracy, the policy's summed log-probs of both
answers, and `logratio`, the mean per-token log π - log π_ref over both answers: the k1 term of
KL(π || π_ref) on these tokens. The tokens are the data's, not the policy's samples, so it is a
drift gauge and can be negative (answers losing probability, chosen ones included, is the
known failure that the `sft` term of `sigmoid,sft` counters).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from posttrain.config import opt
from posttrain.console import notice
from posttrain.data.chat import stop_generation_at_end_of_turn
from posttrain.data.preferences import Pair
from posttrain.errors import ConfigError
from posttrain.losses_preference import LOSS_TYPES, dpo_loss, needs_reference, orpo_loss, simpo_loss
from posttrain.modeling.forward import sequence_logps
from posttrain.models import autocast, load_model
from posttrain.stages.base import Stage, StageData
from posttrain.stages.common import finalize_model
from posttrain.stages.reward import PreferenceDataConfig, read_preferences
from posttrain.training.config import ModelConfig, TrainConfig
from posttrain.training.objectives import PairObjective

ALONE = ("simpo", "orpo")  # reference-free losses of their own, not combined with others
KNOWN = (*LOSS_TYPES, *ALONE)


@dataclass
class DPOOptions:
    """The preference loss."""

    type: str = opt("sigmoid", "One loss, or a comma list combined with `weights`: " + ", ".join(KNOWN)
                         + ". `simpo`, `orpo` and `sft` need no reference model; `simpo` and `orpo` stand alone (β is ORPO's λ).")
    weights: list[float] | None = opt(None, "Weights of the losses in `type` (default: 1 each).")
    beta: float = opt(0.1, "Temperature β: how far the policy may move from the reference (higher = closer).", gt=0)
    label_smoothing: float = opt(0.0, "ε: the assumed share of flipped labels (cDPO, robust, exo_pair, aot, SimPO).", ge=0, lt=1)
    simpo_gamma_ratio: float = opt(0.5, "SimPO's target margin γ as a share of β.", ge=0)
    discopop_tau: float = opt(0.05, "DiscoPOP's temperature τ.", gt=0)
    ref_model: str | None = opt(None, "Reference model directory; default: the starting model (--model).")

    def losses(self) -> list[str]:
        return [t.strip() for t in self.type.split(",") if t.strip()]

    def check(self, prefix: str = "") -> None:
        """Rules between the fields (called by config.from_dict)."""
        for t in self.losses() or [""]:
            if t not in KNOWN:
                raise ConfigError(f"{prefix}type: unknown loss '{t}'; choose from {', '.join(KNOWN)}.")
        alone = [t for t in self.losses() if t in ALONE]
        if alone and len(self.losses()) > 1:
            raise ConfigError(f"{prefix}type: {alone[0]} stands alone; it cannot be combined with other losses.")
        if self.weights is not None and len(self.weights) != len(self.losses()):
            raise ConfigError(f"{prefix}weights has {len(self.weights)} weights for {len(self.losses())} "
                              f"losses in {prefix}type; give one weight per loss.")

    def needs_reference(self) -> bool:
        return needs_reference(self.losses())


def _dpo_train() -> TrainConfig:
    return TrainConfig(lr=5e-6, batch_size=16, epochs=1.0, warmup_ratio=0.1)


@dataclass
class DPOConfig:
    """Direct preference optimisation (and variants) on preference pairs."""

    model: ModelConfig = opt(help="Model options.", factory=ModelConfig)
    data: PreferenceDataConfig = opt(help="Data options.", factory=PreferenceDataConfig)
    loss: DPOOptions = opt(help="Loss options.", factory=DPOOptions)
    train: TrainConfig = opt(help="Optimisation options (batch_size counts pairs).", factory=_dpo_train)


class DirectPreference(PairObjective):
    """The DPO-family objective on packed pairs; units are pairs."""

    def pair_losses(self, logps, counts, ref_chosen, ref_rejected):
        """Per-pair losses and implicit rewards (chosen, rejected) from summed answer log-probs."""
        o = self.opts
        pc, pr, nc, nr = logps[0::2], logps[1::2], counts[0::2], counts[1::2]
        ac, ar = pc / nc.clamp(min=1), pr / nr.clamp(min=1)  # per-token averages
        if o.losses() == ["simpo"]:
            return simpo_loss(ac, ar, o.beta, o.simpo_gamma_ratio, o.label_smoothing)
        if o.losses() == ["orpo"]:
            t = orpo_loss(ac, ar, o.beta, chosen_nll=-ac)
            return t.losses, t.chosen_rewards, t.rejected_rewards
        ref = o.needs_reference()
        return dpo_loss(pc, pr, ref_chosen if ref else None, ref_rejected if ref else None, o.beta, o.losses(),
                        o.label_smoothing, loss_weights=o.weights, chosen_lengths=nc, rejected_lengths=nr,
                        discopop_tau=o.discopop_tau)

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        n = batch["n_pairs"]
        logps, counts = sequence_logps(model, batch, 2 * n)
        losses, rc, rr = self.pair_losses(logps, counts, batch["ref_chosen"], batch["ref_rejected"])
        metrics = {"accuracy": float((rc > rr).sum()), "margin": float((rc - rr).sum()),
                   "reward_chosen": float(rc.sum()), "reward_rejected": float(rr.sum())}
        metrics["logps_chosen"], metrics["logps_rejected"] = float(logps[0::2].detach().sum()), float(logps[1::2].detach().sum())
        if self.opts.needs_reference():
            with torch.no_grad():  # mean log π - log π_ref per answer token: the k1 KL term, on these (off-policy) tokens
                ratio = (logps[0::2] - batch["ref_chosen"]) + (logps[1::2] - batch["ref_rejected"])
                metrics["logratio"] = float((ratio / (counts[0::2] + counts[1::2]).clamp(min=1)).sum())
        return losses.sum(), metrics


@torch.no_grad()
def cache_reference_logps(model, pairs: list[Pair], objective: DirectPreference, device, dtype,
                          batch_size: int = 16, adapters_off: bool = False, progress: bool = False) -> None:
    """Fill each pair's ref_chosen / ref_rejected with `model`'s summed answer log-probs (one pass, no grad)."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    off = model.disable_adapter() if adapters_off else nullcontext()
    with off:
        for i in tqdm(range(0, len(pairs), batch_size), desc="reference log-probs", leave=False, mininterval=1.0,
                      disable=not progress):
            chunk = pairs[i:i + batch_size]
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in objective.collate(chunk).items()}
            with autocast(dtype, device):
                logps, _ = sequence_logps(model, batch, 2 * len(chunk))
            for p, c, r in zip(chunk, logps[0::2].tolist(), logps[1::2].tolist()):
                p.ref_chosen, p.ref_rejected = c, r
    model.train(was_training)


class DPO(Stage):
    name = "dpo"
    order = 40
    help = "Direct preference optimisation (DPO, IPO, SimPO and other variants) on preference pairs."
    description = """DPO and its variants: raise the policy's likelihood of each chosen answer over the
rejected one, relative to a frozen reference (the starting model). The loss is chosen with
--set loss.type=... (sigmoid = DPO, ipo, hinge, robust, bco_pair, sppo_hard, nca_pair,
exo_pair, aot, aot_unpaired, apo_zero, apo_down, discopop, sigmoid_norm, sft; or a comma list
with loss.weights; or reference-free simpo or orpo). Reference log-probs are computed once; with LoRA the reference is the
same model with adapters off. Logs implicit rewards, margins, accuracy and the log-ratio to
the reference.

Data: rows {"prompt", "chosen", "rejected"} (strings or message lists).
  posttrain dpo --model runs/sft --data world/preferences.jsonl --out runs/dpo --set loss.beta=0.1
All options: docs/options.md (section dpo)."""
    data_help = "Preference pairs: .jsonl/.json/.parquet or a datasets directory with prompt/chosen/rejected rows."
    config = DPOConfig

    def read_data(self, tok, data_path, cfg: DPOConfig) -> StageData:
        return read_preferences(tok, data_path, cfg)

    def objective(self, model, tok, data: StageData, cfg: DPOConfig, device, dtype, progress: bool = True):
        objective = DirectPreference(tok.pad_token_id, cfg.data.max_length, cfg.loss)
        if cfg.loss.needs_reference():
            pairs = data.train + data.eval
            if cfg.loss.ref_model:  # another model: loaded for this one pass, then freed
                ref = load_model(cfg.loss.ref_model, device, cfg.model.trust_remote_code)
                cache_reference_logps(ref, pairs, objective, device, dtype, progress=progress)
                del ref
            else:  # the starting weights: this model before its first update (LoRA: adapters off)
                cache_reference_logps(model, pairs, objective, device, dtype, adapters_off=cfg.model.lora.enabled,
                                      progress=progress)
            if progress:
                notice(f"reference log-probs cached for {len(pairs)} pairs")
        return objective

    def finish(self, model, tok, cfg: DPOConfig):
        model = finalize_model(model, cfg.model)
        stop_generation_at_end_of_turn(model, tok)
        return model


STAGE = DPO()
