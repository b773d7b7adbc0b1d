"""Each side's training plumbing: posttrain's training API (wherever this checkout keeps it) and the hooks that
make a transformers/TRL Trainer clock and schedule its steps as posttrain does.

    posttrain_trainer / lr_at / nll_and_count   posttrain's Trainer, learning rate and summed NLL
    clock_callback(clock)          hooks a StepClock to the AdamW inside a transformers/TRL Trainer
    posttrain_schedule(...)        posttrain's warmup + cosine learning rate as a torch LambdaLR, for TRL
    trl_optimizer(trl_args)        the optimizer a transformers/TRL config asks for, in words
    weights_fingerprint(model)     a sum over the trained weights: every side starts from the same ones
"""

from __future__ import annotations

from measure import StepClock


def posttrain_trainer(model, rows, train_cfg, *, pad_id: int, dtype: str):
    """posttrain's Trainer for next-token loss on packed rows, on CPU, without a progress bar."""
    import torch

    from posttrain.training.objectives import NextToken
    from posttrain.training.trainer import Trainer

    return Trainer(model, rows, train_cfg, NextToken(pad_id), device=torch.device("cpu"), dtype=dtype, progress=False)


def lr_at(step: int, total: int, train_cfg) -> float:
    """posttrain's learning rate at `step` (warmup + cosine)."""
    from posttrain.training.trainer import lr_at as f

    return f(step, total, train_cfg)


def nll_and_count(model, batch):
    """posttrain's summed target NLL (fp32) of a collated batch, and its number of targets."""
    from posttrain.modeling.forward import nll_and_count as f

    return f(model, batch)


def clock_callback(clock: StepClock):
    """A TrainerCallback that hooks `clock` to the torch AdamW inside the (accelerate-wrapped) optimizer and starts
    it at on_train_begin: after the optimizer, accelerate.prepare and the dataloader are set up, before step 1."""
    from transformers import TrainerCallback

    class StartClock(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            getattr(optimizer, "optimizer", optimizer).register_step_post_hook(clock)
            clock.start()

    return StartClock()


def posttrain_schedule(optimizer, total_steps: int, train_cfg):
    """posttrain's warmup + cosine schedule as a LambdaLR (HF's cosine_with_min_lr warms up from lr 0, one step
    behind); return it from a TRL trainer's `create_scheduler`."""
    from torch.optim.lr_scheduler import LambdaLR

    return LambdaLR(optimizer, lambda s: lr_at(s, total_steps, train_cfg) / train_cfg.lr)


def trl_optimizer(trainer_args) -> str:
    """The optimizer a transformers/TRL config asks for, in words."""
    return f"AdamW ({getattr(trainer_args.optim, 'value', trainer_args.optim)})"


def weights_fingerprint(model) -> float:
    """A sum over every trained weight (float64): equal on every side when they start from the same weights."""
    import torch

    with torch.no_grad():
        return float(sum(p.detach().double().sum() for p in model.parameters() if p.requires_grad))
