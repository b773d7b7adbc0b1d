"""The SFT stage end to end on a tiny model: artifacts, resume, NaN guard."""

import json

import pytest
import torch
from safetensors.torch import load_file

from posttrain.cli import main
from posttrain.config import load_config
from posttrain.errors import NonFiniteLossError
from posttrain.stages.sft import SFTConfig, run_sft

QA = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Egypt", "Cairo"), ("Peru", "Lima")]


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "chats.jsonl"
    with open(path, "w") as f:
        for i in range(40):
            c, a = QA[i % len(QA)]
            f.write(json.dumps({"messages": [
                {"role": "user", "content": f"What is the capital of {c}?"},
                {"role": "assistant", "content": f"The capital of {c} is {a}."}]}) + "\n")
    return path


def cfg(**sets):
    base = {"train.batch_size": 4, "train.lr": 1e-2, "train.log_every": 1, "data.max_length": 64, "model.dtype": "fp32"}
    return load_config(SFTConfig, overrides=base | sets)


def weights(path):
    return load_file(str(path / "model.safetensors"))


def test_sft_writes_a_loadable_artifact_with_provenance(tiny_llama_dir, chat_file, tmp_path):
    out = tmp_path / "sft"
    rc = main(["sft", "--model", str(tiny_llama_dir), "--data", str(chat_file), "--out", str(out),
               "--set", "train.max_steps=4", "--set", "model.dtype=fp32", "--no-progress"])
    assert rc == 0
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["stage"] == "sft" and prov["artifact_id"].startswith("sft-")
    assert prov["data"][0]["rows"] == 38 and len(prov["data"][0]["sha256"]) == 64  # 5% held out
    assert prov["config"]["train"]["max_steps"] == 4 and prov["metrics"]["steps"] == 4
    assert prov["parent"]["weights_sha256"] and prov["libraries"]["torch"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) >= 1
    assert not (tmp_path / "sft.checkpoints").exists()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of Peru?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    gen = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] > ids["input_ids"].shape[1]


def test_training_lowers_the_loss(tiny_llama_dir, chat_file, tmp_path):
    prov = run_sft(tiny_llama_dir, chat_file, tmp_path / "a", cfg(**{"train.max_steps": 15}), progress=False)
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in lines if "loss" in x]
    assert losses[-1] < 0.7 * losses[0]
    assert prov["metrics"]["eval_loss"] is not None


def test_resumed_run_matches_uninterrupted_run(tiny_llama_dir, chat_file, tmp_path, monkeypatch):
    c = cfg(**{"train.max_steps": 6, "train.save_every": 3})
    run_sft(tiny_llama_dir, chat_file, tmp_path / "full", c, progress=False)

    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # killed during step 5, after the step-3 checkpoint
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run_sft(tiny_llama_dir, chat_file, tmp_path / "resumed", c, progress=False)
    assert not (tmp_path / "resumed").exists()  # no half-written artifact
    assert (tmp_path / "resumed.checkpoints" / "step-000003").exists()
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    run_sft(tiny_llama_dir, chat_file, tmp_path / "resumed", c, resume=True, progress=False)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_llama_dir, chat_file, tmp_path, monkeypatch):
    import posttrain.modeling.forward as forward

    real = forward.token_nll_sum
    calls = {"n": 0}

    def poisoned(logits, targets):
        calls["n"] += 1
        out = real(logits, targets)
        return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr(forward, "token_nll_sum", poisoned)
    with pytest.raises(NonFiniteLossError, match="step 3: the loss is nan.*step-000002"):
        run_sft(tiny_llama_dir, chat_file, tmp_path / "x", cfg(**{"train.max_steps": 6}), progress=False)
    assert not (tmp_path / "x").exists()
    good = tmp_path / "x.checkpoints" / "step-000002"
    saved = load_file(str(good / "trainable.safetensors"))
    assert all(torch.isfinite(t).all() for t in saved.values())


def test_lora_trains_and_merges(tiny_llama_dir, chat_file, tmp_path):
    c = cfg(**{"train.max_steps": 3, "model.lora.enabled": True, "model.lora.r": 4})
    run_sft(tiny_llama_dir, chat_file, tmp_path / "lora", c, progress=False)
    w = weights(tmp_path / "lora")
    assert not any("lora" in k for k in w)  # merged: a plain model
    base = weights(tiny_llama_dir)
    assert any(not torch.equal(w[k], base[k]) for k in base if "proj" in k)


def test_the_same_seed_gives_the_same_lora_run_and_another_seed_another(tiny_llama_dir, chat_file, tmp_path):
    """LoRA's A matrices start at random: from the run's seed, so a run with the same seed, data and settings
    gives the same weights even after other work moved the global generator (as a recipe's earlier stages do)."""
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        torch.rand(7)  # the global generator moves between runs
        c = cfg(**{"train.max_steps": 3, "train.seed": seed, "model.lora.enabled": True, "model.lora.r": 4})
        run_sft(tiny_llama_dir, chat_file, tmp_path / name, c, progress=False)
        runs[name] = weights(tmp_path / name)
    proj = [k for k in runs["a"] if "proj" in k]
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert any(not torch.equal(runs["a"][k], runs["c"][k]) for k in proj)


