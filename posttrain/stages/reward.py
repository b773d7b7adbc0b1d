"""Reward model: a scalar head on the policy's trunk, trained on preference pairs with the Bradley-Terry loss.

    L = -(1/P) Σ log σ(r(x, y_c) - r(x, y_r) - m) + c · (1/P) Σ (r(x, y_c) + r(x, y_r))²

(losses_preference.bradley_terry_loss; m is the row's margin when loss.use_margin, c the
centering coefficient). The score is read at the last token of each chat, where transformers'
own ForSequenceClassification reads it, so the artifact is a plain
`AutoModelForSequenceClassification` with one label. Reported: held-out pairwise accuracy and
the distribution of held-out margins r_c - r_r.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.artifacts import data_record
from posttrain.config import opt
from posttrain.data.chat import ensure_chat_template
from posttrain.data.formats import load_dataset_rows
from posttrain.data.preferences import Pair, build_pairs
from posttrain.losses_preference import bradley_terry_loss
from posttrain.modeling.forward import sequence_scores
from posttrain.models import autocast
from posttrain.stages.base import Stage, StageData
from posttrain.stages.common import finalize_model, prepare_model, split_rows
from posttrain.training.config import ModelConfig, TrainConfig
from posttrain.training.objectives import PairObjective


@dataclass
class PreferenceDataConfig:
    """How a preference stage reads its pairs."""

    chat_template: str = opt("auto", "`auto` (the tokenizer's own, else posttrain's ChatML), `own` (error if missing), `default`, or a path to a .jinja file.")
    max_length: int = opt(1024, "Longest prompt + answer in tokens; longer pairs are dropped and counted. Also the packed row length.", ge=2)
    eval_data: str | None = opt(None, "Held-out pairs; when unset, `eval_fraction` of the training pairs is held out.")
    eval_fraction: float = opt(0.05, "Fraction of the pairs held out when `eval_data` is unset (0 = none).", ge=0, lt=1)
    limit: int | None = opt(None, "Use only the first N training rows; null = all.", ge=1)


@dataclass
class RewardOptions:
    """The reward model's loss."""

    use_margin: bool = opt(False, "Subtract each row's `margin` inside the sigmoid (Llama 2's margin loss).")
    center_coef: float = opt(0.0, "Weight of the centering term mean((r_c + r_r)^2) that keeps rewards near 0 (TRL's center_rewards_coefficient, e.g. 0.01).", ge=0)


def _reward_train() -> TrainConfig:
    return TrainConfig(lr=5e-5, batch_size=16, epochs=1.0, warmup_ratio=0.05)


@dataclass
class RewardConfig:
    """Reward model training on preference pairs (Bradley-Terry)."""

    model: ModelConfig = opt(help="Model options.", factory=ModelConfig)
    data: PreferenceDataConfig = opt(help="Data options.", factory=PreferenceDataConfig)
    loss: RewardOptions = opt(help="Loss options.", factory=RewardOptions)
    train: TrainConfig = opt(help="Optimisation options (batch_size counts pairs).", factory=_reward_train)


def read_preferences(tok, data_path, cfg) -> StageData:
    """Preference file (and eval file or split) -> pairs, with provenance records and counts."""
    template = ensure_chat_template(tok, cfg.data.chat_template)
    fmt, rows = load_dataset_rows(data_path, allowed=("preference",))
    records = [data_record(data_path, len(rows)) | {"format": fmt, "role": "train"}]
    if cfg.data.limit:
        rows = rows[: cfg.data.limit]
    if cfg.data.eval_data:
        _, eval_rows = load_dataset_rows(cfg.data.eval_data, allowed=("preference",))
        records.append(data_record(cfg.data.eval_data, len(eval_rows)) | {"role": "eval"})
    else:
        rows, eval_rows = split_rows(rows, cfg.data.eval_fraction, cfg.train.seed)
    train, stats = build_pairs(tok, rows, max_length=cfg.data.max_length, path=data_path)
    held = build_pairs(tok, eval_rows, max_length=cfg.data.max_length, path=cfg.data.eval_data or data_path)[0] if eval_rows else []
    return StageData(train, held, records, stats=stats.as_dict(), metrics={"chat_template": template},
                     summary={"pairs": stats.pairs, "held-out pairs": len(held), "dropped (too long)": stats.too_long,
                              "dropped (identical)": stats.identical})


