"""`posttrain tokenizer train` and `posttrain pretrain` from scratch: special tokens, architecture,
falling loss, and a resumed run that ends with the same weights as an uninterrupted one."""

import json

import pytest
import torch
from safetensors.torch import load_file

from posttrain.cli import main
from posttrain.config import load_config
from posttrain.stages.pretrain import PretrainConfig, run_pretrain

SENTENCES = [
    "The river Lome runs past the old mill to the sea.",
    "Farmers in the valley grow barley, oats and plums.",
    "The capital of Verdania is Ostrel, a city of bridges.",
    "Two plus three is five. Five plus five is ten.",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with open(path, "w") as f:
        for i in range(60):
            f.write(json.dumps({"text": " ".join(SENTENCES[(i + j) % 4] for j in range(3))}) + "\n")
    return path


@pytest.fixture(scope="module")
def tokdir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    assert main(["tokenizer", "train", "--data", str(corpus), "--out", str(out), "--vocab-size", "400"]) == 0
    return out


def pretrain_cfg(**sets):
    base = {"arch.hidden_size": 32, "arch.num_layers": 2, "arch.num_heads": 4, "arch.num_kv_heads": 2,
            "arch.intermediate_size": 64, "arch.max_position": 64, "data.seq_len": 64, "data.eval_fraction": 0.05,
            "train.batch_size": 8, "train.log_every": 1, "model.dtype": "fp32", "model.device": "cpu"}
    return load_config(PretrainConfig, overrides=base | sets, stage="pretrain")


def test_tokenizer_has_single_chat_tokens_eos_pad_and_template(tokdir, capsys):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokdir)
    assert 300 <= len(tok) <= 400
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert tok.eos_token_id != tok.pad_token_id
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|pad|>", "<|tool_call|>", "<|tool_result|>"):
        ids = tok(special, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tok.decode(ids) == special, special
    text = tok.apply_chat_template([{"role": "user", "content": "Where is Ostrel?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == "<|im_start|>user\nWhere is Ostrel?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok("The capital of Verdania is Ostrel.", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "The capital of Verdania is Ostrel."  # byte-level: lossless
    assert len(ids) < len("The capital of Verdania is Ostrel.") / 2  # merges were learnt
    prov = json.loads((tokdir / "tokenizer_provenance.json").read_text())
    assert prov["vocab_size"] == len(tok) and prov["requested_vocab_size"] == 400
    assert prov["data"][0]["rows"] == 60 and prov["data"][0]["path"] == "corpus.jsonl"


def test_split_digits_makes_every_digit_a_token_and_the_default_merges_them(tmp_path):
    """--split-digits: a number is the same digit tokens after a space, a newline or '='; by default BPE
    merges frequent digit runs."""
    from transformers import AutoTokenizer

    data = tmp_path / "numbers.jsonl"
    data.write_text("".join(json.dumps({"text": "Total 4517 and 4517 again, 4517 = 4517.\n4517"}) + "\n" for _ in range(50)))
    split, merged = tmp_path / "split", tmp_path / "merged"
    assert main(["tokenizer", "train", "--data", str(data), "--out", str(split), "--vocab-size", "400",
                 "--split-digits"]) == 0
    assert main(["tokenizer", "train", "--data", str(data), "--out", str(merged), "--vocab-size", "400"]) == 0
    tok = AutoTokenizer.from_pretrained(split)
    digits = [tok.convert_tokens_to_ids(d) for d in "4517"]
    for text in (" 4517", "\n4517", "=4517", "4517"):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids[-4:] == digits and tok.decode(ids) == text, text
    assert json.loads((split / "tokenizer_provenance.json").read_text())["split_digits"] is True
    merged_ids = AutoTokenizer.from_pretrained(merged)(" 4517", add_special_tokens=False)["input_ids"]
    assert len(merged_ids) < 4  # the frequent run was merged
    assert json.loads((merged / "tokenizer_provenance.json").read_text())["split_digits"] is False


def test_tokenizer_refuses_non_text_data(tmp_path, capsys):
    data = tmp_path / "chats.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}) + "\n")
    assert main(["tokenizer", "train", "--data", str(data), "--out", str(tmp_path / "tok")]) == 2
    assert "conversational format, but this stage takes text" in capsys.readouterr().err
    assert not (tmp_path / "tok").exists()


def test_pretrain_builds_the_configured_llama_and_lowers_the_loss(tokdir, corpus, tmp_path):
    out = tmp_path / "base"
    rc = main(["pretrain", "--model", str(tokdir), "--data", str(corpus), "--out", str(out), "--no-progress",
               "--set", "arch.hidden_size=48", "--set", "arch.num_layers=1", "--set", "arch.num_heads=4",
               "--set", "arch.num_kv_heads=2", "--set", "arch.intermediate_size=96", "--set", "arch.max_position=64",
               "--set", "data.seq_len=64", "--set", "train.batch_size=8", "--set", "train.max_steps=20",
               "--set", "train.log_every=1", "--set", "model.dtype=fp32", "--set", "model.device=cpu"])
    assert rc == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["num_key_value_heads"], config["intermediate_size"]) == (48, 1, 4, 2, 96)
    tok_len = len(json.loads((tokdir / "tokenizer.json").read_text())["model"]["vocab"])
    assert config["vocab_size"] >= tok_len and config["tie_word_embeddings"] is True
    losses = [x["loss"] for x in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in x]
    assert len(losses) == 20
    vocab = config["vocab_size"]
    assert abs(losses[0] - torch.log(torch.tensor(float(vocab))).item()) < 0.5  # a fresh model starts near uniform
    assert losses[-1] < 0.7 * losses[0]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["stage"] == "pretrain" and prov["parent"] is None and prov["metrics"]["steps"] == 20
    assert prov["config"]["train"]["lr"] == 3e-3  # pretrain's default survives other train.* overrides
    assert prov["metrics"]["parameters"] == sum(t.numel() for t in load_file(str(out / "model.safetensors")).values())
    assert (out / "tokenizer.json").exists() and not (tmp_path / "base.checkpoints").exists()


def test_resumed_pretraining_matches_an_uninterrupted_run(tokdir, corpus, tmp_path, monkeypatch):
    c = pretrain_cfg(**{"train.max_steps": 4, "train.save_every": 2, "train.batch_size": 4, "data.seq_len": 32})
    run_pretrain(tokdir, corpus, tmp_path / "full", c, progress=False)

    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:  # Ctrl-C during step 4: step 3 is checkpointed then (docs/safety.md)
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(tokdir, corpus, tmp_path / "resumed", c, progress=False)
    assert not (tmp_path / "resumed").exists()
    saved = sorted(p.name for p in (tmp_path / "resumed.checkpoints").glob("step-*"))
    assert saved == ["step-000002", "step-000003"]
    resumed_steps = []

    def counting_step(self, *a, **k):
        resumed_steps.append(1)
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting_step)
    prov = run_pretrain(tokdir, corpus, tmp_path / "resumed", c, resume=True, progress=False)
    assert prov["metrics"]["steps"] == 4 and len(resumed_steps) == 1  # continued from step 3, not from scratch
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
    full = json.loads((tmp_path / "full" / "provenance.json").read_text())
    assert prov["weights_sha256"] == full["weights_sha256"]
