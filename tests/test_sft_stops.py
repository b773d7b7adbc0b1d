"""Stopping: a chat-trained artifact stops after its reply in plain transformers, and SFT never
trains on a reply that truncation cut before its end-of-turn token."""

import json
import re

from posttrain.config import load_config
from posttrain.stages.sft import SFTConfig, run_sft


def test_sft_artifact_stops_at_end_of_turn_in_plain_transformers(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = tmp_path / "hello.jsonl"
    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    data.write_text((json.dumps(chat) + "\n") * 16)
    cfg = load_config(SFTConfig, overrides={
        "train.batch_size": 4, "train.lr": 1e-2, "train.max_steps": 30, "train.warmup_ratio": 0.0,
        "data.max_length": 64, "data.eval_fraction": 0.0, "model.dtype": "fp32",
    })
    run_sft(tiny_llama_dir, data, tmp_path / "sft", cfg, progress=False)

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "sft")
    tok = AutoTokenizer.from_pretrained(tmp_path / "sft")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    saved = json.loads((tmp_path / "sft" / "generation_config.json").read_text())
    assert set(saved["eos_token_id"]) == {im_end, tok.eos_token_id}
    assert saved["pad_token_id"] == tok.pad_token_id

    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=20, do_sample=False)
    new = out[0, prompt["input_ids"].shape[1]:].tolist()
    assert tok.decode(new) == "Hello!<|im_end|>"  # the reply, then the end of turn, then nothing
    assert len(new) < 20


def test_sft_drops_replies_cut_before_their_end_and_says_how_many(tiny_llama_dir, tmp_path, capsys):
    data = tmp_path / "mixed.jsonl"
    short = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    long = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there! " * 30}]}
    data.write_text("".join(json.dumps(r) + "\n" for r in [short, long, short, long, long, short]))
    cfg = load_config(SFTConfig, overrides={"train.max_steps": 1, "data.max_length": 32, "data.eval_fraction": 0.0,
                                            "model.dtype": "fp32"})
    prov = run_sft(tiny_llama_dir, data, tmp_path / "sft", cfg, progress=False)
    stats = prov["metrics"]["data"]
    assert (stats["examples"], stats["cut_turns"], stats["truncated"]) == (3, 3, 0)
    assert re.search(r"cut turns \(dropped\)\s+3", capsys.readouterr().out)
