"""RL from verifiable rewards with the GRPO family (GRPO, Dr. GRPO, DAPO, BNPO, CISPO, GSPO).

Each iteration:
  1. rollouts: G = `rollout.group_size` responses to each of `rollout.prompts_per_step` prompts
     through the one generation engine; a prompt is prefilled once and its KV cache shared by
     its G samples. With tools (`tools.names`, or the rows' `tools` field) the engine runs the
     model's calls and injects the results as tokens that carry no loss;
  2. rewards: the verifiers of each prompt row (its `verifier` field, a name or a list, or
     `reward.verifiers` for all rows) score the final answer; scores are summed, the format
     verifier `think_answer` weighted by `reward.format_weight`, plus an optional learned reward
     (`reward.model`) and DAPO's soft overlong penalty (`reward.overlong_buffer`). A verifier that
     raises scores 0; the error is counted and logged, the run goes on;
  3. dynamic sampling (`rl.dynamic_sampling`): groups whose G rewards are all equal carry no
     signal; `drop` removes them, `resample` draws more prompts until the batch is full again;
  4. advantages (losses_grpo): group-relative r - mean(r), divided by the group or batch std or by
     nothing (`rl.scale_rewards`), or RLOO's leave-one-out baseline, or a REINFORCE++ batch baseline;
  5. `rl.iterations` passes of `rl.minibatches` optimizer steps on losses_grpo.grpo_loss, with
     importance ratios against the sampling policy (token or sequence level), clip-higher
     (epsilon_low, epsilon_high), optional k3 KL to the frozen reference (`rl.beta`, default 0).

Logged per iteration: reward (mean and per verifier), pass@1 and pass@G, entropy, KL (with beta),
response length, clip fractions low and high, share of zero-variance groups, tool calls per
response, verifier errors, time split. Every `track.every` iterations the policy answers held-out
prompts once each: reward, accuracy (the first verifier), each verifier's mean, gold, KL and length. A plot of reward,
accuracy and response length through training is written next to the weights (training_curves.png).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, replace

import torch

from posttrain.config import opt
from posttrain.data.chat import ensure_chat_template, stop_generation_at_end_of_turn
from posttrain.data.prompts import read_prompts
from posttrain.errors import ConfigError, DataError
from posttrain.grading.verifiers import get_verifier, run_verifier
from posttrain.losses_grpo import (
    LOSS_TYPES, SCALES, batch_baseline_advantages, dapo_overlong_penalty, group_advantages, grpo_loss,
    rloo_advantages, zero_variance_groups,
)
from posttrain.modeling.attention import shares_prefixes
from posttrain.modeling.forward import policy_outputs
from posttrain.rewards import check_reward_spec
from posttrain.rollouts import Rollout, group_batch, rollout_batch, unflatten
from posttrain.stages.base import Stage, StageData
from posttrain.stages.common import checkpoint_dir, finalize_model, prepare_model
from posttrain.stages.guard import resume_trainer
from posttrain.stages.ppo import PromptDataConfig, TrackOptions, prompt_stage_data, reference_policy
from posttrain.stages.rl_loop import ActorCritic, RLLoop, _mean
from posttrain.training.config import ModelConfig, TrainConfig

FORMAT_VERIFIER = "think_answer"


@dataclass
class GRPORolloutOptions:
    """How responses are sampled."""

    prompts_per_step: int = opt(16, "Prompts per iteration; each gets group_size responses.", ge=1)
    group_size: int = opt(8, "G: responses per prompt. A response's advantage compares it with its group.", ge=1)
    max_new_tokens: int = opt(128, "Most sampled tokens per response (tool results do not count); longer ones are cut.", ge=1)
    temperature: float = opt(1.0, "Sampling temperature T; the policy trained is softmax(logits / T), as TRL.", gt=0)
    top_p: float = opt(1.0, "Nucleus sampling (1 = off).", gt=0, le=1)
    top_k: int = opt(0, "Keep the k most likely tokens (0 = off).", ge=0)
    batch_size: int = opt(64, "Rows the engine samples at once (a prompt's G samples count G).", ge=1)


@dataclass
class VerifierRewardOptions:
    """What a response is rewarded for."""

    verifiers: list[str] | None = opt(None, "Verifiers for every row (built-in names: numeric, symbolic, think_answer, instructions, json_valid, length, code, refusal; or module:function), summed. null = each row's own `verifier` field.")
    format_weight: float = opt(0.5, "Weight of the format verifier think_answer in the sum (the others weigh 1).", ge=0)
    model: str | None = opt(None, "An extra reward added to the verifiers': a reward model directory, `gold` or module:function (null = none).")
    overlong_buffer: int = opt(0, "DAPO's soft overlong penalty: over the last N tokens before max_new_tokens the reward ramps down to -1; a cut response gets -1. 0 = off.", ge=0)
    track_gold: bool = opt(True, "Also score responses with the gold judge when the prompts carry the world's meta (logged, never trained on).")


@dataclass
class GRPOOptions:
    """The GRPO-family objective (losses_grpo)."""

    loss_type: str = opt("dapo", "Loss aggregation as TRL's GRPOTrainer: grpo (per-sequence mean), dr_grpo (constant normaliser), dapo (token mean over the batch), bnpo, cispo.", choices=LOSS_TYPES)
    advantage: str = opt("group", "group: r - group mean, scaled by scale_rewards; rloo: leave-one-out baseline; batch: REINFORCE++ (r - batch mean) / batch std.", choices=("group", "rloo", "batch"))
    scale_rewards: str = opt("group", "With advantage=group, divide by the group's std, the batch's, or nothing (none = Dr. GRPO).", choices=SCALES)
    epsilon_low: float = opt(0.2, "Lower clip: ratios below 1 - epsilon_low stop pushing a negative advantage down.", gt=0)
    epsilon_high: float = opt(0.2, "Upper clip (clip-higher: DAPO uses 0.28). For cispo the cap of the ratio itself, e.g. 5.", gt=0)
    delta: float | None = opt(None, "Two-sided clip: the unclipped ratio is capped at delta too (INTELLECT-2; null = off).", gt=1)
    beta: float = opt(0.0, "Weight of the k3 KL to the frozen reference (0 = no reference model is run).", ge=0)
    iterations: int = opt(1, "μ: update passes over each batch; after the first, importance ratios against the sampling policy matter.", ge=1)
    minibatches: int = opt(1, "Optimizer steps per pass.", ge=1)
    importance_sampling_level: str = opt("token", "token: a ratio per token; sequence: one per response (GSPO).", choices=("token", "sequence"))
    dynamic_sampling: str = opt("off", "Groups whose rewards are all equal: keep (off), drop, or resample more prompts to refill the batch (DAPO).", choices=("off", "drop", "resample"))
    resample_rounds: int = opt(3, "With dynamic_sampling=resample: most extra sampling rounds per iteration.", ge=1)
    ref_model: str | None = opt(None, "Reference model directory for the KL; default: the starting model (with LoRA: adapters off).")
    share_prompts: bool = opt(True, "In the update, lay each prompt out once for its G responses, which branch from it (the same loss and gradients, one prompt's work instead of G). Where posttrain's per-example attention runs: CPU, sdpa, llama-like families; elsewhere each response carries its prompt.")


@dataclass
class ToolsOptions:
    """Tools the model may call while it answers (posttrain.tools)."""

    names: list[str] | None = opt(None, "Tools: calculator, python (sandboxed), or module:function. null = the prompt rows' `tools` field (none when absent).")
    max_calls: int = opt(4, "Most tool calls per response.", ge=0)


def _grpo_train() -> TrainConfig:
    return TrainConfig(lr=1e-5, batch_size=32, max_steps=20, warmup_ratio=0.0, save_every=5, log_every=1)


@dataclass
class GRPOConfig:
    """RL from verifiable rewards with the GRPO family."""

    model: ModelConfig = opt(help="Model options.", factory=ModelConfig)
    data: PromptDataConfig = opt(help="Prompt options.", factory=PromptDataConfig)
    rollout: GRPORolloutOptions = opt(help="Sampling options.", factory=GRPORolloutOptions)
    reward: VerifierRewardOptions = opt(help="Reward options.", factory=VerifierRewardOptions)
    rl: GRPOOptions = opt(help="GRPO options.", factory=GRPOOptions)
    tools: ToolsOptions = opt(help="Tool use.", factory=ToolsOptions)
    track: TrackOptions = opt(help="Held-out tracking.", factory=TrackOptions)
    train: TrainConfig = opt(help="Optimisation: max_steps counts iterations (rollout batches; -1: from epochs over the prompts), batch_size counts responses per micro-batch, save_every and log_every count iterations.", factory=_grpo_train)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


class GRPOObjective:
    """losses_grpo.grpo_loss on packed rollouts. Units: trained tokens (dapo, bnpo, cispo) or responses
    (grpo, dr_grpo), so micro-batch accumulation reproduces the loss of the whole minibatch."""

    def __init__(self, pad_id: int, opts: GRPOOptions, temperature: float, max_new_tokens: int, fields: tuple[str, ...],
                 share_prompts: bool = False):
        self.pad_id, self.opts, self.temperature, self.max_new_tokens = pad_id, opts, temperature, max_new_tokens
        self.fields = ("advantages",) + fields
        self.share_prompts = share_prompts  # rollouts.group_batch: each prompt once for its responses

    def collate(self, rollouts: list[Rollout]) -> dict:
        return (group_batch if self.share_prompts else rollout_batch)(rollouts, self.pad_id, self.fields)

    def units(self, batch: dict) -> int:
        if self.opts.loss_type in ("grpo", "dr_grpo"):
            return int(batch["n_sequences"])
        return int(batch["response_mask"].sum())

    def tokens(self, rollouts: list[Rollout]) -> int:
        return sum(len(r.prompt_ids) + len(r.response_ids) for r in rollouts)

    def loss(self, model: ActorCritic, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        o, mask = self.opts, batch["response_mask"]
        out = policy_outputs(model.policy, batch, entropy=True, temperature=self.temperature)
        logps = unflatten(out["logps"], out["sequence"], batch)
        old = batch["old_logps"] if "old_logps" in batch else logps.detach()  # μ = 1: ratio 1, as TRL
        loss, stats = grpo_loss(logps, old, batch["advantages"][:, 0], mask, loss_type=o.loss_type,
                                epsilon_low=o.epsilon_low, epsilon_high=o.epsilon_high, delta=o.delta, beta=o.beta,
                                ref_logps=batch.get("ref_logps"), importance_sampling_level=o.importance_sampling_level,
                                max_completion_length=self.max_new_tokens)
        n = self.units(batch)
        tokens = max(1, int(mask.sum()))
        metrics = {"policy_loss": float(loss.detach()) * n, "entropy": float(out["entropy"].sum()) / tokens * n,
                   "clip_low_fraction": float(stats["clip_low_fraction"]) * n,
                   "clip_high_fraction": float(stats["clip_high_fraction"]) * n}
        if o.beta:
            metrics["kl"] = float(stats["kl"]) * n
        return loss * n, metrics


class GRPO(Stage):
    name = "grpo"
    order = 55
    help = "RL from verifiable rewards (GRPO, Dr. GRPO, DAPO, CISPO, GSPO): verifiers score groups of samples."
    description = """RL from verifiable rewards: the policy answers each prompt G times through the
