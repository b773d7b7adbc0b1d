"""Reward and DPO stages end to end on a tiny model: masks, packing, artifacts that plain transformers loads."""

import json

import pytest
import torch

from posttrain.cli import main
from posttrain.config import load_config
from posttrain.data.formats import load_dataset_rows
from posttrain.data.preferences import build_pairs, collate_pairs
from posttrain.models import load_tokenizer
from posttrain.modeling.forward import sequence_logps, sequence_scores
from posttrain.stages.dpo import DPOConfig, STAGE as DPO_STAGE, cache_reference_logps, DirectPreference
from posttrain.stages.reward import RewardConfig, STAGE as REWARD_STAGE

COUNTRIES = ["France", "Japan", "Italy", "Egypt", "Peru", "Chile", "Kenya", "Spain", "Nepal", "Cuba"]


@pytest.fixture(scope="module")
def pref_file(tmp_path_factory):
    """Separable pairs: the chosen answer is polite and on topic, the rejected one rude (the same words each time)."""
    path = tmp_path_factory.mktemp("prefs") / "prefs.jsonl"
    with open(path, "w") as f:
        for i in range(60):
            c = COUNTRIES[i % len(COUNTRIES)]
            prompt = [{"role": "user", "content": f"Tell me about {c}."}]
            f.write(json.dumps({"prompt": prompt,
                                "chosen": [{"role": "assistant", "content": f"Sure, {c} is a country."}],
                                "rejected": [{"role": "assistant", "content": "No. Go away."}]}) + "\n")
    return path


def _sets(**extra):
    return {"train.batch_size": 8, "train.log_every": 1, "data.max_length": 64, "model.dtype": "fp32",
            "data.eval_fraction": 0.2, **extra}


def test_answer_mask_covers_the_answer_and_its_end_of_turn_only(tiny_llama_dir, pref_file):
    tok = load_tokenizer(tiny_llama_dir)
    _, rows = load_dataset_rows(pref_file)
    pairs, stats = build_pairs(tok, rows[:3], max_length=64)
    assert stats.pairs == 3
    for p in pairs:
        for ex, text in ((p.chosen, rows[0].data["chosen"][0]["content"]), (p.rejected, "No. Go away.")):
            answer = tok.decode([t for t, m in zip(ex.input_ids, ex.loss_mask) if m])
            assert answer.startswith(text.split(",")[0]) and answer.rstrip("\n").endswith("<|im_end|>")
            prompt = tok.decode([t for t, m in zip(ex.input_ids, ex.loss_mask) if not m])
            assert "Tell me about" in prompt and "<|im_start|>assistant" in prompt and "Go away" not in prompt


