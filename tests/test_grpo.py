"""GRPO: the stage end to end on a tiny model, its signals, verifier failures, dynamic sampling, tool rollouts."""

import json
import math

import pytest
import torch

from posttrain.cli import main
from posttrain.data.prompts import PromptRow
from posttrain.engine import Engine, SamplingParams
from posttrain.losses_grpo import grpo_loss
from posttrain.models import load_model_and_tokenizer, resolve_device
from posttrain.rollouts import Rollout
from posttrain.stages.grpo import GRPOObjective, GRPOOptions, pass_at_k
from posttrain.stages.rl_loop import ActorCritic
from posttrain.tools import CALCULATOR, ToolRunner, format_tool_call
from tests.test_tools import ScriptedLlama

VERIFIERS = '''
from posttrain.grading.verifiers import VerifierResult

def parity(response, spec):
    """Reward 1 for an even-length response, except rows whose answer is "flat" (always 1)."""
    if spec["answer"] == "flat":
        return VerifierResult(1.0, None, "flat")
    return VerifierResult(float(len(response) % 2 == 0), None, "parity")

def fragile(response, spec):
    if spec["answer"] == "boom":
        raise RuntimeError("this verifier breaks on some rows")
    return VerifierResult(0.5, None, "ok")
'''


@pytest.fixture()
def rlvr_dir(tmp_path, monkeypatch):
    (tmp_path / "my_verifiers.py").write_text(VERIFIERS)
    monkeypatch.chdir(tmp_path)
    rows = []
    for i in range(24):
        a, b = 10 + i, 3 + i % 5
        answer = "flat" if i % 2 else str(a + b)
        rows.append({"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}], "answer": answer,
                     "verifier": ["numeric", "my_verifiers:parity"],
                     "meta": {"task": "arithmetic", "answer": str(a + b)}})
    rows[3]["answer"] = "boom"
    (tmp_path / "rlvr.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return tmp_path


def _grpo_args(model, data, out, *extra):
    sets = {"train.max_steps": 2, "rollout.prompts_per_step": 4, "rollout.group_size": 4, "rollout.max_new_tokens": 8,
            "track.every": 1, "track.prompts": 4, "train.batch_size": 8, "model.dtype": "fp32",
            "data.eval_fraction": 0.2, "train.lr": 1e-3}
    args = ["grpo", "--model", str(model), "--data", str(data), "--out", str(out), "--no-progress"]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    return args + list(extra)


def _lines(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_grpo_runs_logs_every_signal_and_writes_a_loadable_policy(tiny_llama_dir, rlvr_dir):
    out = rlvr_dir / "grpo"
    assert main(_grpo_args(tiny_llama_dir, rlvr_dir / "rlvr.jsonl", out, "--set", "rl.beta=0.1",
                           "--set", "rl.iterations=2", "--set", "rl.epsilon_high=0.28")) == 0
    train = [m for m in _lines(out) if "reward" in m]
    assert [m["step"] for m in train] == [1, 2]
    for key in ("reward", "reward_numeric", "reward_my_verifiers:parity", "pass@1", "pass@4", "entropy", "kl",
                "response_length", "clip_low_fraction", "clip_high_fraction", "zero_variance_share", "tool_calls",
                "verifier_errors", "time_generate", "time_reward", "time_update"):
        assert key in train[-1], key
    # Half the rows are "flat" (parity always 1, numeric 0: every sample equal) so at least their groups carry no signal.
    assert all(m["zero_variance_share"] >= 0.25 for m in train)
    assert all(math.isfinite(m["loss"]) and m["kl"] >= 0 for m in train)
    tracked = [m for m in _lines(out) if "track_accuracy" in m]
    assert len(tracked) == 2 and all(0 <= m["track_accuracy"] <= 1 for m in tracked)
    # each verifier's held-out mean too, apart: the parity verifier is 1 on every "flat" row, numeric never is
    assert all(m["track_reward_my_verifiers:parity"] >= 0.5 > m["track_reward_numeric"] for m in tracked)
    metrics = json.loads((out / "provenance.json").read_text())["metrics"]
    assert metrics["heldout_reward_numeric_end"] == round(tracked[-1]["track_reward_numeric"], 4)
    assert (out / "training_curves.png").stat().st_size > 10_000
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["stage"] == "grpo" and "pass@1_last" in prov["metrics"]
    model, _ = load_model_and_tokenizer(out)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_verifier_that_raises_scores_zero_and_the_run_goes_on(tiny_llama_dir, rlvr_dir):
    out = rlvr_dir / "grpo"
    assert main(_grpo_args(tiny_llama_dir, rlvr_dir / "rlvr.jsonl", out, "--set",
                           "reward.verifiers=[my_verifiers:fragile]", "--set", "train.max_steps=6",
                           "--set", "rollout.prompts_per_step=8")) == 0
    train = [m for m in _lines(out) if "reward" in m]
    assert sum(m["verifier_errors"] for m in train) > 0  # the "boom" row was drawn and failed, counted
    assert all(m["reward"] <= 0.5 for m in train) and any(m["reward"] < 0.5 for m in train)


def test_an_unknown_verifier_stops_before_training_naming_the_line(tiny_llama_dir, rlvr_dir, capsys):
    rows = (rlvr_dir / "rlvr.jsonl").read_text().splitlines()
    bad = json.loads(rows[4])
    bad["verifier"] = "nonesuch"
    rows[4] = json.dumps(bad)
    (rlvr_dir / "bad.jsonl").write_text("\n".join(rows) + "\n")
    assert main(_grpo_args(tiny_llama_dir, rlvr_dir / "bad.jsonl", rlvr_dir / "out")) != 0
    err = capsys.readouterr().err
    assert "unknown verifier 'nonesuch'" in err and "Traceback" not in err
    assert not (rlvr_dir / "out" / "model.safetensors").exists()


def test_dynamic_sampling_drops_the_groups_without_signal(tiny_llama_dir, rlvr_dir):
    out = rlvr_dir / "grpo"
    assert main(_grpo_args(tiny_llama_dir, rlvr_dir / "rlvr.jsonl", out, "--set", "rl.dynamic_sampling=drop",
                           "--set", "reward.verifiers=[my_verifiers:parity]", "--set", "track.every=0")) == 0
    train = [m for m in _lines(out) if "reward" in m]
    flats = [round(m["zero_variance_share"] * 4) for m in train]
    assert any(0 < f < 4 for f in flats)  # the "flat" rows always leave some groups without signal
    for m, flat_groups in zip(train, flats):
        # every group flat: nothing is informative, and the update keeps them all (zero advantages)
        assert m["groups_kept"] == (4 - flat_groups if flat_groups < 4 else 4)


def test_resampling_refills_the_batch_with_informative_groups(tiny_llama_dir, rlvr_dir):
    out = rlvr_dir / "grpo"
    assert main(_grpo_args(tiny_llama_dir, rlvr_dir / "rlvr.jsonl", out, "--set", "rl.dynamic_sampling=resample",
                           "--set", "reward.verifiers=[my_verifiers:parity]", "--set", "track.every=0",
                           "--set", "rl.resample_rounds=6")) == 0
    train = [m for m in _lines(out) if "reward" in m]
    assert all(m["groups_kept"] == 4 for m in train)  # refilled to prompts_per_step informative groups
    assert all(m["time_generate_more"] > 0 for m in train)


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(4, 0, 1) == 0.0 and pass_at_k(4, 4, 2) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))


