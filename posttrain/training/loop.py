"""The training loop shared by every gradient stage (pretrain, SFT, ...).

It runs micro-batches of packed rows through the model, averages the loss over
target tokens across the whole optimizer step (so gradient accumulation gives
the same gradient as one big batch), clips, steps AdamW on a warmup + cosine
schedule, logs, evaluates, checkpoints, resumes, and refuses to continue past
a non-finite loss or an update that leaves a weight non-finite or huge. Checkpoints are
written only when every trained weight is finite and bounded, so the one a failure
names is always safe to resume from.

Ctrl-C (KeyboardInterrupt) stops the run with a checkpoint of the last finished step
(when its weights pass the same check): a step interrupted half way is undone (its
gradients, token count and random state), and the signal is held back while an update
and its bookkeeping are applied, so a checkpoint never holds half an optimizer step.
"""

from __future__ import annotations

import json
import math
import random
import resource
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from posttrain.artifacts import atomic_dir
from posttrain.data.packing import PackedRow, attention_within_examples, collate
from posttrain.errors import NonFiniteLossError, PosttrainError, TrainingInterrupted
from posttrain.losses import shift_targets, token_nll_sum
from posttrain.models import autocast
from posttrain.training.config import TrainConfig
from posttrain.training.resume import RUN_FILE, completed_checkpoints

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


def max_abs(tensors) -> float:
    """Largest |w| over `tensors`: nan (or inf) when any entry is."""
    peaks = [t.detach().abs().max().float() for t in tensors if t.numel()]
    return float(torch.stack(peaks).max()) if peaks else 0.0


def weights_pass(peak: float, limit: float) -> bool:
    return math.isfinite(peak) and peak <= limit


def lower_lr(lr: float) -> str:
    """A learning rate to suggest after a divergence: a tenth of lr, and at most 1e-4."""
    x = min(lr / 10, 1e-4) if math.isfinite(lr) and lr > 0 else 1e-4
    return f"{x:.0e}"


