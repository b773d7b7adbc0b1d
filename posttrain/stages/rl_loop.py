"""The online RL loop: sample rollouts, score them, annotate them, update the policy, track, checkpoint.

What differs between RL stages (how scores become per-token advantages, how the KL weight moves)
is the stage's: it supplies `score(loop, rollouts)` (which may return a filtered or grown list),
`advantages(loop, rollouts)` and `update_kl_coef(loop, kl, n)`, says which per-token annotations
it needs (`annotations(cfg)`: old_logps, ref_logps, old_values), may give the engine tools
(`tool_runner(cfg, tok, data)`), and its objective turns annotated rollouts into a loss. Samples
per prompt are `cfg.rollout.group_size` when the config has one (GRPO), else 1. The loop
owns the rest: prompt order, the engine, log-probs under the sampling policy and the reference,
value estimates, optimizer steps through the shared Trainer (training.trainer), one metrics line
per iteration with its time split, the over-optimisation track on held-out prompts, checkpoints
at iteration boundaries and Ctrl-C.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext

import torch

from posttrain.data.prompts import PromptRow
from posttrain.engine import Engine, SamplingParams
from posttrain.errors import TrainingInterrupted
from posttrain.modeling.forward import policy_outputs, token_values
from posttrain.models import autocast
from posttrain.rewards import gold_reward, load_reward
from posttrain.rollouts import Rollout, group_batch, rollout_batch, unflatten
from posttrain.training.trainer import TrainResult, peak_memory_mb

TRACK_SEED = 424242  # the held-out prompts are answered with the same sampling noise at every measurement


class ActorCritic(torch.nn.Module):
    """The trained modules of an RL stage: the policy, and a value model or a value head on the policy's trunk."""

    def __init__(self, policy, value=None, value_head=None):
        super().__init__()
        self.policy, self.value, self.value_head = policy, value, value_head


