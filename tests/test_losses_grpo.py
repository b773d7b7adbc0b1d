"""posttrain.losses_grpo against TRL 1.16.

How each check references TRL:
- grpo_loss: *called* — TRL's own `GRPOTrainer._compute_loss` runs unbound on a stub `self` that
  holds only the attributes it reads (single process, gradient accumulation 1, train mode, no
  vLLM/entropy/off-policy extras); its model forward `_get_per_token_logps_and_entropies` is
  replaced to return our log-prob tensor, so value, gradient w.r.t. logps and logged clip/KL
  metrics come straight from TRL's code.
- dapo_overlong_penalty: *called* — compared with `trl.rewards.get_soft_overlong_punishment`.
- group_advantages: *re-derived* — TRL computes advantages inline in
  `_generate_and_score_completions` (not separable); the reference below copies those lines and
  uses TRL's own `nanstd`. rloo/batch-baseline/zero-variance: hand-computed numbers.
"""

from __future__ import annotations

import types
import zlib
from collections import defaultdict

import pytest
import torch
from trl.rewards import get_soft_overlong_punishment
from trl.trainer.grpo_trainer import GRPOTrainer
from trl.trainer.utils import nanstd

from posttrain.losses_grpo import (
    batch_baseline_advantages,
    dapo_overlong_penalty,
    group_advantages,
    grpo_loss,
    rloo_advantages,
    zero_variance_groups,
)

B, T, MAX_LEN = 6, 7, 9
LENGTHS = [7, 4, 1, 5, 7, 2]  # trailing padding; B*T tokens would differ from sum(mask)


def _tensors(seed: int):
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in LENGTHS], dtype=torch.int64)
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 2 - 0.1
    logps = old + 0.35 * torch.randn(B, T, generator=g, dtype=torch.float64)  # ratios well outside 1 +- 0.2
    ref = old + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    # Garbage at padding must not matter (TRL multiplies by the mask, we select with it).
    pad = mask == 0
    logps, old, ref = (torch.where(pad, torch.full_like(x, -3.0), x) for x in (logps, old, ref))
    return logps, old, ref, adv, mask


def _accelerator():
    return types.SimpleNamespace(
        num_processes=1,
        gather=lambda x: x,
        gather_for_metrics=lambda x: x,
        reduce=lambda x, reduction="sum": x,
        sync_gradients=True,
    )


def _trl_loss(logps, old, ref, adv, mask, *, loss_type, eps_low, eps_high, delta, beta, level):
    """Run TRL's GRPOTrainer._compute_loss on a stub; returns (loss, grad wrt logps, metrics)."""
    leaf = logps.clone().requires_grad_(True)
    stub = types.SimpleNamespace(
        loss_type=loss_type,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        beta=beta,
        importance_sampling_level=level,
        max_completion_length=MAX_LEN,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        aux_loss_enabled=False,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        _entropy_bonus_enabled=False,
        current_gradient_accumulation_steps=1,
        model=types.SimpleNamespace(training=True),
        accelerator=_accelerator(),
        args=types.SimpleNamespace(delta=delta, use_bias_correction_kl=False, steps_per_generation=1),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _get_per_token_logps_and_entropies=lambda *a, **k: (leaf, torch.zeros_like(leaf), None),
    )
    inputs = {
        "prompt_ids": torch.zeros(B, 2, dtype=torch.int64),
        "prompt_mask": torch.ones(B, 2, dtype=torch.int64),
        "completion_ids": torch.zeros(B, T, dtype=torch.int64),
        "completion_mask": mask,
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),
    }
    loss = GRPOTrainer._compute_loss(stub, None, inputs)
    loss.backward()
    return loss.detach(), leaf.grad, stub._metrics["train"]


CASES = [
    # (loss_type, eps_low, eps_high, delta, beta)
    ("grpo", 0.2, 0.2, None, 0.0),
    ("grpo", 0.2, 0.28, 1.5, 0.04),
    ("dr_grpo", 0.2, 0.28, None, 0.04),
    ("dapo", 0.2, 0.28, None, 0.0),
    ("dapo", 0.1, 0.3, 1.3, 0.1),
    ("bnpo", 0.2, 0.2, None, 0.04),
    ("cispo", 0.2, 1.1, None, 0.0),  # cispo: epsilon_high caps the ratio itself
    ("cispo", 0.2, 1.2, None, 0.04),
]


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type,eps_low,eps_high,delta,beta", CASES)
def test_grpo_loss_matches_trl_value_grad_and_metrics(loss_type, eps_low, eps_high, delta, beta, level):
    logps, old, ref, adv, mask = _tensors(seed=zlib.crc32(f"{loss_type}{eps_high}{level}".encode()) % 1000)
    kw = dict(eps_low=eps_low, eps_high=eps_high, delta=delta, beta=beta, level=level)
    trl_loss, trl_grad, metrics = _trl_loss(logps, old, ref, adv, mask, loss_type=loss_type, **kw)

    leaf = logps.clone().requires_grad_(True)
    loss, stats = grpo_loss(
        leaf, old, adv, mask,
        loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, delta=delta, beta=beta,
        ref_logps=ref, importance_sampling_level=level, max_completion_length=MAX_LEN,
    )  # fmt: skip
    loss.backward()

    assert loss.item() == pytest.approx(trl_loss.item(), rel=1e-12, abs=1e-14)
    torch.testing.assert_close(leaf.grad, trl_grad, rtol=1e-12, atol=1e-14)
    assert (leaf.grad[mask == 0] == 0).all()
    assert trl_grad.abs().sum() > 0
    if loss_type == "cispo":
        # TRL logs fractions from a float32 cast (is_clipped.float()), hence abs=1e-7.
        assert stats["clip_high_fraction"].item() == pytest.approx(metrics["cispo_clip_ratio"][0], abs=1e-7)
        assert stats["clip_low_fraction"].item() == 0.0
    else:
        assert stats["clip_low_fraction"].item() == pytest.approx(metrics["clip_ratio/low_mean"][0], abs=1e-7)
        assert stats["clip_high_fraction"].item() == pytest.approx(metrics["clip_ratio/high_mean"][0], abs=1e-7)
    if beta:
        assert stats["kl"].item() == pytest.approx(metrics["kl"][0], rel=1e-12)
    else:
        assert "kl" not in metrics and stats["kl"].item() == 0.0


