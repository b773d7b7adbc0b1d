"""Packing must not change what the model computes for each example."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain.data.chat import tokenize_chat
from posttrain.data.packing import Example, collate, pack_examples, unpacked_rows
from posttrain.losses import sft_loss
from posttrain.models import load_tokenizer
from posttrain.modeling.forward import nll_and_count

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
    [{"role": "user", "content": "Two plus two?"}, {"role": "assistant", "content": "Four, since two plus two is four."}],
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello!"},
     {"role": "assistant", "content": "Hello! How can I help you today?"}],
]


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_qwen2_dir"])
def test_packed_batch_gives_same_per_example_losses(fixture, request):
    path = request.getfixturevalue(fixture)
    tok = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    examples = [Example(*vars(tokenize_chat(tok, c)).values()) for c in CHATS]
    rows = pack_examples(examples, max_length=512)
    assert len(rows) == 1  # all three share one row
    packed = collate(rows, tok.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits[0]
        starts = (packed["position_ids"][0] == 0).nonzero().flatten().tolist() + [packed["input_ids"].shape[1]]
        seen = 0
        for s, e in zip(starts[:-1], starts[1:]):
            seg_ids = packed["input_ids"][:, s:e]
            alone = model(input_ids=seg_ids).logits[0]
            torch.testing.assert_close(logits[s:e], alone, atol=1e-4, rtol=1e-4)
            seg_mask = packed["loss_mask"][:, s:e]
            ref = sft_loss(alone[None], seg_ids, seg_mask)
            mine = sft_loss(logits[s:e][None], seg_ids, seg_mask)
            torch.testing.assert_close(mine, ref, atol=1e-5, rtol=1e-5)
            seen += 1
        assert seen == 3


def test_packed_and_unpacked_total_loss_match(tiny_llama_dir):
    tok = load_tokenizer(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    examples = [Example(*vars(tokenize_chat(tok, c)).values()) for c in CHATS]
    with torch.no_grad():
        p_sum, p_n = nll_and_count(model, collate(pack_examples(examples, 512), tok.pad_token_id))
        u_sum, u_n = nll_and_count(model, collate(unpacked_rows(examples), tok.pad_token_id))
    assert p_n == u_n == sum(sum(e.loss_mask) for e in examples)
    torch.testing.assert_close(p_sum, u_sum, atol=1e-4, rtol=1e-5)


def test_best_fit_packing_respects_max_length():
    examples = [Example(list(range(n)), [1] * n) for n in (5, 9, 3, 7, 1, 8, 2, 6)]
    rows = pack_examples(examples, max_length=10)
    assert all(len(r) <= 10 for r in rows)
    assert sum(len(r) for r in rows) == sum(len(e.input_ids) for e in examples)
    assert len(rows) == 5  # 41 tokens need at least 5 rows of 10
