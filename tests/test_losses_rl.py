"""Checks of posttrain.losses_rl against independent references and hand-computed values.

TRL 1.16 (the installed version) no longer ships PPOTrainer, `masked_whiten` or GAE, and its
GRPO clipped loss and k3 KL sit inline inside trainer methods, so nothing here is importable
from TRL. The references below are therefore straightforward per-element Python loops written
from the formulas of TRL's (pre-1.0) `trl.core.masked_whiten` / PPOTrainer GAE and loss code;
they share no code with the module under test.
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from posttrain.losses_rl import (
    KL_ESTIMATORS,
    gae,
    kl_k1,
    kl_k2,
    kl_k3,
    masked_mean,
    masked_var,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
)

B, T = 4, 7
LENGTHS = [7, 5, 3, 6]  # trailing padding on three of the four rows


def _mask() -> torch.Tensor:
    return (torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]).double()


def _rand(seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, generator=g, dtype=torch.float64) * scale


def _garbage_in_padding(x: torch.Tensor, mask: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.where(mask.bool(), x, _rand(seed, scale=100.0))


def _valid(x: torch.Tensor) -> list[float]:
    return [float(x[b, t]) for b in range(B) for t in range(LENGTHS[b])]


# ---------------------------------------------------------------- masked statistics


def test_masked_mean_matches_mean_of_valid_and_ignores_nan_padding():
    x, m = _rand(0), _mask()
    assert masked_mean(x, m).item() == pytest.approx(statistics.fmean(_valid(x)), abs=1e-12)
    per_row = masked_mean(x, m, dim=1)
    for b in range(B):
        assert per_row[b].item() == pytest.approx(statistics.fmean(x[b, : LENGTHS[b]].tolist()), abs=1e-12)
    x_nan = torch.where(m.bool(), x, torch.full_like(x, float("nan")))
    assert masked_mean(x_nan, m).item() == pytest.approx(masked_mean(x, m).item(), abs=1e-15)


def test_masked_whiten_matches_unbiased_reference():
    """Reference: TRL's masked_whiten = (x - mean) * rsqrt(var_unbiased + 1e-8), var with Bessel's N/(N-1)."""
    x, m = _rand(1, scale=3.0) + 2.0, _mask()
    vals = _valid(x)
    mu, var = statistics.fmean(vals), statistics.variance(vals)  # sample (unbiased) variance
    assert masked_var(x, m).item() == pytest.approx(var, rel=1e-12)
    assert masked_var(x, m, unbiased=False).item() == pytest.approx(statistics.pvariance(vals), rel=1e-12)
    white = masked_whiten(x, m)
    keep = masked_whiten(x, m, shift_mean=False)
    for b in range(B):
        for t in range(LENGTHS[b]):
            ref = (float(x[b, t]) - mu) / math.sqrt(var + 1e-8)
            assert white[b, t].item() == pytest.approx(ref, abs=1e-12)
            assert keep[b, t].item() == pytest.approx(ref + mu, abs=1e-12)
    # The unbiased variance is what makes the valid whitened values have sample std exactly ~1.
    assert statistics.stdev(_valid(white)) == pytest.approx(1.0, abs=1e-8)
    assert statistics.fmean(_valid(white)) == pytest.approx(0.0, abs=1e-12)


def test_masked_var_needs_two_values():
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(torch.ones(1, 3), torch.tensor([[1.0, 0.0, 0.0]]))


# ---------------------------------------------------------------- GAE


def _gae_reference(rewards, values, lengths, gamma, lam):
    """TRL PPOTrainer's loop: zero rewards/values past the response, then backwards from the end.

    nextvalues = values[t+1] if t < T-1 else 0; delta = r + gamma*nextvalues - V;
    lastgaelam = delta + gamma*lam*lastgaelam; returns = advantages + values.
    """
    adv = [[0.0] * T for _ in range(B)]
    ret = [[0.0] * T for _ in range(B)]
    for b in range(B):
        r = [float(rewards[b, t]) if t < lengths[b] else 0.0 for t in range(T)]
        v = [float(values[b, t]) if t < lengths[b] else 0.0 for t in range(T)]
        last = 0.0
        for t in reversed(range(T)):
            nextv = v[t + 1] if t < T - 1 else 0.0
            last = r[t] + gamma * nextv - v[t] + gamma * lam * last
            adv[b][t] = last
            ret[b][t] = last + v[t]
    return torch.tensor(adv, dtype=torch.float64), torch.tensor(ret, dtype=torch.float64)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0)])
def test_gae_matches_trl_loop(gamma, lam):
    rewards, values, m = _rand(2), _rand(3), _mask()
    adv, ret = gae(rewards, values, m, gamma, lam)
    ref_adv, ref_ret = _gae_reference(rewards, values, LENGTHS, gamma, lam)
    torch.testing.assert_close(adv, ref_adv, rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, ref_ret, rtol=0, atol=1e-12)


def test_gae_three_step_episode_by_hand():
    # r = [0, 0, 1], V = [0.5, 0.6, 0.7], gamma = 0.9, lam = 0.8:
    # delta2 = 1 - 0.7 = 0.3                     A2 = 0.3
    # delta1 = 0.9*0.7 - 0.6 = 0.03              A1 = 0.03 + 0.72*0.3   = 0.246
    # delta0 = 0.9*0.6 - 0.5 = 0.04              A0 = 0.04 + 0.72*0.246 = 0.21712
    r = torch.tensor([[0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    v = torch.tensor([[0.5, 0.6, 0.7, 9.0]], dtype=torch.float64)  # 9.0 is padding
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    adv, ret = gae(r, v, m, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, torch.tensor([[0.21712, 0.246, 0.3, 0.0]], dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, torch.tensor([[0.71712, 0.846, 1.0, 0.0]], dtype=torch.float64), rtol=0, atol=1e-12)
    # gamma = lam = 1: A_t = (sum of future rewards) - V_t, and every return is the episode reward.
    adv, ret = gae(r, v, m, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.4, 0.3, 0.0]], dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64), rtol=0, atol=1e-12)


def test_gae_ignores_padding():
    rewards, values, m = _rand(4), _rand(5), _mask()
    adv, ret = gae(rewards, values, m, 0.95, 0.9)
    adv2, ret2 = gae(_garbage_in_padding(rewards, m, 6), _garbage_in_padding(values, m, 7), m, 0.95, 0.9)
    torch.testing.assert_close(adv, adv2, rtol=0, atol=0)
    torch.testing.assert_close(ret, ret2, rtol=0, atol=0)
    assert (adv[m == 0] == 0).all() and (ret[m == 0] == 0).all()


# ---------------------------------------------------------------- PPO losses


def _ppo_reference(logp, old, adv, lengths, lo, hi):
    """Per-element loop of TRL PPOTrainer's pg loss (with DAPO's separate upper clip)."""
    losses, clipped, kls = [], [], []
    for b in range(B):
        for t in range(lengths[b]):
            d = float(logp[b, t]) - float(old[b, t])
            ratio, a = math.exp(d), float(adv[b, t])
            l1, l2 = -a * ratio, -a * min(max(ratio, 1 - lo), 1 + hi)
            losses.append(max(l1, l2))
            clipped.append(1.0 if l2 > l1 else 0.0)
            kls.append(0.5 * d * d)
    return statistics.fmean(losses), statistics.fmean(clipped), statistics.fmean(kls)


@pytest.mark.parametrize("clip_high", [None, 0.28])
def test_ppo_policy_loss_matches_reference(clip_high):
    old = _rand(8)
    logp = old + _rand(9, scale=0.3)  # ratios spread around 1, both sides of the clip range
    adv, m = _rand(10), _mask()
    loss, frac, kl = ppo_policy_loss(logp, old, adv, m, clip_low=0.2, clip_high=clip_high)
    ref = _ppo_reference(logp, old, adv, LENGTHS, 0.2, 0.2 if clip_high is None else clip_high)
    assert 0.0 < ref[1] < 1.0  # the data exercise both clipped and unclipped tokens
    assert loss.item() == pytest.approx(ref[0], abs=1e-12)
    assert frac.item() == pytest.approx(ref[1], abs=1e-12)
    assert kl.item() == pytest.approx(ref[2], abs=1e-12)


def test_ppo_policy_loss_by_hand_and_gradient():
    # ratios 1.5, 1.5, 0.5, 0.5 with advantages +1, -1, +1, -1; clip 0.2:
    #   A=+1 r=1.5: max(-1.5, -1.2) = -1.2 (clipped)    A=-1 r=1.5: max(1.5, 1.2) = 1.5
    #   A=+1 r=0.5: max(-0.5, -0.8) = -0.5              A=-1 r=0.5: max(0.5, 0.8) = 0.8 (clipped)
    logp = torch.tensor([[math.log(1.5), math.log(1.5), math.log(0.5), math.log(0.5), 5.0]], dtype=torch.float64)
    logp.requires_grad_(True)
    old = torch.zeros(1, 5, dtype=torch.float64)
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0, 3.0]], dtype=torch.float64)
    m = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    loss, frac, _ = ppo_policy_loss(logp, old, adv, m)
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 0.5 + 0.8) / 4, abs=1e-12)
    assert frac.item() == pytest.approx(0.5, abs=1e-12)
    loss.backward()
    # d/dlogp of -A*r is -A*r; clipped and padded tokens get no gradient; divide by 4 tokens.
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 1.5 / 4, -0.5 / 4, 0.0, 0.0]], dtype=torch.float64))
    # clip-higher 0.28 only moves the positive-advantage upper clip: -1.2 -> -1.28.
    loss_hi, _, _ = ppo_policy_loss(logp.detach(), old, adv, m, clip_low=0.2, clip_high=0.28)
    assert loss_hi.item() == pytest.approx((-1.28 + 1.5 - 0.5 + 0.8) / 4, abs=1e-12)


def test_ppo_value_loss_matches_reference_and_hand():
    old, m = _rand(11), _mask()
    values, returns = old + _rand(12, scale=0.4), _rand(13)
    got = ppo_value_loss(values, old, returns, m, clip=0.2)
    per = []
    for b in range(B):
        for t in range(LENGTHS[b]):
            v, vo, r = float(values[b, t]), float(old[b, t]), float(returns[b, t])
            vc = min(max(v, vo - 0.2), vo + 0.2)
            per.append(max((v - r) ** 2, (vc - r) ** 2))
    assert got.item() == pytest.approx(0.5 * statistics.fmean(per), abs=1e-12)
    # v=1.0, v_old=0.5, R=2.0: v_clip=0.7; max(1.0, 1.69) -> 0.5 * 1.69
    one = lambda x: torch.tensor([[x]], dtype=torch.float64)  # noqa: E731
    assert ppo_value_loss(one(1.0), one(0.5), one(2.0), one(1.0)).item() == pytest.approx(0.845, abs=1e-12)


def test_ppo_losses_ignore_padding():
    old, adv, ret, m = _rand(14), _rand(15), _rand(16), _mask()
    logp = old + _rand(17, scale=0.3)
    a = ppo_policy_loss(logp, old, adv, m, clip_high=0.28)
    b = ppo_policy_loss(*(_garbage_in_padding(x, m, 20 + i) for i, x in enumerate((logp, old, adv))), m, clip_high=0.28)
    for x, y in zip(a, b):
        assert x.item() == y.item()
    v = old + _rand(18, scale=0.4)
    assert ppo_value_loss(v, old, ret, m).item() == ppo_value_loss(
        _garbage_in_padding(v, m, 30), _garbage_in_padding(old, m, 31), _garbage_in_padding(ret, m, 32), m
    ).item()


# ---------------------------------------------------------------- KL estimators


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert KL_ESTIMATORS == {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
    assert kl_k1(logp, ref).item() == pytest.approx(math.log(2), abs=1e-6)
    assert kl_k2(logp, ref).item() == pytest.approx(0.5 * math.log(2) ** 2, abs=1e-6)
    assert kl_k3(logp, ref).item() == pytest.approx(0.5 - math.log(0.5) - 1, abs=1e-6)  # r=q/p=0.5


def test_kl_estimators_monte_carlo_meaning():
    """Sampling tokens from p: mean k1 and mean k3 -> KL(p||q) exactly; mean k2 -> E_p[0.5 log^2(p/q)]."""
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), 0)
    q = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), 0)
    kl_true = float((p * (p.log() - q.log())).sum())
    k2_true = float((p * 0.5 * (p.log() - q.log()) ** 2).sum())
    idx = torch.multinomial(p, 400_000, replacement=True, generator=g)
    logp, ref = p.log()[idx], q.log()[idx]
    for name, target in (("k1", kl_true), ("k3", kl_true), ("k2", k2_true)):
        s = KL_ESTIMATORS[name](logp, ref)
        stderr = float(s.std()) / math.sqrt(s.numel())
        assert abs(float(s.mean()) - target) < 4 * stderr, (name, float(s.mean()), target, stderr)
    assert kl_true > 0.05  # the distributions differ enough for the test to mean something


def test_k2_k3_nonnegative_and_zero_only_at_equality():
    logp, ref = _rand(40, scale=5.0), _rand(41, scale=5.0)
    assert (kl_k3(logp, ref) >= 0).all() and (kl_k2(logp, ref) >= 0).all()
    assert (kl_k1(logp, ref) < 0).any()  # k1 per token can be negative
    assert (kl_k3(logp, logp) == 0).all() and (kl_k2(logp, logp) == 0).all()
    assert (kl_k3(logp, ref)[logp != ref] > 0).all()
