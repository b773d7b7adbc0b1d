"""RLHF with PPO (InstructGPT step 3): a policy, a value model, a frozen reference and a reward.

Each iteration:
  1. rollouts: the policy samples a response to each of `rollout.prompts_per_step` prompts
     through the one generation engine (batched, KV cache);
  2. scores: the reward (a reward model, `gold` or module:function) scores each response;
     a response that never ends loses `reward.missing_eos_penalty`; scores are whitened per batch
     when `reward.normalize`;
  3. per-token rewards  r_t = -β·KL_t, plus the score at the last token (losses_rl.kl_penalised_rewards),
     with KL_t = log π_old(y_t) - log π_ref(y_t) and β fixed or driven to `rl.kl_target` (adaptive);
  4. GAE(γ, λ) advantages on the value model's estimates, whitened; returns = A + V;
  5. `rl.epochs` passes over the rollouts in `ppo.minibatches` minibatches, each one optimizer step of
         L = mean_t max(-A_t r_t, -A_t clip(r_t, 1-ε, 1+ε)) + vf_coef · ½ mean_t max((V-R)², (V_clip-R)²)
     with r_t = π(y_t) / π_old(y_t) (losses_rl.ppo_policy_loss, ppo_value_loss).

The value model is its own model (`rl.value_model: separate`, initialised from the reward model
when the reward is a directory, as InstructGPT does) or a scalar head on the policy's trunk
(`shared`). The reference is the starting policy: with LoRA the same weights with adapters off.

Logged per iteration: reward (raw and as trained), gold score when the prompts carry the world's
meta, KL to the reference, β, entropy, response length, share of responses that never end, clip
fraction, value loss, explained variance, and the time split (generate, reward, reference, value,
update). Every `track.every` iterations the policy answers the held-out prompts, and proxy reward,
gold score and KL(π || π_ref) go into the over-optimisation curve (metrics "overoptimisation").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from posttrain.artifacts import data_record
from posttrain.config import opt
from posttrain.data.chat import ensure_chat_template, render_generation_prompt, stop_generation_at_end_of_turn
from posttrain.data.prompts import read_prompts
from posttrain.errors import ConfigError
from posttrain.losses_rl import (
    KL_ESTIMATORS, adaptive_kl_coef, explained_variance, gae, kl_penalised_rewards, masked_mean, masked_whiten,
    ppo_policy_loss, ppo_value_loss,
)
from posttrain.modeling.forward import policy_outputs, token_values
from posttrain.models import load_model
from posttrain.rewards import check_reward_spec
from posttrain.rollouts import Rollout, rollout_batch, unflatten
from posttrain.stages.base import Stage, StageData
from posttrain.stages.common import checkpoint_dir, finalize_model, prepare_model, split_rows
from posttrain.stages.guard import resume_trainer
from posttrain.stages.rl_loop import ActorCritic, RLLoop
from posttrain.training.config import ModelConfig, TrainConfig


@dataclass
class PromptDataConfig:
    """Which prompts the policy answers."""

    chat_template: str = opt("auto", "`auto` (the tokenizer's own, else posttrain's ChatML), `own` (error if missing), `default`, or a path to a .jinja file.")
    eval_fraction: float = opt(0.1, "Share of the prompts held out for the over-optimisation curve (never trained on).", ge=0, lt=1)
    max_prompt_length: int = opt(512, "Prompts longer than this many tokens are dropped and counted.", ge=1)
    limit: int | None = opt(None, "Use only the first N prompts; null = all.", ge=1)


@dataclass
class RolloutOptions:
    """How responses are sampled."""

    prompts_per_step: int = opt(32, "Prompts answered per iteration (one response each).", ge=1)
    max_new_tokens: int = opt(64, "Longest response; longer ones are cut and count as never ending.", ge=1)
    temperature: float = opt(1.0, "Sampling temperature T. The policy trained is softmax(logits / T), the one the samples come from (as TRL); the reference is tempered alike.", gt=0)
    top_p: float = opt(1.0, "Nucleus sampling (1 = off).", gt=0, le=1)
    top_k: int = opt(0, "Keep the k most likely tokens (0 = off).", ge=0)
    batch_size: int = opt(64, "Rows the engine samples at once.", ge=1)


@dataclass
class RLRewardOptions:
    """What the policy is optimised against."""

    model: str | None = opt(None, "The reward: a reward model directory (posttrain reward), `gold` (the built-in world's judge) or module:function. Required.")
    normalize: bool = opt(True, "Whiten the scores of each rollout batch (mean 0, std 1) before the KL penalty.")
    missing_eos_penalty: float = opt(1.0, "Subtracted from the (normalised) score of a response cut at max_new_tokens.", ge=0)
    track_gold: bool = opt(True, "Also score responses with the gold judge when the prompts carry the world's meta (logged, never trained on).")


@dataclass
class PPOOptions:
    """The PPO objective."""

    epochs: int = opt(4, "Passes over each rollout batch.", ge=1)
    minibatches: int = opt(1, "Optimizer steps per pass (the rollout batch is split into this many).", ge=1)
    clip: float = opt(0.2, "Policy ratio clip ε.", gt=0)
    value_clip: float = opt(0.2, "Value clip: new values stay within this of the rollout's.", gt=0)
    vf_coef: float = opt(0.1, "Weight of the value loss.", ge=0)
    gamma: float = opt(1.0, "Discount γ.", ge=0, le=1)
    lam: float = opt(0.95, "GAE λ.", ge=0, le=1)
    kl_coef: float = opt(0.05, "β of the KL penalty in the reward (the start value when kl_target is set).", ge=0)
    kl_estimator: str = opt("k1", "Per-token KL estimator in the reward.", choices=tuple(KL_ESTIMATORS))
    kl_target: float | None = opt(None, "Adaptive KL: steer β so the summed KL per response tracks this (null = fixed β).", gt=0)
    kl_horizon: int = opt(10000, "Adaptive KL horizon, in responses.", ge=1)
    whiten_advantages: bool = opt(True, "Whiten advantages over each rollout batch.")
    value_model: str = opt("separate", "`separate`: its own model; `shared`: a scalar head on the policy's trunk.", choices=("separate", "shared"))
    value_init: str | None = opt(None, "Starting weights of a separate value model; default: the reward model (when the reward is a directory), else the starting policy.")
    ref_model: str | None = opt(None, "Reference model directory; default: the starting model (with LoRA: adapters off).")


@dataclass
class TrackOptions:
    """The over-optimisation curve: proxy and gold reward against KL, on held-out prompts."""

    every: int = opt(5, "Measure every N iterations (and before the first and after the last); 0 = never.", ge=0)
    prompts: int = opt(64, "Held-out prompts answered at each measurement.", ge=1)


def _ppo_train() -> TrainConfig:
    return TrainConfig(lr=1e-5, batch_size=16, max_steps=20, warmup_ratio=0.0, save_every=5, log_every=1)


@dataclass
class PPOConfig:
    """RLHF with PPO against a reward model (or gold judge, or your function)."""

    model: ModelConfig = opt(help="Model options (policy and value model).", factory=ModelConfig)
    data: PromptDataConfig = opt(help="Prompt options.", factory=PromptDataConfig)
    rollout: RolloutOptions = opt(help="Sampling options.", factory=RolloutOptions)
    reward: RLRewardOptions = opt(help="Reward options.", factory=RLRewardOptions)
    rl: PPOOptions = opt(help="PPO options.", factory=PPOOptions)
    track: TrackOptions = opt(help="Over-optimisation tracking.", factory=TrackOptions)
    train: TrainConfig = opt(help="Optimisation: max_steps counts iterations (rollout batches; -1: from epochs over the prompts), batch_size counts responses per micro-batch, save_every and log_every count iterations.", factory=_ppo_train)


class PPOObjective:
    """Clipped policy loss + weighted clipped value loss on packed rollouts; units are trained response tokens."""

    FIELDS = ("old_logps", "old_values", "advantages", "returns")

    def __init__(self, pad_id: int, opts: PPOOptions, temperature: float = 1.0):
        self.pad_id, self.opts, self.temperature = pad_id, opts, temperature

    def collate(self, rollouts: list[Rollout]) -> dict:
        return rollout_batch(rollouts, self.pad_id, self.FIELDS)

    def units(self, batch: dict) -> int:
        return int(batch["response_mask"].sum())

    def tokens(self, rollouts: list[Rollout]) -> int:
        return sum(len(r.prompt_ids) + len(r.response_ids) for r in rollouts)

    def loss(self, model: ActorCritic, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        o, mask = self.opts, batch["response_mask"]
        out = policy_outputs(model.policy, batch, value_head=model.value_head, entropy=True,
                             temperature=self.temperature)
        values = out["values"] if model.value_head is not None else token_values(model.value, batch)
        logps, values = unflatten(out["logps"], out["sequence"], batch), unflatten(values, out["sequence"], batch)
        pg, clipfrac, approx_kl = ppo_policy_loss(logps, batch["old_logps"], batch["advantages"], mask, o.clip)
        vf = ppo_value_loss(values, batch["old_values"], batch["returns"], mask, o.value_clip)
        n = self.units(batch)
        entropy = float(out["entropy"].sum())
        return (pg + o.vf_coef * vf) * n, {"policy_loss": float(pg.detach()) * n, "value_loss": float(vf.detach()) * n,
                                           "clip_fraction": float(clipfrac) * n, "approx_kl": float(approx_kl) * n,
                                           "entropy": entropy}


class PPO(Stage):
    name = "ppo"
    order = 50
    help = "RLHF with PPO: sample, score with a reward model, and improve the policy under a KL leash."
    description = """RLHF as InstructGPT: the policy answers prompts through the generation engine, a
