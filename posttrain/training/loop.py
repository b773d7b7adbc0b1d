"""The training loop shared by every gradient stage (pretrain, SFT, ...).

It runs micro-batches of packed rows through the model, averages the loss over
target tokens across the whole optimizer step (so gradient accumulation gives
the same gradient as one big batch), clips, steps AdamW on a warmup + cosine
schedule, logs, evaluates, checkpoints, resumes, and refuses to continue past
a non-finite loss.
"""

from __future__ import annotations

import json
import math
import random
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from posttrain.artifacts import atomic_dir
from posttrain.data.packing import PackedRow, attention_within_examples, collate
from posttrain.errors import NonFiniteLossError, PosttrainError
from posttrain.losses import shift_targets, token_nll_sum
from posttrain.models import autocast
from posttrain.training.config import TrainConfig

# Model families whose logits are exactly lm_head(final hidden state); for these we
# apply the head to target positions only, which skips most of the vocabulary matmul.
_PLAIN_HEAD = {"llama", "qwen2", "qwen3", "mistral", "phi3", "olmo2", "smollm3"}


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_ratio."""
    warm = max(1, int(round(cfg.warmup_ratio * total))) if cfg.warmup_ratio > 0 else 0
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos)


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def nll_and_count(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL over target tokens of a batch, and the number of targets."""
    ids, mask, pos = batch["input_ids"], batch["loss_mask"], batch["position_ids"]
    targets, weights = shift_targets(ids, mask)
    sel = weights.bool()
    n = int(sel.sum())
    base = _base(model)
    if getattr(base.config, "model_type", None) in _PLAIN_HEAD:
        with attention_within_examples(base, pos) as extra:  # attention per example, not over the whole row
            hidden = base.get_decoder()(input_ids=ids, position_ids=pos, use_cache=False, **extra).last_hidden_state
        logits = base.get_output_embeddings()(hidden[:, :-1][sel])
    else:
        logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits[:, :-1][sel]
    return token_nll_sum(logits, targets[sel]), n


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    metrics_lines: list = field(default_factory=list)


@dataclass
class TrainResult:
    steps: int
    train_loss: float | None
    eval_loss: float | None
    tokens: int
    tokens_per_s: float
    wall_time_s: float
    peak_memory_mb: float
    metrics_lines: list