def test_tool_results_in_a_rollout_carry_no_loss_and_no_gradient(tiny_llama_dir):
    """A rollout with a calculator call: the objective reads exactly the log-probs of the tokens the model
    sampled, in order, and the injected tool message is not among its targets."""
    model, tok = load_model_and_tokenizer(tiny_llama_dir, "cpu")  # fp32 sums to compare at 1e-5, on any machine
    model.__class__ = ScriptedLlama
    end = tok.convert_tokens_to_ids("<|im_end|>")
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    model.plan = ids(format_tool_call("calculator", {"expression": "17 * 3"})) + [end] + ids("It is 51.") + [end]
    conversation = [{"role": "user", "content": "What is 17 * 3?"}]
    [c] = Engine(model, tok, dtype="fp32", tools=ToolRunner([CALCULATOR], tok)).chat(
        [conversation], SamplingParams(max_new_tokens=len(model.plan)))
    assert 0 in c.mask and c.text == "It is 51."
    model.__class__ = type(model).__mro__[1]  # the plain model again: its own log-probs are trained

    rollout = Rollout(PromptRow(conversation), c.prompt_ids, c.token_ids, c.mask, c.text, True)
    rollout.advantages = [1.0] * rollout.trained_tokens
    objective = GRPOObjective(tok.pad_token_id, GRPOOptions(loss_type="grpo"), 1.0, 64, ())
    batch = objective.collate([rollout])
    loss, _ = objective.loss(ActorCritic(model), batch)
    loss.backward()
    grad = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    # Reference: one plain forward over prompt + response; log-probs of the sampled (mask 1) tokens only.
    model.zero_grad()
    seq = torch.tensor([c.prompt_ids + c.token_ids])
    logits = model(input_ids=seq).logits[0, :-1].float()
    logps = torch.log_softmax(logits, -1).gather(-1, seq[0, 1:, None]).squeeze(-1)[len(c.prompt_ids) - 1:]
    sampled = logps[torch.tensor(c.mask, dtype=torch.bool)][None]
    assert sampled.shape[1] == rollout.trained_tokens < len(c.token_ids)
    ref, _ = grpo_loss(sampled, sampled.detach(), torch.tensor([1.0]), torch.ones_like(sampled), loss_type="grpo")
    ref.backward()
    torch.testing.assert_close(loss.detach(), ref.detach(), atol=1e-5, rtol=1e-4)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grad[n], p.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_qwen2_dir"])