@contextmanager
def ctrl_c_held():
    """Hold back Ctrl-C (SIGINT) until the block ends, then raise it: the block is never half done."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught and previous is signal.default_int_handler:
        raise KeyboardInterrupt
    if caught and callable(previous):
        previous(signal.SIGINT, None)


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    metrics_lines: list = field(default_factory=list)
    # The logging window in progress: kept in checkpoints, so the first line after a resume averages the right steps.
    window_loss: float = 0.0
    window_steps: int = 0


@dataclass
class TrainResult:
    steps: int
    train_loss: float | None
    eval_loss: float | None
    tokens: int  # real tokens of the whole run, resumed steps included
    tokens_per_s: float  # tokens per second of this process (since the resume, if any)
    wall_time_s: float
    peak_memory_mb: float
    metrics_lines: list


class Trainer:
    def __init__(self, model, train_rows: list[PackedRow], cfg: TrainConfig, *, device, dtype: str, pad_id: int,
                 eval_rows: list[PackedRow] | None = None, ckpt_dir: str | Path | None = None, desc: str = "train",
                 progress: bool = True, run_record: dict | None = None):
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
        self.run_record = run_record  # identity + resume history, written into every checkpoint (run.json)
        self.weight_limit = max(cfg.max_abs_weight, 10 * max_abs(self._trained()))

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

    def _trained(self) -> list[torch.Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def save_checkpoint(self, keep: int = 2) -> Path | None:
        """Write a resumable checkpoint, only if every trained weight passes the check; None when one fails."""
        from safetensors.torch import save_file

        assert self.ckpt_dir is not None
        if not weights_pass(max_abs(self._trained()), self.weight_limit):
            return None
        target = self.ckpt_dir / f"step-{self.state.step:06d}"
        with atomic_dir(target) as tmp:
            save_file(self._trainable(), str(tmp / "trainable.safetensors"))
            torch.save({"optimizer": self.optimizer.state_dict(), "rng": torch.get_rng_state()}, tmp / "optimizer.pt")
            if self.run_record is not None:
                (tmp / RUN_FILE).write_text(json.dumps(self.run_record, default=str))
            (tmp / "state.json").write_text(json.dumps(self.state.__dict__))  # last: marks the checkpoint complete
        for old in sorted(self.ckpt_dir.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def latest_checkpoint(self) -> Path | None:
        done = completed_checkpoints(self.ckpt_dir) if self.ckpt_dir else []
        return done[-1] if done else None

    def resume(self, ckpt: Path | None = None) -> int:
        """Load `ckpt` (default: the latest checkpoint, if any); return the step it resumes at."""
        from safetensors.torch import load_file

        ckpt = ckpt or self.latest_checkpoint()
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

    def _advice(self, saved: Path | None, lr: float) -> str:
        """What to do after a stop, as options to add to the same command (accepted by the resume check)."""
        new_lr = lower_lr(lr)
        if self.ckpt_dir is None:
            return f"No checkpoint directory was configured, so nothing was saved; start again with train.lr={new_lr}."
        last = saved or self.latest_checkpoint()
        if last is None:
            when = f"the first comes at step {self.cfg.save_every}" if self.cfg.save_every else "train.save_every is 0"
            return (f"No checkpoint was written before this ({when}), so there is nothing to resume: rerun the same "
                    f"command adding --set train.lr={new_lr} to start again with a lower learning rate.")
        step = json.loads((last / "state.json").read_text())["step"]
        head = (f"The last good weights (after step {step}) are saved in {last}" if saved else
                f"The last checkpoint that passed the weight check is {last} (after step {step})")
        return (f"{head}; to continue from it with a lower learning rate, rerun the same command adding "
                f"--resume --allow-change train.lr --set train.lr={new_lr}.")

    def _stop_non_finite(self, what: str, value: float, lr: float):
        # The weights have not been updated by this step yet, and the last update passed the weight check.
        saved = self.save_checkpoint() if self.ckpt_dir is not None and self.state.step > 0 else None
        raise NonFiniteLossError(
            f"step {self.state.step + 1}: {what} is {value}. Training stopped before applying this update. "
            f"{self._advice(saved, lr)} Other causes: fp16 overflow, or a bad batch of data."
        )

    def _stop_bad_weights(self, peak: float, lr: float):
        what = (f"a trained weight is {peak}" if not math.isfinite(peak) else
                f"the largest trained weight is {peak:.3g}, above the limit {self.weight_limit:.3g} (train.max_abs_weight)")
        raise NonFiniteLossError(
            f"step {self.state.step}: after the update {what}. Training stopped and these weights were not saved. "
            f"{self._advice(None, lr)}"
        )

    def _stop_interrupted(self, unfinished: tuple[int, torch.Tensor] | None):
        """Ctrl-C: undo the unfinished step (token count, random state), checkpoint the last finished one."""
        self.optimizer.zero_grad(set_to_none=True)
        if unfinished is not None:
            self.state.tokens = unfinished[0]
            torch.set_rng_state(unfinished[1])
        step, latest = self.state.step, self.latest_checkpoint()
        of = f"step {step} of {self.total_steps}"
        if latest is not None and json.loads((latest / "state.json").read_text())["step"] == step:
            saved = latest  # this step's checkpoint was written just before
        elif self.ckpt_dir is None or step == 0:
            saved = None
        else:
            saved = self.save_checkpoint()
        if saved is not None:
            msg = f"interrupted (Ctrl-C) at {of}; the weights after step {step} are saved in {saved}."
        elif self.ckpt_dir is None or step == 0:
            msg = (f"interrupted (Ctrl-C) at {of}, " + ("before the first step finished" if step == 0 else
                   "with no checkpoint folder configured") + "; nothing was saved.")
        else:
            where = f"; the last checkpoint is {latest}" if latest else ""
            msg = (f"interrupted (Ctrl-C) at {of}; those weights did not pass the weight check "
                   f"(train.max_abs_weight) and were not saved{where}.")
        raise TrainingInterrupted(msg, step, saved or latest)

    def fit(self) -> TrainResult:
        """Train to the last step and return the result; on Ctrl-C, checkpoint and raise TrainingInterrupted."""
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=self.state.step, desc=self.desc, disable=not self.progress,
                   mininterval=1.0, dynamic_ncols=True)
        self._unfinished: tuple[int, torch.Tensor] | None = None  # (tokens, RNG state) where the step began
        try:
            return self._fit(bar)
        except KeyboardInterrupt:
            bar.close()
        self._stop_interrupted(self._unfinished)  # outside the handler: the message is the whole story

    def _fit(self, bar) -> TrainResult:
        cfg, model = self.cfg, self.model
        model.train()
        start = time.perf_counter()
        start_tokens = self.state.tokens
        while self.state.step < self.total_steps:
            step = self.state.step
            self._unfinished = (self.state.tokens, torch.get_rng_state())
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
                    self._stop_non_finite("the loss", float(loss.detach()), lr)
                loss.backward()
                loss_value += float(loss.detach())
            params = [p for p in model.parameters() if p.requires_grad]
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
            if not torch.isfinite(gnorm):
                self.optimizer.zero_grad(set_to_none=True)
                self._stop_non_finite("the gradient norm", float(gnorm), lr)
            with ctrl_c_held():  # the update and the state that records it: all or nothing
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.state.step += 1
                peak = max_abs(params)
                if not weights_pass(peak, self.weight_limit):
                    self._stop_bad_weights(peak, lr)
                self.state.window_loss += loss_value
                self.state.window_steps += 1
                elapsed = time.perf_counter() - start
                tps = (self.state.tokens - start_tokens) / max(elapsed, 1e-9)
                s = self.state.step
                if s % max(1, cfg.log_every) == 0 or s == self.total_steps:
                    self.state.metrics_lines.append({
                        "step": s, "loss": self.state.window_loss / self.state.window_steps, "lr": lr,
                        "grad_norm": float(gnorm), "tokens": self.state.tokens, "tokens_per_s": round(tps, 1)})
                    self.state.window_loss, self.state.window_steps = 0.0, 0
                self._unfinished = None
            bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{tps:,.0f}", refresh=False)
            bar.update(1)
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
            tokens=self.state.tokens,  # the whole run's, across resumes
            tokens_per_s=(self.state.tokens - start_tokens) / max(wall, 1e-9),  # this process's speed
            wall_time_s=wall,
            peak_memory_mb=peak_memory_mb(self.device),
            metrics_lines=self.state.metrics_lines,
        )


def peak_memory_mb(device) -> float:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