generation engine (the prompt prefilled once for its G samples), verifiers score the answers
(numeric, symbolic, think/answer format, instruction checks, code run in a sandbox, or your
module:function), and a group-relative advantage drives the clipped GRPO-family loss. Optional:
tools the model calls mid-answer (calculator, sandboxed python), a k3 KL to the reference,
several update passes with importance ratios, dynamic sampling, DAPO's overlong penalty.

Data: prompt rows {"prompt": str | messages, "answer": ..., "verifier": name | [names], "tools"?: [names], "meta"?: {...}}
  posttrain grpo --model runs/sft --data world/rlvr.jsonl --out runs/grpo
All options: docs/options.md (section grpo)."""
    data_help = "Prompts with answers: .jsonl/.json/.parquet rows with `prompt`, `answer` and `verifier`, e.g. world/rlvr.jsonl."
    config = GRPOConfig

    def read_data(self, tok, data_path, cfg: GRPOConfig) -> StageData:
        if cfg.reward.model:
            check_reward_spec(cfg.reward.model)
        template = ensure_chat_template(tok, cfg.data.chat_template)
        rows = read_prompts(data_path, cfg.data.limit)
        for r in rows:
            for name in ("verifier", "tools"):
                v = r.fields.get(name)
                if v is not None and not (isinstance(v, str) if name == "verifier" else False) and not (
                        isinstance(v, list) and all(isinstance(x, str) for x in v)):
                    raise DataError(data_path, r.line, name, f"must be a name or a list of names, got {json.dumps(v)[:60]}.",
                                    'Give e.g. "numeric" or ["numeric", "think_answer"] (tools: ["calculator"]).')
            names = _verifier_names(r, cfg)
            if not names and not cfg.reward.model:
                raise ConfigError(f"{data_path}, line {r.line}: the row names no verifier and no reward is set. Give "
                                  "each row a `verifier` field (e.g. \"numeric\"), or set reward.verifiers=[numeric] "
                                  "or reward.model for every row.")
            for name in names:
                get_verifier(name)  # an unknown name or a broken module:function stops here, before any training
        _tool_names(rows, cfg)  # likewise for tools
        return prompt_stage_data(tok, data_path, cfg, rows, template)

    def load(self, model_path, cfg: GRPOConfig, tok):
        policy, _, device, dtype = prepare_model(model_path, cfg.model, tok)
        return ActorCritic(policy), device, dtype

    def model_id(self, model_path, parent: dict | None) -> str:
        return parent["weights_sha256"]

    def annotations(self, cfg: GRPOConfig) -> tuple[str, ...]:
        """old_logps only when the policy moves before the batch is used up; ref_logps only with a KL."""
        o = cfg.rl
        return (("old_logps",) if o.iterations * o.minibatches > 1 else ()) + (("ref_logps",) if o.beta else ())

    def tool_runner(self, cfg: GRPOConfig, tok, data: StageData):
        from posttrain.tools import ToolRunner, resolve_tools

        names = _tool_names(data.train + data.eval, cfg)
        return ToolRunner(resolve_tools(names), tok, cfg.tools.max_calls) if names else None

    def train(self, model: ActorCritic, tok, data: StageData, cfg: GRPOConfig, device, dtype, *, out, ckpt,
              run_record, progress: bool):
        from posttrain.training.trainer import Trainer

        # The reference serves the KL term (beta) and the KL of the held-out tracking; with LoRA it is the
        # same weights with the adapters off, else a frozen copy (track.every=0 and beta=0 spare its memory).
        ref = reference_policy(cfg, model.policy, device, wanted=cfg.rl.beta > 0 or cfg.track.every > 0)
        objective = GRPOObjective(tok.pad_token_id, cfg.rl, cfg.rollout.temperature, cfg.rollout.max_new_tokens,
                                  self.annotations(cfg),
                                  share_prompts=cfg.rl.share_prompts and shares_prefixes(model.policy, device))
        iterations = cfg.train.max_steps if cfg.train.max_steps > 0 else max(
            1, math.ceil(cfg.train.epochs * len(data.train) / cfg.rollout.prompts_per_step))
        tcfg = replace(cfg.train, max_steps=iterations * cfg.rl.iterations * cfg.rl.minibatches, save_every=0)
        trainer = Trainer(model, data.train, tcfg, objective, device=device, dtype=dtype, ckpt_dir=checkpoint_dir(out),
                          desc=self.name, progress=progress, run_record=run_record, log_lines=False)
        resume_trainer(trainer, ckpt)
        loop = RLLoop(self, model, tok, data, cfg, trainer, ref, iterations, device, dtype, progress)
        return loop.run(), objective

    def run(self, model_path, data_path, out, cfg: GRPOConfig, **kwargs) -> dict:
        """Stage.run, then the plot of reward, accuracy and response length through training."""
        from pathlib import Path

        from posttrain.curves import plot_training_curves

        prov = super().run(model_path, data_path, out, cfg, **kwargs)
        lines = _read_metrics(Path(out))
        if len([m for m in lines if "reward" in m]) > 1:
            plot_training_curves(lines, Path(out) / "training_curves.png", f"GRPO on {Path(str(data_path)).name}")
        return prov

    def finish(self, model: ActorCritic, tok, cfg: GRPOConfig):
        policy = finalize_model(model.policy, cfg.model)
        stop_generation_at_end_of_turn(policy, tok)
        return policy

    # ------------------------------------------------------------ one iteration's maths

    def _verifier(self, name: str):
        self._verifiers = getattr(self, "_verifiers", {})
        if name not in self._verifiers:
            self._verifiers[name] = get_verifier(name)
        return self._verifiers[name]

    @torch.no_grad()
    def score(self, loop: RLLoop, rollouts: list[Rollout], it: int = 0, times: dict | None = None,
              track: bool = False) -> list[Rollout]:
        """Reward each response; for a training batch, also the group statistics and dynamic sampling."""
        self._reward(loop, rollouts)
        if track:
            return rollouts
        o, g = loop.cfg.rl, loop.group_size
        rewards = torch.tensor([r.proxy for r in rollouts])
        flat = zero_variance_groups(rewards, g) if g > 1 else torch.zeros(len(rollouts), dtype=torch.bool)
        stats = self._batch_stats(loop, rollouts)
        stats["zero_variance_share"] = float(flat.float().mean())
        kept = rollouts
        if o.dynamic_sampling != "off" and g > 1:
            kept = [r for i, r in enumerate(rollouts) if not flat[i // g]]
            if o.dynamic_sampling == "resample":
                kept = self._refill(loop, kept, it, times)
            if not kept:  # nothing informative at all: the update sees zero advantages, as without filtering
                kept = rollouts
            stats["groups_kept"] = len(kept) // g
        self._stats = stats
        return kept

    def _reward(self, loop: RLLoop, rollouts: list[Rollout]) -> None:
        cfg = loop.cfg
        errors = 0
        per = {}
        for r in rollouts:
            spec = {**r.prompt.meta, **{k: v for k, v in r.prompt.fields.items() if k not in ("verifier", "tools")}}
            total, first = 0.0, None
            for name in _verifier_names(r.prompt, cfg):
                result, error = run_verifier(self._verifier(name), r.text, spec)
                errors += error is not None
                weight = cfg.reward.format_weight if name == FORMAT_VERIFIER else 1.0
                total += weight * result.score
                per.setdefault(name, []).append(result.score)
                if first is None:
                    first = result.score
            r.proxy, r.correct = total, None if first is None else first >= 1.0
        if loop.reward is not None:
            extra = loop.reward([r.prompt.messages for r in rollouts], [r.text for r in rollouts],
                                [r.prompt.meta for r in rollouts])
            for r, x in zip(rollouts, extra):
                r.proxy += float(x)
        if cfg.reward.overlong_buffer:
            lengths = torch.tensor([sum(r.response_mask) for r in rollouts])
            penalty = dapo_overlong_penalty(lengths, cfg.rollout.max_new_tokens, cfg.reward.overlong_buffer)
            for r, p in zip(rollouts, penalty.tolist()):
                r.proxy += p
        for r in rollouts:
            r.score = r.proxy
        loop.add_gold(rollouts)
        self._reward_stats = {f"reward_{k}": _mean(v) for k, v in per.items()} | {"verifier_errors": errors}

    def verifier_means(self) -> dict[str, float]:
        """Each verifier's mean score over the rows that name it, in the last scored batch (reward_numeric, ...):
        with refusal rows mixed into arithmetic, the first-verifier accuracy alone would blend the two."""
        return {k: v for k, v in getattr(self, "_reward_stats", {}).items() if k.startswith("reward_")}

    def _batch_stats(self, loop: RLLoop, rollouts: list[Rollout]) -> dict:
        g = loop.group_size
        stats = dict(self._reward_stats)
        stats["tool_calls"] = _mean([r.tool_calls for r in rollouts])
        if all(r.correct is not None for r in rollouts):
            groups = [rollouts[i:i + g] for i in range(0, len(rollouts), g)]
            stats["pass@1"] = _mean([float(r.correct) for r in rollouts])
            stats[f"pass@{g}"] = _mean([pass_at_k(g, sum(r.correct for r in grp), g) for grp in groups])
        return stats

    def _refill(self, loop: RLLoop, kept: list[Rollout], it: int, times: dict | None) -> list[Rollout]:
        """DAPO's dynamic sampling: draw more prompts until prompts_per_step informative groups are in hand."""
        import time

        cfg, g = loop.cfg, loop.group_size
        want = cfg.rollout.prompts_per_step
        rng = random.Random(cfg.train.seed * 104729 + it)
        start = time.perf_counter()
        for round_ in range(cfg.rl.resample_rounds):
            missing = want - len(kept) // g
            if missing <= 0:
                break
            prompts = rng.sample(loop.data.train, min(len(loop.data.train), missing))
            more = loop.sample(prompts, seed=cfg.train.seed * 7919 + it + 1_000_003 * (round_ + 1), n=g)
            self._reward(loop, more)
            rewards = torch.tensor([r.proxy for r in more])
            flat = zero_variance_groups(rewards, g)
            kept = kept + [r for i, r in enumerate(more) if not flat[i // g]]
        if times is not None:
            times["generate_more"] = time.perf_counter() - start
        return kept[:want * g]

    def advantages(self, loop: RLLoop, rollouts: list[Rollout]) -> dict[str, float]:
        """One advantage per response (losses_grpo estimators), written to every trained token of it."""
        o, g = loop.cfg.rl, loop.group_size
        rewards = torch.tensor([r.score for r in rollouts], dtype=torch.float32)
        if o.advantage == "rloo" and g > 1:
            adv = rloo_advantages(rewards, g)
        elif o.advantage == "batch":
            adv = batch_baseline_advantages(rewards, normalize=len(rollouts) > 1)
        else:
            adv = group_advantages(rewards, g, o.scale_rewards)
        for r, a in zip(rollouts, adv.tolist()):
            r.advantages = [a] * r.trained_tokens
        return dict(self._stats)

    def update_kl_coef(self, loop: RLLoop, kl: float, n: int) -> None:
        """β is fixed in GRPO."""


def _verifier_names(row, cfg: GRPOConfig) -> list[str]:
    if cfg.reward.verifiers:
        return list(cfg.reward.verifiers)
    v = row.fields.get("verifier")
    return [] if v is None else [v] if isinstance(v, str) else list(v)


def _tool_names(rows, cfg: GRPOConfig) -> list[str]:
    """The tools the run offers: tools.names, else every tool any row names (resolved, so bad names stop early)."""
    from posttrain.tools import resolve_tools

    names = list(cfg.tools.names) if cfg.tools.names else list(dict.fromkeys(
        t for r in rows for t in (r.fields.get("tools") or [])))
    resolve_tools(names)
    return names


def _read_metrics(out) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


STAGE = GRPO()