class Trainer:
    def __init__(self, model, train_rows: list[PackedRow], cfg: TrainConfig, *, device, dtype: str, pad_id: int,
                 eval_rows: list[PackedRow] | None = None, ckpt_dir: str | Path | None = None, desc: str = "train",
                 progress: bool = True):
        if not train_rows:
            raise PosttrainError("no training rows: the data produced nothing to train on.")
        self.model, self.rows, self.cfg = model, train_rows, cfg
        self.device, self.dtype, self.pad_id = device, dtype, pad_id
        self.eval_rows = eval_rows or []
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir else None
        self.desc, self.progress = desc, progress
        self.micro_per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
        steps_per_epoch = max(1, math.ceil(self.micro_per_epoch / cfg.grad_accum))
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * steps_per_epoch))
        decay, no_decay = [], []
        for n, p in model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 else decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=True,
        )
        self.state = TrainState()
        self._perm_cache: dict[int, list[int]] = {}

    # ------------------------------------------------------------ data order

    def _micro_batch(self, index: int) -> list[PackedRow]:
        """Micro-batch number `index` of the deterministic stream (a fresh shuffle each epoch)."""
        epoch, k = divmod(index, self.micro_per_epoch)
        if epoch not in self._perm_cache:
            perm = list(range(len(self.rows)))
            random.Random(self.cfg.seed * 1000003 + epoch).shuffle(perm)
            self._perm_cache = {epoch: perm}
        perm = self._perm_cache[epoch]
        bs = self.cfg.batch_size
        return [self.rows[i] for i in perm[k * bs:(k + 1) * bs]]

    def _to_device(self, rows):
        return {k: v.to(self.device) for k, v in collate(rows, self.pad_id).items()}

    # ------------------------------------------------------------ checkpoints

    def _trainable(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().contiguous().cpu() for n, p in self.model.named_parameters() if p.requires_grad}

    def save_checkpoint(self, keep: int = 2) -> Path:
        from safetensors.torch import save_file

        assert self.ckpt_dir is not None
        target = self.ckpt_dir / f"step-{self.state.step:06d}"
        with atomic_dir(target) as tmp:
            save_file(self._trainable(), str(tmp / "trainable.safetensors"))
            torch.save({"optimizer": self.optimizer.state_dict(), "rng": torch.get_rng_state()}, tmp / "optimizer.pt")
            (tmp / "state.json").write_text(json.dumps(self.state.__dict__))
        for old in sorted(self.ckpt_dir.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def latest_checkpoint(self) -> Path | None:
        if not self.ckpt_dir or not self.ckpt_dir.exists():
            return None
        done = sorted(p for p in self.ckpt_dir.glob("step-*") if (p / "state.json").exists())
        return done[-1] if done else None

    def resume(self) -> int:
        """Load the latest checkpoint if there is one; return the step it resumes at."""
        from safetensors.torch import load_file

        ckpt = self.latest_checkpoint()
        if ckpt is None:
            return 0
        params = dict(self.model.named_parameters())
        for n, t in load_file(str(ckpt / "trainable.safetensors")).items():
            if n not in params:
                raise PosttrainError(f"checkpoint {ckpt} does not match this model (unknown tensor {n}); start without --resume.")
            params[n].data.copy_(t.to(params[n].device))
        blob = torch.load(ckpt / "optimizer.pt", weights_only=True, map_location=self.device)
        self.optimizer.load_state_dict(blob["optimizer"])
        torch.set_rng_state(blob["rng"].cpu())
        self.state = TrainState(**json.loads((ckpt / "state.json").read_text()))
        return self.state.step

    # ------------------------------------------------------------ loop

    @torch.no_grad()
    def evaluate(self) -> float | None:
        if not self.eval_rows:
            return None
        self.model.eval()
        total, n = 0.0, 0
        bs = self.cfg.batch_size
        for i in range(0, len(self.eval_rows), bs):
            batch = self._to_device(self.eval_rows[i:i + bs])
            with autocast(self.dtype, self.device):
                s, c = nll_and_count(self.model, batch)
            total, n = total + float(s), n + c
        self.model.train()
        return total / max(1, n)

    def _stop_non_finite(self, what: str, value: float):
        saved = None
        if self.ckpt_dir is not None:
            # The weights have not been updated by this step yet, so they are the last good ones.
            saved = self.save_checkpoint()
        where = (f"The last good weights (after step {self.state.step}) are saved in {saved}; fix the cause and "
                 "rerun with --resume." if saved else "No checkpoint directory was configured, so nothing was saved.")
        raise NonFiniteLossError(
            f"step {self.state.step + 1}: {what} is {value}. Training stopped before applying this update. {where} "
            "Common causes: a learning rate that is too high (lower train.lr), or fp16 overflow."
        )

    def fit(self) -> TrainResult:
        from tqdm.auto import tqdm

        cfg, model = self.cfg, self.model
        model.train()
        start = time.perf_counter()
        start_tokens = self.state.tokens
        bar = tqdm(total=self.total_steps, initial=self.state.step, desc=self.desc, disable=not self.progress,
                   mininterval=1.0, dynamic_ncols=True)
        recent: list[float] = []
        while self.state.step < self.total_steps:
            step = self.state.step
            lr = lr_at(step, self.total_steps, cfg)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            micro_rows = [self._micro_batch(step * cfg.grad_accum + j) for j in range(cfg.grad_accum)]
            micro = [self._to_device(rows) for rows in micro_rows]
            self.state.tokens += sum(len(r) for rows in micro_rows for r in rows)  # real tokens, no padding
            total_targets = sum(int(shift_targets(b["input_ids"], b["loss_mask"])[1].sum()) for b in micro)
            loss_value = 0.0
            for b in micro:
                with autocast(self.dtype, self.device):
                    nll, _ = nll_and_count(model, b)
                loss = nll / max(1, total_targets)
                if not torch.isfinite(loss):
                    self.optimizer.zero_grad(set_to_none=True)
                    self._stop_non_finite("the loss", float(loss))
                loss.backward()
                loss_value += float(loss.detach())
            params = [p for p in model.parameters() if p.requires_grad]
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
            if not torch.isfinite(gnorm):
                self.optimizer.zero_grad(set_to_none=True)
                self._stop_non_finite("the gradient norm", float(gnorm))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.state.step += 1
            recent.append(loss_value)
            elapsed = time.perf_counter() - start
            tps = (self.state.tokens - start_tokens) / max(elapsed, 1e-9)
            bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{tps:,.0f}", refresh=False)
            bar.update(1)
            s = self.state.step
            if s % max(1, cfg.log_every) == 0 or s == self.total_steps:
                self.state.metrics_lines.append({"step": s, "loss": sum(recent) / len(recent), "lr": lr,
                                                 "grad_norm": float(gnorm), "tokens": self.state.tokens,
                                                 "tokens_per_s": round(tps, 1)})
                recent = []
            if cfg.eval_every and s % cfg.eval_every == 0 and s < self.total_steps:
                self.state.metrics_lines.append({"step": s, "eval_loss": self.evaluate()})
            if self.ckpt_dir is not None and cfg.save_every and s % cfg.save_every == 0:
                self.save_checkpoint()
        bar.close()
        wall = time.perf_counter() - start
        eval_loss = self.evaluate()
        if eval_loss is not None:
            self.state.metrics_lines.append({"step": self.state.step, "eval_loss": eval_loss})
        train_losses = [m["loss"] for m in self.state.metrics_lines if "loss" in m]
        return TrainResult(
            steps=self.state.step,
            train_loss=train_losses[-1] if train_losses else None,
            eval_loss=eval_loss,
            tokens=self.state.tokens - start_tokens,
            tokens_per_s=(self.state.tokens - start_tokens) / max(wall, 1e-9),
            wall_time_s=wall,
            peak_memory_mb=peak_memory_mb(self.device),
            metrics_lines=self.state.metrics_lines,
        )


def peak_memory_mb(device) -> float:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
