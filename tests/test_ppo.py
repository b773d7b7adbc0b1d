"""PPO: the RLHF reward maths on tensors, the rollout masks, and the stage end to end on a tiny model."""

import json
import math

import pytest
import torch

from posttrain.cli import main
from posttrain.data.chat import render_generation_prompt
from posttrain.data.prompts import PromptRow
from posttrain.losses_rl import adaptive_kl_coef, explained_variance, kl_penalised_rewards
from posttrain.models import load_model_and_tokenizer
from posttrain.modeling.forward import per_sequence, policy_outputs
from posttrain.rollouts import Rollout, rollout_batch, unflatten
from posttrain.stages.ppo import PPOObjective, PPOOptions
from posttrain.stages.rl_loop import ActorCritic

COUNTRIES = ["France", "Japan", "Italy", "Egypt", "Peru", "Chile", "Kenya", "Spain", "Nepal", "Cuba"]


# ---------------------------------------------------------------- maths


def test_kl_penalised_rewards_put_the_score_on_the_last_valid_token():
    logps = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, 9.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-0.3, -1.7, -9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards, kl = kl_penalised_rewards(torch.tensor([2.0, -1.0]), logps, ref, mask, kl_coef=0.1)
    # k1 = logp - ref per token; row 2's third position is padding: no KL, no score there.
    torch.testing.assert_close(kl, torch.tensor([[0.5, -1.0, 0.0], [0.0, 1.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.1, 2.0], [0.0, -0.1 - 1.0, 0.0]]))


def test_adaptive_kl_coefficient_moves_towards_the_target_and_is_clipped():
    assert adaptive_kl_coef(0.1, kl=6.0, target=6.0, horizon=100, n_steps=10) == pytest.approx(0.1)
    assert adaptive_kl_coef(0.1, kl=7.2, target=6.0, horizon=100, n_steps=10) == pytest.approx(0.1 * 1.02)
    assert adaptive_kl_coef(0.1, kl=60.0, target=6.0, horizon=100, n_steps=10) == pytest.approx(0.1 * 1.02)  # clip 0.2
    assert adaptive_kl_coef(0.1, kl=0.0, target=6.0, horizon=100, n_steps=10) == pytest.approx(0.1 * 0.98)


def test_explained_variance_is_one_for_perfect_values_and_zero_for_the_mean():
    returns = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 3.0), returns, mask) == pytest.approx(0.0, abs=1e-6)


def test_per_sequence_restores_each_examples_token_order_from_a_packed_layout():
    # Packed rows hold examples 2, 0 (row 1) and 1 (row 2): flat order is 2,2,0,0,0,1.
    flat = torch.tensor([20.0, 21.0, 0.0, 1.0, 2.0, 10.0])
    seq = torch.tensor([2, 2, 0, 0, 0, 1])
    grid, mask = per_sequence(flat, seq, 3)
    assert grid.tolist() == [[0.0, 1.0, 2.0], [10.0, 0.0, 0.0], [20.0, 21.0, 0.0]]
    assert mask.tolist() == [[True, True, True], [True, False, False], [True, True, False]]


# ---------------------------------------------------------------- rollouts and masks


