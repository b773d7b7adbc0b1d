"""Preference losses against TRL 1.16's own code on the same tensors, and against numbers worked by hand.

TRL computes these losses inline in trainer methods, so each check builds a
bare trainer with `object.__new__` and sets only the attributes the method
reads; the fake model returns the chosen log-probs we picked. TRL is a test
dependency only: without it the TRL comparisons skip and the hand checks still run.
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from posttrain.losses_preference import LOSS_TYPES, bradley_terry_loss, dpo_loss, simpo_loss

BATCH = 8
_ACCELERATOR = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x)
# Options per loss type; exo_pair needs ε > 0 and robust is only interesting with ε > 0.
OPTIONS = {"robust": dict(label_smoothing=0.2), "exo_pair": dict(label_smoothing=1e-3),
           "aot": dict(label_smoothing=0.1), "aot_unpaired": dict(label_smoothing=0.1),
           "discopop": dict(discopop_tau=0.05)}
# TRL builds exo_pair's ε as a float32 tensor, so its log(ε) carries float32 rounding (~3e-8 relative here).
TOL = {"exo_pair": dict(rtol=1e-6, atol=1e-7)}
TIGHT = dict(rtol=1e-9, atol=1e-9)


def _random_pairs(seed: int, batch: int = BATCH):
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(4, batch, generator=g, dtype=torch.float64) * 40
    lengths = torch.randint(1, 12, (2, batch), generator=g)
    return logps, lengths


def _bare_dpo_trainer(loss_type: str, beta: float, label_smoothing: float, discopop_tau: float):
    DPOTrainer = pytest.importorskip("trl").DPOTrainer

    t = object.__new__(DPOTrainer)
    t.model = SimpleNamespace(training=False)
    t.accelerator = _ACCELERATOR
    t.aux_loss_enabled, t.ld_alpha, t.precompute_ref_logps = False, None, True
    t.f_divergence_type, t.use_weighting = "reverse_kl", False
    t.loss_types, t.loss_weights = [loss_type], [1.0]
    t.beta, t.label_smoothing = beta, label_smoothing
    t.args = SimpleNamespace(discopop_tau=discopop_tau)
    t._metrics = defaultdict(lambda: defaultdict(list))
    t._total_train_tokens, t._tp_size = 0, 1
    return t


def trl_dpo_mean_loss(loss_type, logps, lengths, beta, label_smoothing=0.0, discopop_tau=0.05):
    """TRL's DPOTrainer._compute_loss on a batch whose summed policy log-probs are logps[0:2]."""
    policy_c, policy_r, ref_c, ref_r = logps
    batch, width = policy_c.shape[0], int(lengths.max()) + 1
    completion_lens = torch.cat([lengths[0], lengths[1]])
    completion_mask = (torch.arange(width) < completion_lens[:, None]).long()
    token_logps = torch.zeros(2 * batch, width - 1, dtype=logps.dtype)
    token_logps[:, 0] = torch.cat([policy_c, policy_r])  # row sums are the sequence log-probs
    outputs = SimpleNamespace(
        log_probs=token_logps, entropy=torch.zeros_like(token_logps),
        mean_logits=torch.zeros_like(token_logps), is_top1=torch.zeros_like(token_logps, dtype=torch.bool),
    )
    inputs = {
        "input_ids": torch.ones(2 * batch, width, dtype=torch.long), "attention_mask": completion_mask,
        "completion_mask": completion_mask, "ref_chosen_logps": ref_c, "ref_rejected_logps": ref_r,
    }
    trainer = _bare_dpo_trainer(loss_type, beta, label_smoothing, discopop_tau)
    return trainer._compute_loss(lambda **kw: outputs, inputs, return_outputs=False)


def _ours(loss_type, logps, lengths, beta, **options):
    return dpo_loss(*logps, beta=beta, loss_type=loss_type, chosen_lengths=lengths[0].double(),
                    rejected_lengths=lengths[1].double(), **options)


def test_registry_lists_every_trl_pairwise_loss_type():
    assert set(LOSS_TYPES) == {
        "sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "nca_pair", "exo_pair",
        "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm",
    }


@pytest.mark.parametrize("loss_type", sorted(LOSS_TYPES))
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_batch_mean_matches_trl(loss_type, beta):
    logps, lengths = _random_pairs(seed=int(beta * 10))
    options = OPTIONS.get(loss_type, {})
    losses, chosen_rewards, rejected_rewards = _ours(loss_type, logps, lengths, beta, **options)
    assert losses.shape == (BATCH,)
    expected = trl_dpo_mean_loss(loss_type, logps, lengths, beta, **options)
    torch.testing.assert_close(losses.mean(), expected, **TOL.get(loss_type, TIGHT))
    torch.testing.assert_close(chosen_rewards, beta * (logps[0] - logps[2]))
    torch.testing.assert_close(rejected_rewards, beta * (logps[1] - logps[3]))


@pytest.mark.parametrize("loss_type", sorted(set(LOSS_TYPES) - {"aot", "aot_unpaired"}))
def test_dpo_each_example_matches_trl(loss_type):
    """Batch-of-one TRL calls pin every per-example loss (AOT sorts over the batch, so it is checked above only)."""
    logps, lengths = _random_pairs(seed=3)
    options = OPTIONS.get(loss_type, {})
    losses, _, _ = _ours(loss_type, logps, lengths, 0.2, **options)
    for i in range(BATCH):
        expected = trl_dpo_mean_loss(loss_type, logps[:, i : i + 1], lengths[:, i : i + 1], 0.2, **options)
        torch.testing.assert_close(losses[i], expected, **TOL.get(loss_type, TIGHT))