@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_shared_prompts_give_the_loss_and_gradients_of_one_row_per_response(fixture, loss_type, request):
    """group_batch lays each prompt out once with its responses branching from it; the objective's loss and
    every gradient equal those of the plain layout, where each response carries its own copy of the prompt.
    The group mixes lengths, an injected (mask 0) stretch, and an empty response. On CPU, where branched
    batches are read (modeling.attention.shares_prefixes)."""
    model, tok = load_model_and_tokenizer(request.getfixturevalue(fixture), "cpu")
    g = torch.Generator().manual_seed(0)
    rand = lambda n: torch.randint(5, len(tok) - 5, (n,), generator=g).tolist()  # noqa: E731
    prompts = [PromptRow([{"role": "user", "content": "a"}]), PromptRow([{"role": "user", "content": "b"}])]
    prompt_ids = [rand(9), rand(5)]
    shapes = [(0, 7, None), (0, 3, None), (0, 11, (4, 7)), (0, 0, None), (1, 6, None), (1, 9, None)]
    rollouts = []
    for p, n, injected in shapes:
        mask = [0 if injected and injected[0] <= t < injected[1] else 1 for t in range(n)]
        r = Rollout(prompts[p], prompt_ids[p], rand(n), mask, "", True)
        r.advantages = (torch.randn(1, generator=g).repeat(r.trained_tokens)).tolist()
        rollouts.append(r)
    rollouts = [rollouts[i] for i in (4, 0, 2, 5, 1, 3)]  # groups interleaved, as a shuffle leaves them
    results = {}
    for share in (False, True):
        objective = GRPOObjective(tok.pad_token_id, GRPOOptions(loss_type=loss_type), 1.0, 16, (), share_prompts=share)
        batch = objective.collate(rollouts)
        model.zero_grad()
        loss, _ = objective.loss(ActorCritic(model), batch)
        loss.backward()
        results[share] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()},
                          batch["input_ids"].numel())
    (plain, plain_grad, plain_size), (shared, shared_grad, shared_size) = results[False], results[True]
    assert shared_size < plain_size  # two prompts laid out instead of six
    assert plain.abs() > 1e-3
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-4)
    for n in plain_grad:
        assert plain_grad[n].abs().max() > 0
        torch.testing.assert_close(shared_grad[n], plain_grad[n], atol=1e-5, rtol=1e-4)


def test_the_stage_shares_prompts_where_the_attention_reads_branches(tiny_llama_dir, tmp_path, monkeypatch):
    """On CPU the GRPO stage's update reads branched batches; with share_prompts off, or on a GPU (where
    posttrain's per-example attention does not run), it does not."""
    from posttrain.stages import grpo

    seen = []
    original = grpo.GRPOObjective.collate
    monkeypatch.setattr(grpo.GRPOObjective, "collate", lambda self, r: seen.append(self.share_prompts) or original(self, r))
    rows = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1), "verifier": "numeric"} for i in range(4)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for share in ("true", "false"):
        args = _grpo_args(tiny_llama_dir, tmp_path / "p.jsonl", tmp_path / f"out_{share}", "--set",
                          f"rl.share_prompts={share}", "--set", "track.every=0", "--set", "data.eval_fraction=0")
        assert main(args) == 0
    on_cpu = resolve_device("auto").type == "cpu"
    assert seen and set(seen[:len(seen) // 2]) == {on_cpu} and set(seen[len(seen) // 2:]) == {False}
