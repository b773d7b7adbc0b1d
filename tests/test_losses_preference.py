"""Preference losses against TRL 1.16's own code on the same tensors, and against numbers worked by hand.

TRL computes these losses inline in trainer methods, so each check builds a
bare trainer with `object.__new__` and sets only the attributes the method
reads; the fake model returns the chosen log-probs we picked. TRL is a test
dependency only: without it the TRL comparisons skip and the hand checks still run.
"""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from posttrain.losses_preference import (
    LOSS_TYPES, bradley_terry_loss, dpo_loss, log1mexp, needs_reference, orpo_loss, simpo_loss, token_mean_nll,
)
from posttrain.losses_preference_unpaired import kto_loss, kto_reference_point

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


def _token_logps(seq_logps, lengths, width, generator):
    """[n, width - 1] per-token log-probs after one prompt token: row i spreads seq_logps[i] over lengths[i] tokens."""
    n = seq_logps.shape[0]
    mask = torch.arange(width - 1) < lengths[:, None]
    share = torch.rand(n, width - 1, generator=generator, dtype=seq_logps.dtype) * mask + 1e-3 * mask
    return seq_logps[:, None] * share / share.sum(dim=1, keepdim=True), mask


def trl_dpo_mean_loss(loss_type, logps, lengths, beta, label_smoothing=0.0, discopop_tau=0.05, loss_weights=None):
    """TRL's DPOTrainer._compute_loss on a batch whose summed policy log-probs are logps[0:2].

    Each row is one prompt token then its completion; the policy's sequence log-prob
    is spread over the completion tokens, so TRL's per-token `sft` sees real tokens.
    """
    policy_c, policy_r, ref_c, ref_r = logps
    batch, width = policy_c.shape[0], int(lengths.max()) + 1
    completion_lens = torch.cat([lengths[0], lengths[1]])
    token_logps, shift_mask = _token_logps(torch.cat([policy_c, policy_r]), completion_lens, width,
                                           torch.Generator().manual_seed(99))
    completion_mask = torch.cat([torch.zeros(2 * batch, 1, dtype=torch.long), shift_mask.long()], dim=1)
    outputs = SimpleNamespace(
        log_probs=token_logps, entropy=torch.zeros_like(token_logps),
        mean_logits=torch.zeros_like(token_logps), is_top1=torch.zeros_like(token_logps, dtype=torch.bool),
    )
    inputs = {
        "input_ids": torch.ones(2 * batch, width, dtype=torch.long), "attention_mask": torch.ones_like(completion_mask),
        "completion_mask": completion_mask, "ref_chosen_logps": ref_c, "ref_rejected_logps": ref_r,
    }
    trainer = _bare_dpo_trainer(loss_type, beta, label_smoothing, discopop_tau)
    if loss_weights is not None:  # a list of loss types, combined as TRL does
        trainer.loss_types, trainer.loss_weights = list(loss_type), list(loss_weights)
    return trainer._compute_loss(lambda **kw: outputs, inputs, return_outputs=False)


def _ours(loss_type, logps, lengths, beta, **options):
    return dpo_loss(*logps, beta=beta, loss_type=loss_type, chosen_lengths=lengths[0].double(),
                    rejected_lengths=lengths[1].double(), **options)