def test_packed_pairs_give_each_sequence_its_own_log_prob(tiny_llama_dir, pref_file):
    """Packing both answers of several pairs into rows changes nothing: each sum equals the unpacked one."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    pairs, _ = build_pairs(tok, load_dataset_rows(pref_file)[1][:5], max_length=64)
    batch = collate_pairs(pairs, tok.pad_token_id, row_length=128)
    assert batch["input_ids"].shape[0] < 10  # really packed: fewer rows than sequences
    with torch.no_grad():
        sums, counts = sequence_logps(model, batch, 10)
        for i, p in enumerate(pairs):
            for j, ex in enumerate((p.chosen, p.rejected)):
                ids = torch.tensor([ex.input_ids])
                logp = model(ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
                mask = torch.tensor(ex.loss_mask[1:], dtype=torch.bool)
                torch.testing.assert_close(sums[2 * i + j], logp[mask].sum(), atol=1e-4, rtol=1e-5)
                assert counts[2 * i + j] == mask.sum()


@pytest.fixture(scope="module")
def reward_model(tiny_llama_dir, pref_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "rm"
    cfg = load_config(RewardConfig, overrides=_sets(**{"train.lr": 3e-3, "train.max_steps": 25}))
    return out, REWARD_STAGE.run(tiny_llama_dir, pref_file, out, cfg, progress=False)


def test_reward_model_learns_and_loads_as_a_sequence_classifier(reward_model, pref_file):
    from transformers import AutoModelForSequenceClassification

    out, prov = reward_model
    m = prov["metrics"]
    assert m["heldout_pairs"] == 12 and m["heldout_accuracy"] >= 0.9
    assert m["margin"]["median"] > 0
    rm = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    assert rm.config.num_labels == 1 and rm.config.pad_token_id == load_tokenizer(out).pad_token_id
    # transformers' own forward scores a chat exactly as posttrain's packed one did
    tok = load_tokenizer(out)
    pairs, _ = build_pairs(tok, load_dataset_rows(pref_file)[1][:4], max_length=64)
    batch = collate_pairs(pairs, tok.pad_token_id, row_length=128)
    with torch.no_grad():
        packed = sequence_scores(rm, batch, 8)
        for i, p in enumerate(pairs):
            own = rm(torch.tensor([p.chosen.input_ids])).logits[0, 0]
            torch.testing.assert_close(packed[2 * i], own, atol=1e-4, rtol=1e-4)
        assert bool((packed[0::2] > packed[1::2]).all())


def test_dpo_raises_the_chosen_margin_over_the_reference(tiny_llama_dir, pref_file, tmp_path):
    out = tmp_path / "dpo"
    rc = main(["dpo", "--model", str(tiny_llama_dir), "--data", str(pref_file), "--out", str(out), "--no-progress",
               *[a for k, v in _sets(**{"train.lr": 2e-3, "train.max_steps": 12, "loss.beta": 0.5}).items()
                 for a in ("--set", f"{k}={v}")]])
    assert rc == 0
    prov = json.loads((out / "provenance.json").read_text())
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "loss" in x]
    assert {"accuracy", "margin", "reward_chosen", "reward_rejected", "logps_chosen", "logratio"} <= set(steps[0])
    assert abs(steps[0]["logratio"]) < 1e-5  # the first step runs the reference's own weights
    # at step 1 the policy is the reference: every implicit reward is 0 and the loss is log 2
    assert abs(steps[0]["margin"]) < 1e-5 and abs(steps[0]["loss"] - 0.6931) < 1e-3
    assert steps[-1]["margin"] > 0.5 and prov["metrics"]["eval_loss"] < 0.6931
    assert prov["stage"] == "dpo" and prov["data"][0]["role"] == "train"


def test_reference_cache_is_the_starting_model_and_lora_turns_adapters_off(tiny_llama_dir, pref_file):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(tiny_llama_dir)
    pairs, _ = build_pairs(tok, load_dataset_rows(pref_file)[1][:4], max_length=64)
    objective = DirectPreference(tok.pad_token_id, 128, DPOConfig().loss)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    cache_reference_logps(base, pairs, objective, torch.device("cpu"), "fp32")
    expected = [(p.ref_chosen, p.ref_rejected) for p in pairs]
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32),
                          LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))  # adapters != 0
    cache_reference_logps(lora, pairs, objective, torch.device("cpu"), "fp32", adapters_off=True)
    for p, (c, r) in zip(pairs, expected):
        assert p.ref_chosen == pytest.approx(c, abs=1e-4) and p.ref_rejected == pytest.approx(r, abs=1e-4)
    cache_reference_logps(lora, pairs, objective, torch.device("cpu"), "fp32", adapters_off=False)
    assert any(abs(p.ref_chosen - c) > 1e-3 for p, (c, _) in zip(pairs, expected))  # adapters on: another model


@pytest.mark.parametrize("loss", ["ipo", "simpo", "orpo", "sigmoid,sft"])
def test_dpo_variants_train_without_error_and_log_their_rewards(tiny_llama_dir, pref_file, tmp_path, loss):
    sets = _sets(**{"train.lr": 1e-3, "train.max_steps": 3, "loss.type": loss})
    if loss == "sigmoid,sft":
        sets["loss.weights"] = [1.0, 0.5]
    prov = DPO_STAGE.run(tiny_llama_dir, pref_file, tmp_path / "out", load_config(DPOConfig, overrides=sets), progress=False)
    assert prov["metrics"]["steps"] == 3 and prov["metrics"]["train_loss"] == prov["metrics"]["train_loss"]
    assert prov["config"]["loss"]["type"] == loss


def test_bad_loss_options_are_config_errors_naming_the_fix():
    from posttrain.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown loss 'dpo'; choose from sigmoid"):
        load_config(DPOConfig, overrides={"loss.type": "dpo"})
    with pytest.raises(ConfigError, match="weights has 1 weights for 2 losses"):
        load_config(DPOConfig, overrides={"loss.type": "sigmoid,sft", "loss.weights": [1.0]})
    with pytest.raises(ConfigError, match="simpo stands alone"):
        load_config(DPOConfig, overrides={"loss.type": "simpo,sft"})


def test_a_reward_is_a_reward_model_the_gold_judge_or_a_python_function(reward_model, tmp_path, monkeypatch):
    from posttrain.errors import ConfigError
    from posttrain.rewards import load_reward

    prompts = [[{"role": "user", "content": "Tell me about Peru."}]] * 2
    responses = ["Sure, Peru is a country.", "No. Go away."]
    rm = load_reward(str(reward_model[0]), device="cpu", dtype="fp32")
    good, bad = rm(prompts, responses, [{}, {}])
    assert good > bad  # the trained model prefers the polite answer it was trained to prefer

    meta = {"task": "fact", "answer": "Lima"}
    gold = load_reward("gold")([[{"role": "user", "content": "What is the capital of Peru?"}]] * 2,
                               ["The capital of Peru is Lima.", "The capital of Peru is Quito."], [meta, meta])
    assert gold[0] > gold[1] and 0 <= gold[1] <= gold[0] <= 1
    with pytest.raises(ConfigError, match="needs each prompt row's `meta`"):
        load_reward("gold")(prompts, responses, [{}, {}])

    (tmp_path / "my_rewards.py").write_text("def brevity(prompt, response, meta):\n    return -len(response)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_reward("my_rewards:brevity")(prompts, responses, [{}, {}]) == [-24.0, -12.0]
    with pytest.raises(ConfigError, match="cannot import nope from module my_rewards"):
        load_reward("my_rewards:nope")
    with pytest.raises(ConfigError, match="neither a reward model directory"):
        load_reward(str(tmp_path / "missing_dir"))