reward model (or the world's gold judge, or your module:function) scores the answers, and PPO
(GAE, clipped policy and value losses, several minibatch epochs) raises the reward while a KL
penalty to the frozen reference (the starting model) keeps the policy close. The value model is
its own (initialised from the reward model) or a head on the policy's trunk (rl.value_model).
Held-out prompts track proxy reward, gold score and KL through training: the over-optimisation curve.

Data: prompt rows {"prompt": str | messages, "meta"?: {...}} (preference rows work too; their answers are ignored).
  posttrain ppo --model runs/sft --data world/prompts.jsonl --out runs/ppo --set reward.model=runs/reward
All options: docs/options.md (section ppo)."""
    data_help = "Prompts: .jsonl/.json/.parquet rows with a `prompt` (and optional `meta`), e.g. world/prompts.jsonl."
    config = PPOConfig

    def read_data(self, tok, data_path, cfg: PPOConfig) -> StageData:
        if not cfg.reward.model:
            raise ConfigError("reward.model is not set: name the reward to optimise, a reward model directory "
                              "(posttrain reward), `gold` or module:function, e.g. --set reward.model=runs/reward.")
        check_reward_spec(cfg.reward.model)
        template = ensure_chat_template(tok, cfg.data.chat_template)
        return prompt_stage_data(tok, data_path, cfg, read_prompts(data_path, cfg.data.limit), template)

    def load(self, model_path, cfg: PPOConfig, tok):
        policy, _, device, dtype = prepare_model(model_path, cfg.model, tok)
        if cfg.rl.value_model == "shared":
            hidden = policy.config.hidden_size
            head = torch.nn.Linear(hidden, 1, device=device)
            torch.nn.init.zeros_(head.weight), torch.nn.init.zeros_(head.bias)
            return ActorCritic(policy, value_head=head), device, dtype
        init = cfg.rl.value_init or (cfg.reward.model if _is_dir(cfg.reward.model) else model_path)
        value, _, _, _ = prepare_model(init, cfg.model, tok, head="score")
        return ActorCritic(policy, value=value), device, dtype

    def model_id(self, model_path, parent: dict | None) -> str:
        return parent["weights_sha256"]

    def train(self, model: ActorCritic, tok, data: StageData, cfg: PPOConfig, device, dtype, *, out, ckpt,
              run_record, progress: bool):
        from posttrain.training.trainer import Trainer

        ref = reference_policy(cfg, model.policy, device)
        objective = PPOObjective(tok.pad_token_id, cfg.rl, cfg.rollout.temperature)
        iterations = cfg.train.max_steps if cfg.train.max_steps > 0 else max(
            1, math.ceil(cfg.train.epochs * len(data.train) / cfg.rollout.prompts_per_step))
        per_iteration = cfg.rl.epochs * cfg.rl.minibatches
        tcfg = replace(cfg.train, max_steps=iterations * per_iteration, save_every=0)
        trainer = Trainer(model, data.train, tcfg, objective, device=device, dtype=dtype, ckpt_dir=checkpoint_dir(out),
                          desc=self.name, progress=progress, run_record=run_record, log_lines=False)
        resume_trainer(trainer, ckpt)
        loop = RLLoop(self, model, tok, data, cfg, trainer, ref, iterations, device, dtype, progress)
        return loop.run(), objective

    def run(self, model_path, data_path, out, cfg: PPOConfig, **kwargs) -> dict:
        """Stage.run, then the over-optimisation plot of the tracked points next to the artifact's weights."""
        from pathlib import Path

        from posttrain.overoptimisation import plot_overoptimisation
        from posttrain.stages.rl_loop import rl_curve

        prov = super().run(model_path, data_path, out, cfg, **kwargs)
        curve = prov["metrics"].get("overoptimisation")
        if curve and len(curve["points"]) > 1:
            plot_overoptimisation([rl_curve(curve, "PPO")], Path(out) / "overoptimisation.png",
                                  f"PPO against {cfg.reward.model}: proxy and gold reward on held-out prompts")
        return prov

    def finish(self, model: ActorCritic, tok, cfg: PPOConfig):
        policy = finalize_model(model.policy, cfg.model)
        stop_generation_at_end_of_turn(policy, tok)
        return policy

    # ------------------------------------------------------------ one iteration's maths

    @torch.no_grad()
    def score(self, loop: RLLoop, rollouts: list[Rollout], **_) -> None:
        """Raw proxy scores (and gold), then the trained score: normalised, minus the missing-EOS penalty."""
        o = loop.cfg.reward
        proxy = torch.tensor(loop.reward([r.prompt.messages for r in rollouts], [r.text for r in rollouts],
                                         [r.prompt.meta for r in rollouts]), dtype=torch.float32)
        trained = (proxy - proxy.mean()) / (proxy.std() + 1e-8) if o.normalize and len(rollouts) > 1 else proxy.clone()
        for r, p, t in zip(rollouts, proxy.tolist(), trained.tolist()):
            r.proxy, r.score = p, t - (0.0 if r.finished else o.missing_eos_penalty)
        loop.add_gold(rollouts)

    def advantages(self, loop: RLLoop, rollouts: list[Rollout]) -> dict[str, float]:
        """Per-token KL-penalised rewards, GAE advantages (whitened) and returns, written into the rollouts."""
        o = loop.cfg.rl
        batch = rollout_batch(rollouts, loop.pad_id, ("old_logps", "ref_logps", "old_values"))
        mask = batch["response_mask"]
        scores = torch.tensor([r.score for r in rollouts])
        rewards, kl = kl_penalised_rewards(scores, batch["old_logps"], batch["ref_logps"], mask, loop.kl_coef,
                                           o.kl_estimator)
        adv, returns = gae(rewards, batch["old_values"], mask, o.gamma, o.lam)
        if o.whiten_advantages and int(mask.sum()) > 1:
            adv = torch.where(mask, masked_whiten(adv, mask), torch.zeros_like(adv))
        for i, r in enumerate(rollouts):
            n = r.trained_tokens
            r.advantages, r.returns = adv[i, :n].tolist(), returns[i, :n].tolist()
        kl_seq = float(kl.sum(-1).mean())
        return {"kl": kl_seq, "explained_variance": explained_variance(batch["old_values"], returns, mask),
                "value_mean": float(masked_mean(batch["old_values"], mask))}

    def update_kl_coef(self, loop: RLLoop, kl: float, n: int) -> None:
        o = loop.cfg.rl
        if o.kl_target is not None:
            loop.kl_coef = adaptive_kl_coef(loop.kl_coef, kl, o.kl_target, o.kl_horizon, n)


def prompt_stage_data(tok, data_path, cfg, rows, template: str) -> StageData:
    """An RL stage's prompts: those that fit data.max_prompt_length, a seeded held-out share for tracking."""
    records = [data_record(data_path, len(rows)) | {"role": "train"}]
    length = lambda r: len(tok(render_generation_prompt(tok, r.messages), add_special_tokens=False)["input_ids"])  # noqa: E731
    kept = [r for r in rows if length(r) <= cfg.data.max_prompt_length]
    train, held = split_rows(kept, cfg.data.eval_fraction, cfg.train.seed)
    if not train:
        raise ConfigError(f"{data_path}: no prompt is left to train on ({len(rows)} read, {len(rows) - len(kept)} "
                          f"longer than data.max_prompt_length={cfg.data.max_prompt_length}).")
    stats = {"prompts": len(train), "held_out_prompts": len(held), "dropped_too_long": len(rows) - len(kept)}
    return StageData(train, held, records, stats=stats, metrics={"chat_template": template},
                     summary={"prompts": len(train), "held-out prompts": len(held),
                              "dropped (too long)": len(rows) - len(kept)})


def reference_policy(cfg, policy, device, wanted: bool = True):
    """The frozen reference: rl.ref_model, else a copy of the starting policy; None with LoRA (adapters off) or
    when not wanted."""
    if wanted and cfg.rl.ref_model:
        return load_model(cfg.rl.ref_model, device, cfg.model.trust_remote_code).eval().requires_grad_(False)
    if wanted and not cfg.model.lora.enabled:
        import copy
        return copy.deepcopy(policy).eval().requires_grad_(False)
    return None


def _is_dir(spec: str | None) -> bool:
    from pathlib import Path

    return bool(spec) and Path(spec).is_dir()


STAGE = PPO()