class PairwiseReward(PairObjective):
    """The Bradley-Terry objective on packed pairs; units are pairs."""

    def rewards(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        scores = sequence_scores(model, batch, 2 * batch["n_pairs"])
        return scores[0::2], scores[1::2]

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        chosen, rejected = self.rewards(model, batch)
        margin = batch["margin"] if self.opts.use_margin else None
        n = batch["n_pairs"]
        loss = bradley_terry_loss(chosen, rejected, margin, self.opts.center_coef) * n  # a mean: the trainer wants a sum
        diff = (chosen - rejected).detach()
        return loss, {"accuracy": float((diff > 0).sum()), "margin": float(diff.sum()),
                      "reward_chosen": float(chosen.detach().sum()), "reward_rejected": float(rejected.detach().sum())}

    @torch.no_grad()
    def margins(self, model, pairs: list[Pair], batch_size: int, device, dtype) -> torch.Tensor:
        """r_c - r_r of every pair, in order."""
        model.eval()
        out = []
        for i in range(0, len(pairs), batch_size):
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.collate(pairs[i:i + batch_size]).items()}
            with autocast(dtype, device):
                c, r = self.rewards(model, batch)
            out.append((c - r).float().cpu())
        model.train()
        return torch.cat(out) if out else torch.zeros(0)


def margin_summary(margins: torch.Tensor) -> dict:
    """Held-out pairwise accuracy (ties count as wrong) and the margin distribution."""
    if margins.numel() == 0:
        return {}
    q = torch.quantile(margins, torch.tensor([0.1, 0.5, 0.9]))
    return {"heldout_accuracy": round(float((margins > 0).float().mean()), 4), "heldout_pairs": margins.numel(),
            "margin": {"mean": round(float(margins.mean()), 4), "p10": round(float(q[0]), 4),
                       "median": round(float(q[1]), 4), "p90": round(float(q[2]), 4)}}


class Reward(Stage):
    name = "reward"
    order = 30
    policy = False  # a recipe's next stages keep the policy before it; an RL stage names the reward model
    gate_metrics = (*Stage.gate_metrics, "heldout_accuracy")
    help = "Train a reward model (scalar head, Bradley-Terry loss) on preference pairs."
    description = """Reward model: the model's trunk with a scalar head, trained so that the chosen answer
of each pair scores above the rejected one (Bradley-Terry; optional margin and centering
terms). Both answers of a pair are packed into one forward pass. Reports held-out pairwise
accuracy and the margin distribution. The artifact loads in plain transformers as
AutoModelForSequenceClassification (one label), and RL stages and `posttrain bon` take it
as their reward.

Data: rows {"prompt", "chosen", "rejected"} (strings or message lists), optional "margin".
  posttrain reward --model runs/sft --data world/preferences.jsonl --out runs/rm
All options: docs/options.md (section reward)."""
    data_help = "Preference pairs: .jsonl/.json/.parquet or a datasets directory with prompt/chosen/rejected rows."
    config = RewardConfig

    def read_data(self, tok, data_path, cfg: RewardConfig) -> StageData:
        return read_preferences(tok, data_path, cfg)

    def load(self, model_path, cfg: RewardConfig, tok):
        model, _, device, dtype = prepare_model(model_path, cfg.model, tok, head="score")
        return model, device, dtype

    def objective(self, model, tok, data, cfg: RewardConfig, device, dtype, progress: bool = True):
        return PairwiseReward(tok.pad_token_id, cfg.data.max_length, cfg.loss)

    def result_metrics(self, model, result, data, objective, device, dtype) -> dict:
        return margin_summary(objective.margins(model, data.eval, 16, device, dtype))

    def finish(self, model, tok, cfg: RewardConfig):
        model = finalize_model(model, cfg.model)
        model.config.pad_token_id = tok.pad_token_id
        return model


STAGE = Reward()