def test_lora_trainable_tokens_train_exactly_those_embedding_rows(tiny_llama_dir, chat_file, tmp_path):
    from posttrain.models import load_tokenizer

    text = "<|im_end|>"
    c = cfg(**{"train.max_steps": 3, "train.lr": 1e-2, "model.lora.enabled": True, "model.lora.r": 4,
               "model.lora.trainable_tokens": text})
    run_sft(tiny_llama_dir, chat_file, tmp_path / "lora", c, progress=False)
    ids = set(load_tokenizer(tiny_llama_dir)(text, add_special_tokens=False)["input_ids"])
    key = next(k for k in weights(tiny_llama_dir) if "embed_tokens" in k)
    before, after = weights(tiny_llama_dir)[key], weights(tmp_path / "lora")[key]
    changed = {i for i in range(before.shape[0]) if not torch.equal(before[i], after[i])}
    assert changed == ids  # the listed tokens' rows moved, and no other row did


def test_lora_trainable_tokens_from_a_corpus_train_the_rows_of_tokens_it_never_holds(tiny_llama_dir, chat_file, tmp_path):
    from posttrain.models import load_tokenizer

    tok = load_tokenizer(tiny_llama_dir)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("the capital of the land", "a river runs")))
    seen = {i for t in ("the capital of the land", "a river runs") for i in tok(t, add_special_tokens=False)["input_ids"]}
    c = cfg(**{"train.max_steps": 3, "train.lr": 1e-2, "model.lora.enabled": True, "model.lora.r": 4,
               "model.lora.trainable_tokens_from": str(corpus)})
    run_sft(tiny_llama_dir, chat_file, tmp_path / "lora", c, progress=False)
    key = next(k for k in weights(tiny_llama_dir) if "embed_tokens" in k)
    before, after = weights(tiny_llama_dir)[key], weights(tmp_path / "lora")[key]
    changed = {i for i in range(before.shape[0]) if not torch.equal(before[i], after[i])}
    assert seen and not changed & seen  # the corpus's own tokens stay frozen
    assert not changed & set(tok.all_special_ids)
    used = {i for i in range(before.shape[0]) if i not in seen and i not in tok.all_special_ids}
    assert changed and changed <= used  # only rows of tokens the corpus never holds moved


def test_unmerged_lora_artifact_loads_on_its_parent_with_peft_and_in_posttrain(tiny_llama_dir, chat_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from posttrain.models import load_model

    c = cfg(**{"train.max_steps": 3, "model.lora.enabled": True, "model.lora.r": 4, "model.lora.merge_on_save": False})
    run_sft(tiny_llama_dir, chat_file, tmp_path / "adapter", c, progress=False)
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "provenance.json"} <= files and "config.json" not in files
    parent = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    ids = torch.tensor([[5, 17, 42, 9, 33]])
    with torch.no_grad():
        before = parent(ids).logits
        peft_logits = PeftModel.from_pretrained(parent, tmp_path / "adapter").eval()(ids).logits
        ours = load_model(tmp_path / "adapter", "cpu").eval()(ids).logits
    assert not torch.allclose(before, peft_logits, atol=1e-4)  # the adapter changed the model
    torch.testing.assert_close(ours, peft_logits, atol=1e-5, rtol=1e-5)


def test_replay_mixes_text_with_full_loss(tiny_llama_dir, chat_file, tmp_path):
    from posttrain.data.formats import load_dataset_rows  # noqa: F401  (the same reader the stage uses)
    from posttrain.models import load_tokenizer
    from posttrain.stages.sft import prepare_sft_rows

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"The capital of {c} is {a}. " * 3}) + "\n" for c, a in QA * 4))
    tok = load_tokenizer(tiny_llama_dir)
    plain = prepare_sft_rows(tok, chat_file, cfg())
    mixed = prepare_sft_rows(tok, chat_file, cfg(**{"data.replay_data": str(corpus), "data.replay_ratio": 0.5}))
    plain_tokens = sum(len(r) for r in plain[0])
    mixed_tokens = sum(len(r) for r in mixed[0])
    assert 1.4 * plain_tokens <= mixed_tokens <= 1.7 * plain_tokens
    assert mixed[4][-1]["role"] == "replay" and mixed[4][-1]["examples"] > 0
    # replay text carries loss on every token but the first of each chunk
    full = sum(sum(r.loss_mask) for r in mixed[0]) - sum(sum(r.loss_mask) for r in plain[0])
    assert full >= 0.9 * (mixed_tokens - plain_tokens)


def test_gradient_accumulation_matches_one_big_batch(tiny_llama_dir, chat_file, tmp_path):
    """Loss is averaged over target tokens of the whole optimizer step, so 2x2 == 1x4."""
    run_sft(tiny_llama_dir, chat_file, tmp_path / "big", cfg(**{"train.max_steps": 2, "train.batch_size": 4,
                                                                 "data.packing": False}), progress=False)
    run_sft(tiny_llama_dir, chat_file, tmp_path / "acc", cfg(**{"train.max_steps": 2, "train.batch_size": 2,
                                                                 "train.grad_accum": 2, "data.packing": False}), progress=False)
    a, b = weights(tmp_path / "big"), weights(tmp_path / "acc")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-6, rtol=1e-5)