def _rollouts(tok):
    rows = []
    for i, c in enumerate(COUNTRIES[:3]):
        prompt = [{"role": "user", "content": f"Tell me about {c}."}]
        ids = tok(render_generation_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
        response = tok(f"{c} is a country", add_special_tokens=False)["input_ids"][: 4 + i]
        # The middle rollout has two runtime-injected tokens (a tool result): mask 0.
        mask = [1] * len(response) if i != 1 else [1, 0, 0] + [1] * (len(response) - 3)
        rows.append(Rollout(PromptRow(prompt), ids, response, mask, "", True))
    return rows


def test_injected_tokens_carry_no_loss_and_no_policy_gradient(tiny_llama_dir):
    model, tok = load_model_and_tokenizer(tiny_llama_dir, "cpu")  # the batch below is built on the CPU
    rollouts = _rollouts(tok)
    for r in rollouts:
        n = r.trained_tokens
        r.old_logps, r.old_values, r.returns = [0.0] * n, [0.0] * n, [0.0] * n
        r.advantages = [1.0] * n
    objective = PPOObjective(tok.pad_token_id, PPOOptions())
    batch = objective.collate(rollouts)
    assert objective.units(batch) == sum(r.trained_tokens for r in rollouts) == sum(sum(r.response_mask) for r in rollouts)
    head = torch.nn.Linear(model.config.hidden_size, 1)
    ac = ActorCritic(model, value_head=head)
    embed = model.get_input_embeddings()
    grads = {}
    embed.weight.register_hook(lambda g: grads.setdefault("embed", g.clone()))
    loss, metrics = objective.loss(ac, batch)
    loss.backward()
    # The logits at the positions that predict injected tokens are never read: the loss is the same whatever those
    # tokens' advantages would have been, and the targets it reads are exactly the sampled tokens, in order.
    out = policy_outputs(model, batch)
    grid = unflatten(out["logps"], out["sequence"], batch)
    for i, r in enumerate(rollouts):
        sampled = [t for t, m in zip(r.response_ids, r.response_mask) if m]
        full = torch.log_softmax(model(torch.tensor([r.prompt_ids + r.response_ids])).logits[0].float(), -1)
        start = len(r.prompt_ids)
        expect = [float(full.detach()[start + k - 1, t]) for k, (t, m) in enumerate(zip(r.response_ids, r.response_mask)) if m]
        assert grid[i, :len(sampled)].tolist() == pytest.approx(expect, abs=1e-4)
        assert not batch["response_mask"][i, len(sampled):].any()
    assert "embed" in grads and math.isfinite(float(loss.detach()))


# ---------------------------------------------------------------- the stage end to end


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    with open(path, "w") as f:
        for i in range(24):
            c = COUNTRIES[i % len(COUNTRIES)]
            f.write(json.dumps({"prompt": [{"role": "user", "content": f"What is the capital of {c}?"}],
                                "meta": {"task": "fact", "answer": c, "aliases": []}}) + "\n")
    return path


def _ppo_args(model, data, out, *extra):
    sets = {"reward.model": "gold", "train.max_steps": 3, "rollout.prompts_per_step": 6, "rollout.max_new_tokens": 8,
            "track.every": 2, "track.prompts": 4, "train.batch_size": 4, "model.dtype": "fp32", "rl.epochs": 2,
            "rl.minibatches": 2, "data.eval_fraction": 0.2, "train.save_every": 1}
    args = ["ppo", "--model", str(model), "--data", str(data), "--out", str(out), "--no-progress"]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    return args + list(extra)


@pytest.mark.parametrize("value_model", ["shared", "separate"])
def test_ppo_runs_logs_every_signal_and_writes_a_loadable_policy(tiny_llama_dir, prompt_file, tmp_path, value_model):
    out = tmp_path / "ppo"
    # lr 1e-3: the policy moves far enough from the reference that every tracked KL is clearly positive.
    # The tracked KL is a sampled estimate, whose sign the draws decide when it is small: on 4 prompts one
    # point came out at -0.07 on the CPU (seeded, separate value head) and -0.54 on an H200; on 8 prompts,
    # on the CPU, where the seed fixes the draws, both points are above 0.25.
    assert main(_ppo_args(tiny_llama_dir, prompt_file, out, "--set", f"rl.value_model={value_model}",
                          "--set", "train.lr=1e-3", "--set", "model.device=cpu", "--set", "track.prompts=8")) == 0
    prov = json.loads((out / "provenance.json").read_text())
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if "loss" in x]
    assert [x["step"] for x in train] == [1, 2, 3]
    for key in ("reward", "gold", "kl", "kl_coef", "entropy", "response_length", "no_eos", "clip_fraction",
                "value_loss", "policy_loss", "explained_variance", "time_generate", "time_reward", "time_reference",
                "time_value", "time_update"):
        assert key in train[-1], key
    assert 0 <= train[-1]["gold"] <= 1 and train[-1]["entropy"] > 0 and 1 <= train[-1]["response_length"] <= 8
    curve = prov["metrics"]["overoptimisation"]["points"]
    assert [p["iteration"] for p in curve] == [0, 2, 3]
    assert curve[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the policy starts as the reference
    assert all(p["kl"] > 0.01 for p in curve[1:]), curve
    assert all(p["d"] == pytest.approx(math.sqrt(max(p["kl"], 0.0))) for p in curve)
    assert not list(tmp_path.glob("ppo.checkpoints/*"))
    fit = prov["metrics"]["overoptimisation"]["gold_fit"]
    assert fit["form"] == "rl" and fit["points"] == 2 and (out / "overoptimisation.png").stat().st_size > 1000
    policy, _ = load_model_and_tokenizer(out)
    assert type(policy).__name__ == "LlamaForCausalLM"
    assert not (out / "value").exists() and "score.weight" not in (out / "model.safetensors").read_bytes()[:4096].decode(
        "latin1")


def test_ppo_lora_reference_is_the_model_with_adapters_off(tiny_llama_dir, prompt_file, tmp_path):
    out = tmp_path / "ppo"
    assert main(_ppo_args(tiny_llama_dir, prompt_file, out, "--set", "model.lora.enabled=true",
                          "--set", "rl.value_model=shared", "--set", "train.max_steps=1")) == 0
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["metrics"]["overoptimisation"]["points"][0]["kl"] == pytest.approx(0.0, abs=1e-5)


def test_ppo_without_a_reward_says_which_option_to_set(tiny_llama_dir, prompt_file, tmp_path, capsys):
    args = [a for a in _ppo_args(tiny_llama_dir, prompt_file, tmp_path / "o") if a != "reward.model=gold"]
    args = [a for i, a in enumerate(args) if not (a == "--set" and i + 1 < len(args) and args[i + 1].startswith("train.max"))]
    assert main(args + ["--set", "reward.model=null"]) != 0
    err = capsys.readouterr().err
    assert "reward.model is not set" in err and "--set reward.model=" in err and "Traceback" not in err


def test_ppo_resumes_after_ctrl_c_from_the_last_iteration_as_the_same_run(tiny_llama_dir, prompt_file, tmp_path,
                                                                         monkeypatch, capsys):
    from posttrain.stages.rl_loop import RLLoop

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(_ppo_args(tiny_llama_dir, prompt_file, whole, "--set", "rl.value_model=shared")) == 0
    real = RLLoop.iteration

    def stop_in_third(self, it):
        if it == 2:
            raise KeyboardInterrupt
        return real(self, it)

    monkeypatch.setattr(RLLoop, "iteration", stop_in_third)
    assert main(_ppo_args(tiny_llama_dir, prompt_file, cut, "--set", "rl.value_model=shared")) != 0
    assert "interrupted (Ctrl-C) in iteration 3 of 3" in capsys.readouterr().err
    assert not cut.exists() and (tmp_path / "cut.checkpoints").exists()
    monkeypatch.setattr(RLLoop, "iteration", real)
    assert main(_ppo_args(tiny_llama_dir, prompt_file, cut, "--set", "rl.value_model=shared", "--resume")) == 0
    a = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines()]
    drop = lambda line: {k: v for k, v in line.items() if not k.startswith("time_")}  # noqa: E731
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert drop(y) == pytest.approx(drop(x), rel=1e-4, abs=1e-5, nan_ok=True)