def test_tensors_exercise_clipping():
    """Guard for the comparison above: the random ratios do leave the trust region on both sides."""
    logps, old, _, adv, mask = _tensors(seed=0)
    _, stats = grpo_loss(logps, old, adv, mask, loss_type="dapo", epsilon_low=0.2, epsilon_high=0.2)
    assert stats["clip_low_fraction"] > 0 and stats["clip_high_fraction"] > 0


def test_grpo_loss_aggregations_by_hand():
    """On-policy (ratio 1) the clip loss is -A per token; each loss_type only changes the divisor."""
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    logps = torch.zeros(2, 4, dtype=torch.float64)
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    # per-token l = -A: row0 three tokens of -1, row1 one token of +2.
    expected = {"grpo": (-1.0 + 2.0) / 2, "bnpo": (-3.0 + 2.0) / 4, "dapo": (-3.0 + 2.0) / 4,
                "dr_grpo": (-3.0 + 2.0) / (2 * 10)}  # fmt: skip
    for lt, val in expected.items():
        loss, _ = grpo_loss(logps, logps, adv, mask, loss_type=lt, max_completion_length=10)
        assert loss.item() == pytest.approx(val, abs=1e-15), lt
    loss, _ = grpo_loss(logps, logps, adv, mask, loss_type="dapo", num_items=10)  # global-batch token count
    assert loss.item() == pytest.approx(-1.0 / 10, abs=1e-15)


def test_grpo_loss_errors_name_the_fix():
    x, m, a = torch.zeros(1, 2), torch.ones(1, 2), torch.zeros(1)
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_loss(x, x, a, m, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(x, x, a, m, loss_type="grpo", beta=0.1)
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(x, x, a, m, loss_type="ppo")


# ---------------------------------------------------------------- advantages


def _trl_advantages(rewards: torch.Tensor, G: int, scale: str) -> torch.Tensor:
    """TRL 1.16 `_generate_and_score_completions`, sum_then_normalize branch, copied line by line."""
    mean_g = torch.nanmean(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
    if scale in ["group", "none"]:
        std = nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0) if G > 1 else torch.zeros_like(rewards)
    else:
        std = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    adv = rewards - mean_g
    if scale != "none":
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("G", [1, 2, 4])
def test_group_advantages_match_trl(scale, G):
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, -1.0, 0.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(group_advantages(rewards, G, scale=scale), _trl_advantages(rewards, G, scale))


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0], dtype=torch.float64)
    # group 0: mean 1/4, unbiased std = sqrt(((3/4)^2 + 3*(1/4)^2) / 3) = 0.5
    adv = group_advantages(r[:4], 4, scale="group")
    assert adv.tolist() == pytest.approx([0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001])
    assert group_advantages(r, 2, scale="none").tolist() == [0.5, -0.5, 0.0, 0.0, 0.0, 0.0]
    assert zero_variance_groups(r, 2).tolist() == [False, True, True]
    assert zero_variance_groups(r[:4], 4).tolist() == [False]


def test_rloo_and_batch_baseline_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 3.0, 3.0, 0.0], dtype=torch.float64)
    # G=3: group [1,0,0]: 1 - 0 = 1, 0 - 0.5 = -0.5; group [3,3,0]: 3 - 1.5, 3 - 1.5, 0 - 3
    assert rloo_advantages(r, 3).tolist() == pytest.approx([1.0, -0.5, -0.5, 1.5, 1.5, -3.0])
    # Leave-one-out = G/(G-1) times the plain group-mean advantage; each group sums to 0.
    torch.testing.assert_close(rloo_advantages(r, 3), 1.5 * group_advantages(r, 3, scale="none"))
    with pytest.raises(ValueError, match="group_size >= 2"):
        rloo_advantages(r, 1)
    # Batch mean 7/6; unbiased std of r.
    assert batch_baseline_advantages(r, normalize=False).tolist() == pytest.approx([x - 7 / 6 for x in r.tolist()])
    std = (sum((x - 7 / 6) ** 2 for x in r.tolist()) / 5) ** 0.5
    assert batch_baseline_advantages(r).tolist() == pytest.approx([(x - 7 / 6) / std for x in r.tolist()])
    with pytest.raises(ValueError, match="divisible"):
        group_advantages(r, 4)


# ---------------------------------------------------------------- overlong penalty


@pytest.mark.parametrize("max_len,cache", [(100, 20), (10, 0), (10, 10)])
def test_overlong_penalty_matches_trl(max_len, cache):
    lengths = list(range(0, max_len + 5))
    trl = get_soft_overlong_punishment(max_completion_len=max_len, soft_punish_cache=cache)([[1] * n for n in lengths])
    ours = dapo_overlong_penalty(torch.tensor(lengths), max_len, cache)
    assert ours.tolist() == pytest.approx(trl, abs=1e-15)
    assert dapo_overlong_penalty(torch.tensor([90]), 100, 20).item() == -0.5  # TRL's docstring example