def test_registry_lists_every_trl_pairwise_loss_type():
    assert set(LOSS_TYPES) == {
        "sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "nca_pair", "exo_pair",
        "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
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


@pytest.mark.parametrize("loss_type", sorted(set(LOSS_TYPES) - {"aot", "aot_unpaired", "sft"}))
def test_dpo_each_example_matches_trl(loss_type):
    """Batch-of-one TRL calls pin every per-example loss (AOT sorts and sft averages over the batch: checked above)."""
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
    with pytest.raises(ValueError, match="choose one or more of"):
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


# --- DPO `sft` and combined loss types --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_sft_matches_trl_on_several_seeds(seed):
    logps, lengths = _random_pairs(seed)
    losses, _, _ = _ours("sft", logps, lengths, 0.1)
    assert torch.all(losses == losses[0])  # one batch-level value, broadcast
    torch.testing.assert_close(losses.mean(), trl_dpo_mean_loss("sft", logps, lengths, 0.1), **TIGHT)


def test_sft_by_hand_is_a_token_mean_over_the_batch():
    # chosen answers: -6 over 3 tokens, -4 over 1 token -> 10 / 4 = 2.5 (the mean of per-answer averages would be 3)
    chosen = torch.tensor([-6.0, -4.0], dtype=torch.float64)
    losses, chosen_rewards, _ = dpo_loss(chosen, chosen - 1, None, None, beta=0.5, loss_type="sft",
                                         chosen_lengths=torch.tensor([3.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(losses, torch.tensor([2.5, 2.5], dtype=torch.float64))
    torch.testing.assert_close(chosen_rewards, 0.5 * chosen)  # no reference: β·log π
    torch.testing.assert_close(token_mean_nll(chosen, torch.tensor([3.0, 1.0], dtype=torch.float64)),
                               torch.tensor(2.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_loss(chosen, chosen, None, None, beta=0.5, loss_type="sft")


def test_missing_reference_is_refused_when_a_loss_needs_it():
    args = [torch.zeros(2), torch.zeros(2), None, None]
    with pytest.raises(ValueError, match="reference model"):
        dpo_loss(*args, beta=0.1, loss_type=["sigmoid", "sft"], chosen_lengths=torch.ones(2))


COMBINATIONS = [
    (("sigmoid", "sft"), (1.0, 0.5), {}),  # RPO
    (("sigmoid", "bco_pair", "sft"), (0.8, 0.2, 1.0), {}),  # MPO
    (("ipo", "hinge", "aot"), None, dict(label_smoothing=0.1)),
    (("robust", "sigmoid_norm", "discopop"), (2.0, -0.5, 0.25), dict(label_smoothing=0.2)),
]


@pytest.mark.parametrize("types,weights,options", COMBINATIONS)
@pytest.mark.parametrize("seed", [0, 4, 9])
def test_combined_loss_types_match_trl(types, weights, options, seed):
    logps, lengths = _random_pairs(seed)
    losses, chosen_rewards, _ = _ours(list(types), logps, lengths, 0.3, loss_weights=weights, **options)
    assert losses.shape == (BATCH,)
    trl_weights = weights or [1.0] * len(types)
    expected = trl_dpo_mean_loss(types, logps, lengths, 0.3, loss_weights=trl_weights, **options)
    torch.testing.assert_close(losses.mean(), expected, **TIGHT)
    torch.testing.assert_close(chosen_rewards, 0.3 * (logps[0] - logps[2]))


def test_single_loss_type_with_a_weight_matches_trl():
    logps, lengths = _random_pairs(seed=6)
    losses, _, _ = _ours("hinge", logps, lengths, 0.2, loss_weights=[2.5])
    torch.testing.assert_close(losses.mean(), trl_dpo_mean_loss(["hinge"], logps, lengths, 0.2, loss_weights=[2.5]),
                               **TIGHT)


def test_combined_by_hand():
    # sigmoid as in test_sigmoid_by_hand: log(1 + e^-0.2); sft: 10 nats over 5 tokens = 2, weighted 0.5 -> + 1
    args = [torch.tensor([v], dtype=torch.float64) for v in (-10.0, -12.0, -11.0, -11.0)]
    losses, _, _ = dpo_loss(*args, beta=0.1, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5],
                            chosen_lengths=torch.tensor([5.0], dtype=torch.float64))
    torch.testing.assert_close(losses, torch.tensor([math.log1p(math.exp(-0.2)) + 1.0], dtype=torch.float64))


def test_loss_weights_length_mismatch_names_the_fix():
    args = [torch.zeros(2)] * 4
    with pytest.raises(ValueError, match="one weight per loss type"):
        dpo_loss(*args, beta=0.1, loss_type=["sigmoid", "hinge"], loss_weights=[1.0])
    with pytest.raises(ValueError, match="one weight per loss type"):
        dpo_loss(*args, beta=0.1, loss_type="sigmoid", loss_weights=[1.0, 0.5])
    with pytest.raises(ValueError, match="choose one or more of"):
        dpo_loss(*args, beta=0.1, loss_type=[])


def test_needs_reference():
    assert needs_reference("sigmoid") and needs_reference("kto") and needs_reference("apo_zero_unpaired")
    assert not needs_reference("simpo") and not needs_reference("orpo") and not needs_reference("sft")
    assert not needs_reference(["sft"])
    assert needs_reference(["sft", "sigmoid"])  # any member needing π_ref loads it
    with pytest.raises(ValueError, match="one or more of"):
        needs_reference("dpo")
    with pytest.raises(ValueError, match="one or more of"):
        needs_reference([])


# --- ORPO ------------------------------------------------------------------------------------------------------


def _bare_orpo_trainer(beta):
    ORPOTrainer = pytest.importorskip("trl.experimental.orpo").ORPOTrainer

    t = object.__new__(ORPOTrainer)
    t.beta, t.accelerator, t.aux_loss_enabled = beta, _ACCELERATOR, False
    t.is_encoder_decoder, t.padding_value = False, 0
    return t


def _random_avg_logps(seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    # per-token averages from about -1.2 up to -6e-5, across both log1mexp branches (split at -log 2)
    return -torch.exp(torch.rand(2, BATCH, generator=g, dtype=torch.float64) * 10 - 9).to(dtype) * 0.45


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_orpo_matches_trl_odds_ratio_loss(seed):
    chosen, rejected = _random_avg_logps(seed)
    trainer = _bare_orpo_trainer(beta=0.1)
    trl_losses, trl_chosen, trl_rejected, trl_log_sigmoid_mean, trl_log_odds_mean = trainer.odds_ratio_loss(chosen,
                                                                                                           rejected)
    ours = orpo_loss(chosen, rejected, 0.1, chosen_nll=0.0)
    torch.testing.assert_close(ours.or_losses, -trl_losses, rtol=1e-6, atol=1e-7)  # TRL's losses are +λ·log σ
    torch.testing.assert_close(ours.losses, ours.or_losses)
    torch.testing.assert_close(ours.chosen_rewards, trl_chosen)
    torch.testing.assert_close(ours.rejected_rewards, trl_rejected)
    torch.testing.assert_close(ours.log_sigmoid_odds.mean(), trl_log_sigmoid_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.log_odds.mean(), trl_log_odds_mean, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("seed", [0, 7])
def test_orpo_full_loss_matches_trl_from_logits(seed):
    """TRL's get_batch_loss_metrics on fake logits: NLL over prompt + chosen completion, odds from completion means."""
    g = torch.Generator().manual_seed(seed)
    batch, prompt, width, vocab = 4, 3, 9, 11
    lengths = torch.randint(1, width - prompt + 1, (2, batch), generator=g)
    ids = torch.randint(0, vocab, (2, batch, width), generator=g)
    attention = (torch.arange(width) < prompt + lengths[..., None]).long()
    labels = ids.masked_fill((attention == 0) | (torch.arange(width) < prompt), -100)
    logits = torch.randn(2 * batch, width, vocab, generator=g, dtype=torch.float64)
    inputs = {f"{side}_{key}": value[i] for i, side in enumerate(("chosen", "rejected"))
              for key, value in (("input_ids", ids), ("attention_mask", attention), ("labels", labels))}
    trl_loss, metrics = _bare_orpo_trainer(0.25).get_batch_loss_metrics(
        lambda *a, **kw: SimpleNamespace(logits=logits), inputs)

    token_logps = logits[:, :-1].log_softmax(-1).gather(-1, ids.reshape(2 * batch, width)[:, 1:, None]).squeeze(-1)
    completion = (labels.reshape(2 * batch, width)[:, 1:] != -100).double()
    avg = (token_logps * completion).sum(1) / completion.sum(1)
    seen = attention[0][:, 1:].double()  # every non-padding token of the chosen rows, prompt included
    nll = token_mean_nll((token_logps[:batch] * seen).sum(1), seen.sum(1))
    ours = orpo_loss(avg[:batch], avg[batch:], 0.25, chosen_nll=nll)
    torch.testing.assert_close(ours.losses.mean(), trl_loss.double(), rtol=1e-6, atol=1e-6)
    assert metrics["nll_loss"] == pytest.approx(nll.item(), rel=1e-6)
    assert metrics["log_odds_chosen"] == pytest.approx(ours.log_odds.mean().item(), rel=1e-5, abs=1e-6)
    assert metrics["log_odds_ratio"] == pytest.approx(ours.log_sigmoid_odds.mean().item(), rel=1e-5, abs=1e-6)


def test_orpo_by_hand():
    # ā_c = log 0.5: odds 1; ā_r = log 0.25: odds 1/3; ℓ = log 3, σ(ℓ) = 3/4 -> L_OR = -log 0.75
    # ā_c = log 0.9 (the log(-expm1) branch): odds 9; ā_r = log 0.5: odds 1; ℓ = log 9, σ(ℓ) = 0.9
    chosen = torch.tensor([math.log(0.5), math.log(0.9)], dtype=torch.float64)
    rejected = torch.tensor([math.log(0.25), math.log(0.5)], dtype=torch.float64)
    ours = orpo_loss(chosen, rejected, beta=0.1, chosen_nll=2.0)
    expected_or = torch.tensor([-0.1 * math.log(0.75), -0.1 * math.log(0.9)], dtype=torch.float64)
    torch.testing.assert_close(ours.or_losses, expected_or)
    torch.testing.assert_close(ours.losses, 2.0 + expected_or)
    torch.testing.assert_close(ours.log_odds, torch.tensor([math.log(3), math.log(9)], dtype=torch.float64))
    torch.testing.assert_close(ours.chosen_rewards, 0.1 * chosen)


def test_log1mexp_is_stable_near_zero_and_far_below():
    x = torch.tensor([-1e-8, -0.5, -1.0, -50.0], dtype=torch.float32)  # exp(-1e-8) rounds to 1 in float32
    expected = torch.tensor([math.log(-math.expm1(v)) for v in x.tolist()], dtype=torch.float32)
    torch.testing.assert_close(log1mexp(x), expected)
    assert torch.isinf(torch.log(1 - torch.exp(x[:1]))).item()  # the naive form fails where log1mexp does not


# --- KTO -------------------------------------------------------------------------------------------------------


def trl_kto(labels, policy, ref, kl_policy, kl_ref, beta, loss_type, desirable_weight, undesirable_weight):
    """TRL's KTOTrainer._compute_loss (precomputed reference log-probs); returns (loss, metrics)."""
    KTOTrainer = pytest.importorskip("trl").KTOTrainer

    t = object.__new__(KTOTrainer)
    t.model, t.accelerator = SimpleNamespace(training=True), _ACCELERATOR
    t.calculate_KL, t.aux_loss_enabled, t.precompute_ref_logps = loss_type == "kto", False, True
    t.loss_type, t.beta = loss_type, beta
    t.desirable_weight, t.undesirable_weight = desirable_weight, undesirable_weight
    t._metrics, t._total_train_tokens, t._tp_size = defaultdict(lambda: defaultdict(list)), 0, 1
    g = torch.Generator().manual_seed(5)
    n, width = labels.shape[0], 6
    lengths = torch.randint(1, width, (2, n), generator=g)
    outputs = {}
    for marker, seq_logps, lens in ((1, policy, lengths[0]), (2, kl_policy, lengths[1])):
        token_logps, mask = _token_logps(seq_logps, lens, width, g)
        outputs[marker] = SimpleNamespace(log_probs=token_logps, entropy=torch.zeros_like(token_logps),
                                          mean_logits=torch.zeros_like(token_logps))
        outputs[f"mask{marker}"] = torch.cat([torch.zeros(n, 1, dtype=torch.long), mask.long()], dim=1)
    inputs = {
        "input_ids": torch.ones(n, width, dtype=torch.long), "attention_mask": torch.ones(n, width, dtype=torch.long),
        "completion_mask": outputs["mask1"], "label": labels, "ref_logps": ref, "ref_KL_logps": kl_ref,
        "KL_input_ids": torch.full((n, width), 2), "KL_attention_mask": torch.ones(n, width, dtype=torch.long),
        "KL_completion_mask": outputs["mask2"],
    }
    loss = t._compute_loss(lambda **kw: outputs[int(kw["input_ids"][0, 0])], inputs, return_outputs=False)
    return loss, t._metrics["train"]


def _random_unpaired(seed, n=BATCH):
    g = torch.Generator().manual_seed(seed)
    labels = torch.rand(n, generator=g) < 0.5
    labels[0], labels[1] = True, False  # both sets non-empty
    policy, ref, kl_policy, kl_ref = -torch.rand(4, n, generator=g, dtype=torch.float64) * 30
    return labels, policy, ref, kl_policy, kl_ref


def _ours_kto(labels, policy, ref, kl_policy, kl_ref, beta, loss_type, desirable_weight, undesirable_weight):
    kl = kto_reference_point(kl_policy, kl_ref) if loss_type == "kto" else None
    return kto_loss(policy[labels], policy[~labels], ref[labels], ref[~labels], kl, beta,
                    desirable_weight, undesirable_weight, loss_type=loss_type)


KTO_CASES = [("kto", 1.0, 1.0), ("kto", 1.33, 0.7), ("apo_zero_unpaired", 1.0, 1.0), ("apo_zero_unpaired", 0.5, 2.0)]


@pytest.mark.parametrize("loss_type,desirable_weight,undesirable_weight", KTO_CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kto_matches_trl(loss_type, desirable_weight, undesirable_weight, seed):
    data = _random_unpaired(seed)
    labels, policy, ref, kl_policy, kl_ref = data
    args = (0.1, loss_type, desirable_weight, undesirable_weight)
    losses, chosen_rewards, rejected_rewards = _ours_kto(*data, *args)
    assert losses.shape == (BATCH,)
    trl_loss, metrics = trl_kto(*data, *args)
    torch.testing.assert_close(losses.mean(), trl_loss, **TIGHT)
    assert metrics["rewards/chosen"][-1] == pytest.approx(chosen_rewards.mean().item(), rel=1e-12)
    assert metrics["rewards/rejected"][-1] == pytest.approx(rejected_rewards.mean().item(), rel=1e-12)
    if loss_type == "kto":
        assert metrics["kl"][-1] == pytest.approx(kto_reference_point(kl_policy, kl_ref).item(), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_kto_each_answer_matches_trl(loss_type):
    """Batch-of-one TRL calls whose KL pair reproduces the batch's reference point pin every per-answer loss."""
    labels, policy, ref, kl_policy, kl_ref = _random_unpaired(seed=3)
    kl_policy = kl_policy + 5.0  # a positive reference point, so the clamp does not hide it
    z0 = kto_reference_point(kl_policy, kl_ref)
    losses, _, _ = _ours_kto(labels, policy, ref, kl_policy, kl_ref, 0.2, loss_type, 1.5, 0.5)
    order = torch.cat([torch.nonzero(labels).view(-1), torch.nonzero(~labels).view(-1)])  # desirable first
    for loss, i in zip(losses, order.tolist(), strict=True):
        one = slice(i, i + 1)
        expected, _ = trl_kto(labels[one], policy[one], ref[one], (z0 + kl_ref[one]), kl_ref[one], 0.2, loss_type,
                              1.5, 0.5)
        torch.testing.assert_close(loss, expected, **TIGHT)


@pytest.mark.parametrize("only", ["desirable", "undesirable"])
@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_kto_with_one_set_empty_matches_trl(only, loss_type):
    labels, policy, ref, kl_policy, kl_ref = _random_unpaired(seed=8)
    labels = torch.full_like(labels, only == "desirable")
    losses, chosen_rewards, rejected_rewards = _ours_kto(labels, policy, ref, kl_policy, kl_ref, 0.1, loss_type,
                                                         1.0, 1.2)
    assert losses.shape == (BATCH,)
    assert (chosen_rewards.numel(), rejected_rewards.numel()) == ((BATCH, 0) if only == "desirable" else (0, BATCH))
    trl_loss, _ = trl_kto(labels, policy, ref, kl_policy, kl_ref, 0.1, loss_type, 1.0, 1.2)
    torch.testing.assert_close(losses.mean(), trl_loss, **TIGHT)


def test_kto_with_no_answers_is_empty():
    empty = torch.zeros(0, dtype=torch.float64)
    losses, chosen_rewards, rejected_rewards = kto_loss(empty, empty, empty, empty, 0.0, 0.1)
    assert losses.numel() == chosen_rewards.numel() == rejected_rewards.numel() == 0


def test_kto_by_hand():
    # β = 0.5, z₀ = 0.2; desirable Δ = -3 - -4.2 = 1.2: 1 - σ(0.5 * 1.0); undesirable Δ = -1.8: 1 - σ(0.5 * 2.0)
    def sig(v):
        return 1 / (1 + math.exp(-v))

    args = [torch.tensor([v], dtype=torch.float64) for v in (-3.0, -5.0, -4.2, -3.2)]
    losses, chosen, rejected = kto_loss(*args, kl=torch.tensor(0.2, dtype=torch.float64), beta=0.5,
                                        desirable_weight=1.0, undesirable_weight=1.5)
    torch.testing.assert_close(losses, torch.tensor([1 - sig(0.5), 1.5 * (1 - sig(1.0))], dtype=torch.float64))
    torch.testing.assert_close(chosen, torch.tensor([0.6], dtype=torch.float64))
    torch.testing.assert_close(rejected, torch.tensor([-0.9], dtype=torch.float64))
    # apo_zero_unpaired ignores z₀: 1 - σ(0.5 * 1.2), and σ(0.5 * -1.8)
    losses, _, _ = kto_loss(*args, kl=None, beta=0.5, undesirable_weight=1.5, loss_type="apo_zero_unpaired")
    torch.testing.assert_close(losses, torch.tensor([1 - sig(0.6), 1.5 * sig(-0.9)], dtype=torch.float64))
    # reference point: mean([-1 - -3, -2 - 1]) = mean([2, -3]) = -0.5, clamped to 0; mean([2, 1]) = 1.5
    assert kto_reference_point(torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, 1.0])).item() == 0.0
    assert kto_reference_point(torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -3.0])).item() == 1.5


def test_kto_bad_arguments_say_what_to_change():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="kto_reference_point"):
        kto_loss(x, x, x, x, kl=None, beta=0.1)
    with pytest.raises(ValueError, match="choose one of"):
        kto_loss(x, x, x, x, kl=0.0, beta=0.1, loss_type="bco")
    with pytest.raises(ValueError, match="same shape"):
        kto_loss(x, x, torch.zeros(3), x, kl=0.0, beta=0.1)