def test_sigmoid_by_hand():
    # Δc = -10 - -11 = 1, Δr = -12 - -11 = -1, βΔ = 0.1 * 2 = 0.2; -log σ(0.2) = log(1 + e^-0.2)
    args = [torch.tensor([v], dtype=torch.float64) for v in (-10.0, -12.0, -11.0, -11.0)]
    losses, chosen, rejected = dpo_loss(*args, beta=0.1)
    torch.testing.assert_close(losses, torch.tensor([0.5981388693815918], dtype=torch.float64))
    torch.testing.assert_close(chosen, torch.tensor([0.1], dtype=torch.float64))
    torch.testing.assert_close(rejected, torch.tensor([-0.1], dtype=torch.float64))
    # cDPO, ε = 0.1: -(1-ε) log σ(z) - ε log σ(-z) = -log σ(z) + ε z = 0.598139 + 0.02.
    # TRL 1.16's sigmoid ignores label smoothing, so this case is checked by hand only.
    smoothed, _, _ = dpo_loss(*args, beta=0.1, label_smoothing=0.1)
    torch.testing.assert_close(smoothed, torch.tensor([0.6181388693815918], dtype=torch.float64))


def test_ipo_by_hand_uses_per_token_average():
    # Δc = 4 over 4 tokens -> 1, Δr = -2 over 2 tokens -> -1; (2 - 1/(2*0.5))^2 = 1
    args = [torch.tensor([v]) for v in (-6.0, -9.0, -10.0, -7.0)]
    losses, _, _ = dpo_loss(*args, beta=0.5, loss_type="ipo",
                            chosen_lengths=torch.tensor([4.0]), rejected_lengths=torch.tensor([2.0]))
    torch.testing.assert_close(losses, torch.tensor([1.0]))


def test_length_normalised_types_demand_lengths():
    args = [torch.zeros(2)] * 4
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_loss(*args, beta=0.1, loss_type="ipo")


def test_bad_options_say_what_to_change():
    args = [torch.zeros(2)] * 4
    with pytest.raises(ValueError, match="choose one of"):
        dpo_loss(*args, beta=0.1, loss_type="dpo")
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(*args, beta=0.1, loss_type="exo_pair")
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(*args, beta=0.1, loss_type="robust", label_smoothing=0.5)


def trl_reward_loss(chosen, rejected, margin=None, center_coef=None):
    RewardTrainer = pytest.importorskip("trl").RewardTrainer

    t = object.__new__(RewardTrainer)
    t.model = SimpleNamespace(training=False)
    t.accelerator = _ACCELERATOR
    t.args = SimpleNamespace(center_rewards_coefficient=center_coef)
    t._metrics = defaultdict(lambda: defaultdict(list))
    t._total_train_tokens = 0
    logits = torch.cat([chosen, rejected]).unsqueeze(-1)
    inputs = {"attention_mask": torch.ones(2 * chosen.shape[0], 3)}
    if margin is not None:
        inputs["margin"] = margin
    return t.compute_loss(lambda **kw: SimpleNamespace(logits=logits), inputs)


@pytest.mark.parametrize("with_margin", [False, True])
@pytest.mark.parametrize("center_coef", [None, 0.01])
def test_bradley_terry_matches_trl(with_margin, center_coef):
    g = torch.Generator().manual_seed(7)
    chosen, rejected, margin = torch.randn(3, BATCH, generator=g, dtype=torch.float64) * 3
    margin = margin.abs() if with_margin else None
    ours = bradley_terry_loss(chosen, rejected, margin=margin, center_coef=center_coef or 0.0)
    torch.testing.assert_close(ours, trl_reward_loss(chosen, rejected, margin, center_coef), rtol=1e-12, atol=1e-12)


def test_bradley_terry_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0], dtype=torch.float64), torch.tensor([1.0, 1.0], dtype=torch.float64)
    # diffs [1, -1]: (log(1 + e^-1) + log(1 + e^1)) / 2
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected),
                               torch.tensor(0.8132616875182228, dtype=torch.float64))
    # centering: mean((3)^2, (1)^2) = 5, times 0.5 = 2.5
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected, center_coef=0.5),
                               torch.tensor(3.3132616875182228, dtype=torch.float64))
    # margin 1: diffs [0, -2]: (log 2 + log(1 + e^2)) / 2
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected, margin=1.0),
                               torch.tensor(1.410037595801459, dtype=torch.float64))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo_matches_trl_cpo(label_smoothing):
    CPOTrainer = pytest.importorskip("trl.experimental.cpo").CPOTrainer

    beta, ratio = 2.0, 0.25
    g = torch.Generator().manual_seed(11)
    chosen, rejected = -torch.rand(2, BATCH, generator=g, dtype=torch.float64) * 3
    t = object.__new__(CPOTrainer)
    t.alpha, t.accelerator, t.loss_type = 0.0, _ACCELERATOR, "simpo"
    t.beta, t.simpo_gamma, t.label_smoothing = beta, ratio * beta, label_smoothing
    expected = t.cpo_loss(chosen, rejected)
    got = simpo_loss(chosen, rejected, beta, ratio, label_smoothing=label_smoothing)
    for ours, theirs in zip(got, expected, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_simpo_by_hand():
    # β(ā_c - ā_r) - γ = 2 * (-1 - -1.5) - 2 * 0.5 = 0 -> -log σ(0) = log 2
    losses, _, _ = simpo_loss(torch.tensor([-1.0]), torch.tensor([-1.5]), beta=2.0, gamma_beta_ratio=0.5)
    torch.testing.assert_close(losses, torch.tensor([0.6931471805599453]))