class RLLoop:
    def __init__(self, stage, model: ActorCritic, tok, data, cfg, trainer, ref, iterations: int, device, dtype,
                 progress: bool):
        self.stage, self.model, self.tok, self.data, self.cfg = stage, model, tok, data, cfg
        self.trainer, self.ref, self.iterations = trainer, ref, iterations
        self.device, self.dtype, self.progress = device, dtype, progress
        self.pad_id = tok.pad_token_id
        tools = stage.tool_runner(cfg, tok, data) if hasattr(stage, "tool_runner") else None
        self.engine = Engine(model.policy, tok, batch_size=cfg.rollout.batch_size, dtype=dtype, overlong_prompt="truncate",
                             tools=tools)
        self.group_size = getattr(cfg.rollout, "group_size", 1)
        self.needs = stage.annotations(cfg) if hasattr(stage, "annotations") else ("old_logps", "ref_logps", "old_values")
        self.reward = load_reward(cfg.reward.model, device=str(device), dtype=dtype) if cfg.reward.model else None
        metas = [r.meta for r in data.train + data.eval]
        self.gold = gold_reward if cfg.reward.track_gold and metas and all("task" in m for m in metas) else None
        self.extra = trainer.state.extra  # checkpointed with the weights: the loop resumes where it stopped
        self.extra.setdefault("iteration", 0)
        self.extra.setdefault("curve", [])
        self.kl_coef = self.extra.get("kl_coef", getattr(cfg.rl, "kl_coef", getattr(cfg.rl, "beta", 0.0)))

    # ------------------------------------------------------------ pieces

    def prompts_for(self, iteration: int) -> list[PromptRow]:
        """The iteration's prompts: consecutive slices of a seeded shuffle, reshuffled each pass."""
        rows, b = self.data.train, self.cfg.rollout.prompts_per_step
        perms: dict[int, list[int]] = {}  # one shuffle per pass over the prompts this iteration touches
        out = []
        for k in range(iteration * b, (iteration + 1) * b):
            epoch, i = divmod(k, len(rows))
            if epoch not in perms:
                perms[epoch] = list(range(len(rows)))
                random.Random(self.cfg.train.seed * 1000003 + epoch).shuffle(perms[epoch])
            out.append(rows[perms[epoch][i]])
        return out

    def sample(self, prompts: list[PromptRow], seed: int, n: int = 1) -> list[Rollout]:
        """n responses per prompt, prompt-major (the n of prompt i at i * n .. i * n + n - 1)."""
        r = self.cfg.rollout
        params = SamplingParams(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                                top_k=r.top_k, seed=seed, n=n)
        done = self.engine.chat([p.messages for p in prompts], params, labels=[f"prompt line {p.line}" for p in prompts])
        return [Rollout(prompts[i // n], c.prompt_ids, c.token_ids, c.mask, c.text, c.finish_reason == "stop",
                        tool_calls=len(c.turns)) for i, c in enumerate(done)]

    def add_gold(self, rollouts: list[Rollout]) -> None:
        if self.gold is not None:
            scores = self.gold([r.prompt.messages for r in rollouts], [r.text for r in rollouts],
                               [r.prompt.meta for r in rollouts])
            for r, g in zip(rollouts, scores):
                r.gold = g

    @torch.no_grad()
    def annotate(self, rollouts: list[Rollout], times: dict | None = None, needs: tuple[str, ...] | None = None) -> None:
        """Fill old_logps (the sampling policy), ref_logps and old_values (those of `needs`, default the
        stage's), one packed forward per chunk each."""
        times = {} if times is None else times
        needs = self.needs if needs is None else needs
        if not needs:
            return
        m, bs = self.model, self.cfg.train.batch_size
        m.eval()
        for i in range(0, len(rollouts), bs):
            chunk = rollouts[i:i + bs]
            # The update's layout (GRPO's shared prompts where it has them), so both passes round alike.
            layout = group_batch if getattr(self.trainer.objective, "share_prompts", False) else rollout_batch
            batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                     for k, v in layout(chunk, self.pad_id).items()}
            temp, flats = self.cfg.rollout.temperature, {}
            with autocast(self.dtype, self.device):
                if "old_logps" in needs or ("old_values" in needs and m.value_head is not None):
                    t = time.perf_counter()
                    out = policy_outputs(m.policy, batch, value_head=m.value_head, temperature=temp)
                    flats["old_logps"], seq = out["logps"], out["sequence"]
                    if m.value_head is not None:
                        flats["old_values"] = out["values"]
                    times["policy"] = times.get("policy", 0.0) + time.perf_counter() - t
                if "ref_logps" in needs:
                    t = time.perf_counter()
                    off = m.policy.disable_adapter() if self.ref is None else nullcontext()
                    with off:
                        out = policy_outputs(self.ref or m.policy, batch, temperature=temp)
                    flats["ref_logps"], seq = out["logps"], out["sequence"]
                    times["reference"] = times.get("reference", 0.0) + time.perf_counter() - t
                if "old_values" in needs:  # a value head's estimates came with the policy's pass: no time of its own
                    times.setdefault("value", 0.0)
                if "old_values" in needs and m.value is not None:
                    t = time.perf_counter()
                    flats["old_values"] = token_values(m.value, batch)
                    times["value"] = times.get("value", 0.0) + time.perf_counter() - t
            for name, flat in flats.items():
                if name not in needs:
                    continue
                grid = unflatten(flat.float(), seq, batch).cpu()
                for j, r in enumerate(chunk):
                    setattr(r, name, grid[j, :r.trained_tokens].tolist())
        m.train()

    # ------------------------------------------------------------ one iteration

    def iteration(self, it: int) -> dict:
        times = {}
        t = time.perf_counter()
        rollouts = self.sample(self.prompts_for(it), seed=self.cfg.train.seed * 7919 + it, n=self.group_size)
        times["generate"] = time.perf_counter() - t
        t = time.perf_counter()
        rollouts = self.stage.score(self, rollouts, it=it, times=times) or rollouts
        times["reward"] = time.perf_counter() - t - times.get("generate_more", 0.0)
        self.annotate(rollouts, times)
        stats = self.stage.advantages(self, rollouts)
        t = time.perf_counter()
        steps = self.update(rollouts, random.Random(self.cfg.train.seed * 15485863 + it))
        times["update"] = time.perf_counter() - t
        kl_coef = self.kl_coef
        self.stage.update_kl_coef(self, stats.get("kl", 0.0), len(rollouts))
        n = max(1, len(steps))
        keys = dict.fromkeys(k for s in steps for k in s.metrics)
        line = {"step": it + 1, "loss": sum(s.loss for s in steps) / n, "lr": steps[-1].lr,
                "grad_norm": sum(s.grad_norm for s in steps) / n,
                "reward": _mean([r.proxy for r in rollouts]), "score": _mean([r.score for r in rollouts]),
                **({"gold": _mean([r.gold for r in rollouts])} if self.gold else {}),
                "kl_coef": kl_coef,
                "response_length": _mean([len(r.response_ids) for r in rollouts]),
                "no_eos": _mean([0.0 if r.finished else 1.0 for r in rollouts]),
                **{k: sum(s.metrics.get(k, 0.0) for s in steps) / n for k in keys},
                **stats,
                "tokens": self.trainer.state.tokens,
                **{f"time_{k}": round(v, 3) for k, v in times.items()}}
        return line

    def update(self, rollouts: list[Rollout], rng: random.Random) -> list:
        o, bs = self.cfg.rl, self.cfg.train.batch_size
        steps = []
        self.model.train()
        # Responses to one prompt side by side (by first appearance): micro-batches then hold whole groups,
        # whose prompt a branched batch lays out once. A minibatch's loss is a sum: the order leaves it alone.
        first: dict[int, int] = {}
        for r in rollouts:
            first.setdefault(id(r.prompt), len(first))
        for _ in range(getattr(o, "epochs", getattr(o, "iterations", 1))):  # PPO epochs, GRPO μ
            order = list(range(len(rollouts)))
            rng.shuffle(order)
            size = math.ceil(len(order) / o.minibatches)
            for k in range(0, len(order), size):
                items = sorted((rollouts[i] for i in order[k:k + size]), key=lambda r: first[id(r.prompt)])
                steps.append(self.trainer.step([items[j:j + bs] for j in range(0, len(items), bs)]))
        return steps

    @torch.no_grad()
    def track(self, it: int) -> dict | None:
        """Proxy reward, gold score and KL(π || π_ref) of the policy on the held-out prompts."""
        held = self.data.eval[:self.cfg.track.prompts]
        if not held:
            return None
        rollouts = self.sample(held, seed=TRACK_SEED)
        rollouts = self.stage.score(self, rollouts, track=True) or rollouts
        self.annotate(rollouts, needs=("old_logps", "ref_logps"))
        # Σ_t log π(y_t) - log π_ref(y_t) over a response sampled from π: an unbiased estimate of the
        # sequence-level KL(π || π_ref); its mean over prompts is the curve's KL, and d = sqrt(KL).
        kl = _mean([sum(a - b for a, b in zip(r.old_logps, r.ref_logps)) for r in rollouts])
        point = {"iteration": it, "kl": kl, "d": math.sqrt(max(kl, 0.0)), "proxy": _mean([r.proxy for r in rollouts]),
                 "response_length": _mean([len(r.response_ids) for r in rollouts]),
                 "no_eos": _mean([0.0 if r.finished else 1.0 for r in rollouts])}
        if any(r.correct is not None for r in rollouts):
            point["accuracy"] = _mean([None if r.correct is None else float(r.correct) for r in rollouts])
        if self.gold:
            point["gold"] = _mean([r.gold for r in rollouts])
        verifier_means = getattr(self.stage, "verifier_means", None)  # GRPO: each verifier's mean score
        return point | (verifier_means() if verifier_means else {})

    # ------------------------------------------------------------ the loop

    def run(self) -> TrainResult:
        from tqdm.auto import tqdm

        st, cfg, every = self.trainer.state, self.cfg, self.cfg.track.every
        start, start_tokens = time.perf_counter(), st.tokens
        if every and not self.extra["curve"]:
            self.extra["curve"].append(self.track(0))
        bar = tqdm(total=self.iterations, initial=self.extra["iteration"], desc=self.stage.name,
                   disable=not self.progress, mininterval=1.0, dynamic_ncols=True)
        try:
            while self.extra["iteration"] < self.iterations:
                it = self.extra["iteration"]
                line = self.iteration(it)
                self.extra["iteration"], self.extra["kl_coef"] = it + 1, self.kl_coef
                if (it + 1) % cfg.train.log_every == 0 or it + 1 == self.iterations:
                    st.metrics_lines.append(line)
                if every and ((it + 1) % every == 0 or it + 1 == self.iterations):
                    point = self.track(it + 1)
                    if point:
                        self.extra["curve"].append(point)
                        st.metrics_lines.append({"step": it + 1, **{f"track_{k}": v for k, v in point.items()}})
                if cfg.train.save_every and (it + 1) % cfg.train.save_every == 0 and it + 1 < self.iterations:
                    self.trainer.save_checkpoint()
                bar.set_postfix(reward=f"{line['reward']:.3f}", kl=f"{line.get('kl', 0.0):.2f}", refresh=False)
                bar.update(1)
        except KeyboardInterrupt:
            bar.close()
            latest = self.trainer.latest_checkpoint()
            done = self.extra["iteration"]
            where = f"; the last checkpoint is {latest}" if latest else "; no checkpoint was written yet"
            raise TrainingInterrupted(f"interrupted (Ctrl-C) in iteration {done + 1} of {self.iterations}{where}.",
                                      done, latest) from None
        bar.close()
        wall = time.perf_counter() - start
        lines = [m for m in st.metrics_lines if "loss" in m]
        return TrainResult(steps=self.extra["iteration"], train_loss=lines[-1]["loss"] if lines else None,
                           eval_loss=None, tokens=st.tokens, tokens_per_s=(st.tokens - start_tokens) / max(wall, 1e-9),
                           wall_time_s=wall, peak_memory_mb=peak_memory_mb(self.device),
                           metrics_lines=st.metrics_lines, extra=self.summary(lines))

    def summary(self, lines: list[dict]) -> dict:
        curve = [p for p in self.extra["curve"] if p]
        out = {}
        if lines and "pass@1" in lines[0]:
            out |= {"pass@1_first": round(lines[0]["pass@1"], 4), "pass@1_last": round(lines[-1]["pass@1"], 4)}
        if lines:
            out |= {"reward_first": round(lines[0]["reward"], 4), "reward_last": round(lines[-1]["reward"], 4),
                    **({"kl_last": round(lines[-1]["kl"], 4)} if "kl" in lines[-1] else {})}
        if curve:
            out["overoptimisation"] = {"points": curve, **rl_fits(curve)}
            if "gold" in curve[0]:
                best = max(curve, key=lambda p: p["gold"])
                out |= {"heldout_gold_start": round(curve[0]["gold"], 4), "heldout_gold_end": round(curve[-1]["gold"], 4),
                        "heldout_gold_best": round(best["gold"], 4), "heldout_gold_best_iteration": best["iteration"]}
            if "accuracy" in curve[0]:
                out |= {"heldout_accuracy_start": round(curve[0]["accuracy"], 4),
                        "heldout_accuracy_end": round(curve[-1]["accuracy"], 4),
                        "heldout_accuracy_best": round(max(p["accuracy"] for p in curve), 4)}
            for key in (k for k in curve[0] if k.startswith("reward_")):  # per verifier, e.g. reward_numeric
                out |= {f"heldout_{key}_start": round(curve[0][key], 4), f"heldout_{key}_end": round(curve[-1][key], 4)}
            out |= {"heldout_proxy_start": round(curve[0]["proxy"], 4), "heldout_proxy_end": round(curve[-1]["proxy"], 4),
                    "heldout_kl_end": round(curve[-1]["kl"], 4)}
        return out


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def rl_fits(points: list[dict]) -> dict:
    """Gao et al.'s RL form R(d) = d (a - b log d) fitted to the changes of proxy and gold from the first point."""
    from posttrain.errors import PosttrainError
    from posttrain.overoptimisation import fit_rl

    out = {}
    d = [p["d"] for p in points]
    for key in ("proxy", "gold"):
        if key in points[0]:
            try:
                out[f"{key}_fit"] = fit_rl(d, [p[key] - points[0][key] for p in points]).to_dict()
            except PosttrainError:  # fewer than two distinct d > 0: nothing to fit yet
                pass
    return out


def rl_curve(overoptimisation: dict, name: str):
    """The plot's series (overoptimisation.Curve) of an RL run's tracked points."""
    from posttrain.overoptimisation import Curve, FormFit

    points = overoptimisation["points"]
    fit = lambda key: FormFit.from_dict(overoptimisation[key]) if overoptimisation.get(key) else None  # noqa: E731
    gold = [p["gold"] - points[0]["gold"] for p in points] if "gold" in points[0] else None
    return Curve(name, [p["d"] for p in points], [p["proxy"] - points[0]["proxy"] for p in points], gold,
                 fit("proxy_fit"), fit("gold_fit"), labels=[f"it {p['iteration']}" for p in points])
