"""The shipped base model: loads in plain transformers, continues documents, matches the world it was trained on."""

import json

from posttrain.artifacts import sha256_file
from posttrain.demo import REPO

BASE = REPO / "models" / "base"


def test_base_loads_in_transformers_and_continues_the_document():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(BASE)
    model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    ids = tok("What is the capital of France?\n", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    continuation = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    first_line = continuation.strip().splitlines()[0]
    assert first_line.endswith("?")  # it writes the next quiz question instead of answering
    assert "Paris" not in first_line


def test_base_was_trained_on_the_corpus_the_world_builds_today(tmp_path):
    """If the world generator changes the corpus, the shipped base must be rebuilt (recipes/base.yaml)."""
    from posttrain.world.build import build_world

    build_world(0, tmp_path)
    prov = json.loads((BASE / "provenance.json").read_text())
    assert prov["data"][0]["sha256"] == sha256_file(tmp_path / "corpus.jsonl")
    assert prov["metrics"]["parameters"] < 10_000_000
    assert (BASE / "model.safetensors").stat().st_size < 30 * 2**20
