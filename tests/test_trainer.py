"""The trainer's own properties, once, on a toy objective: no stage, no language model.

Accumulation equals one big batch, `step()` runs for loops that bring their own data, metrics
average over the objective's units, a non-finite loss stops before the update and keeps the last
good checkpoint, and a resumed run ends bit-identical to an uninterrupted one.
"""

import pytest
import torch

from posttrain.errors import NonFiniteLossError
from posttrain.training.config import TrainConfig
from posttrain.training.trainer import Trainer, lr_at


class Squares:
    """Mean squared error of a linear model on (x, y) items; units are items, `bad` poisons one batch."""

    def __init__(self, bad_batches=()):
        self.calls, self.bad = 0, set(bad_batches)

    def collate(self, items):
        return {"x": torch.stack([x for x, _ in items]), "y": torch.stack([y for _, y in items]), "n": len(items)}

    def units(self, batch):
        return batch["n"]

    def tokens(self, items):
        return len(items)

    def loss(self, model, batch):
        self.calls += 1
        err = ((model(batch["x"]).squeeze(-1) - batch["y"]) ** 2)
        loss = err.sum() * (float("nan") if self.calls in self.bad else 1.0)
        return loss, {"hits": float((err.detach() < 0.5).sum())}


def data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    return [(x[i], x[i] @ torch.tensor([1.0, -2.0, 0.5])) for i in range(n)]


def trainer(tmp_path=None, objective=None, **cfg):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    c = TrainConfig(**{"lr": 0.05, "max_steps": 6, "log_every": 1, "save_every": 0, "warmup_ratio": 0.0, **cfg})
    return Trainer(model, data(), c, objective or Squares(), device=torch.device("cpu"), dtype="fp32",
                   ckpt_dir=tmp_path, progress=False)


def test_accumulation_gives_the_gradient_of_one_big_batch():
    big = trainer(batch_size=8, grad_accum=1)
    small = trainer(batch_size=4, grad_accum=2)
    big.fit(), small.fit()
    for a, b in zip(big.model.parameters(), small.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_step_runs_on_given_items_at_the_scheduled_lr_and_averages_metrics_over_units():
    t = trainer(batch_size=4)
    items = data(12, seed=1)
    before = t.model.weight.detach().clone()
    with torch.no_grad():
        x, y = torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])
        err = (t.model(x).squeeze(-1) - y) ** 2
    r = t.step([items[:4], items[4:12]])  # micro-batches of unequal size: metrics are per item, not per batch
    assert t.state.step == 1 and r.tokens == 12 and r.lr == pytest.approx(lr_at(0, t.total_steps, t.cfg))
    assert not torch.equal(before, t.model.weight)
    assert r.metrics["hits"] == pytest.approx(float((err < 0.5).float().mean()))
    assert r.loss == pytest.approx(float(err.mean()), rel=1e-5)
    line = t.state.metrics_lines[-1]
    assert line["step"] == 1 and line["hits"] == r.metrics["hits"] and line["tokens"] == 12


def test_non_finite_loss_stops_before_the_update_and_names_the_last_good_checkpoint(tmp_path):
    t = trainer(tmp_path, Squares(bad_batches={4}), batch_size=8, save_every=1)
    with pytest.raises(NonFiniteLossError, match=r"step 4: the loss is nan.*step-000003"):
        t.fit()
    saved = torch.load(tmp_path / "step-000003" / "optimizer.pt", weights_only=True)
    assert t.state.step == 3 and "optimizer" in saved
    assert all(torch.isfinite(p).all() for p in t.model.parameters())


def test_a_resumed_run_ends_bit_identical_to_an_uninterrupted_one(tmp_path):
    full = trainer(batch_size=8)
    full.fit()
    first = trainer(tmp_path, batch_size=8, max_steps=6)
    for _ in range(3):
        first.step([first._micro_batch(first.state.step)])
    first.save_checkpoint()
    again = trainer(tmp_path, batch_size=8)
    assert again.resume() == 3
    again.fit()
    for a, b in zip(full.model.parameters(), again.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [m["step"] for m in again.state.metrics_lines if "loss" in m] == [1, 2, 3, 4, 5, 6]
