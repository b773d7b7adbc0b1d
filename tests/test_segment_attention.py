"""Attention per example (segment_attention) gives the model's own packed-attention loss and gradients."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain.data.chat import tokenize_chat
from posttrain.data.packing import Example, collate, pack_examples, unpacked_rows
from posttrain.modeling.attention import attention_within_examples, segment_layout
from posttrain.losses import sft_loss
from posttrain.models import load_tokenizer
from posttrain.modeling.forward import nll_and_count

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
    [{"role": "user", "content": "Two plus two?"}, {"role": "assistant", "content": "Four, since two plus two is four."}],
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello!"},
     {"role": "assistant", "content": "Hello! How can I help you today?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hi."}],
]
LONG = [{"role": "user", "content": "Count."}, {"role": "assistant", "content": " ".join(["two plus two"] * 40)}]


def test_segment_layout_finds_examples_and_groups_them():
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 0, 1, 2], [0, 1, 2, 3, 4, 5, 6, 0, 1]])
    lay = segment_layout(pos, similar=0.75)
    sizes = [shape for shape, _, _ in lay.blocks]
    assert sizes == [(1, 7), (2, 4), (2, 2)]  # lengths 7 | 4, 3 | 2, 2
    kept = torch.cat([g[k] for _, g, k in lay.blocks])
    assert sorted(kept.tolist()) == list(range(18))
    assert torch.equal(kept[lay.inverse], torch.arange(18))


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_qwen2_dir"])
@pytest.mark.parametrize("layout", ["packed", "unpacked", "with a long example"])
def test_loss_and_gradients_match_the_models_own_attention(fixture, layout, request):
    path = request.getfixturevalue(fixture)
    tok = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    chats = CHATS + [LONG] if layout == "with a long example" else CHATS  # > 128 tokens: the flash kernel
    examples = [Example(*vars(tokenize_chat(tok, c)).values()) for c in chats]
    rows = unpacked_rows(examples) if layout == "unpacked" else pack_examples(examples, 512 if chats != CHATS else 64)
    batch = collate(rows, tok.pad_token_id)
    if layout == "with a long example":
        assert max(shape[1] for shape, _, _ in segment_layout(batch["position_ids"]).blocks) > 128
    with attention_within_examples(model, batch["position_ids"]) as extra:
        assert "segments" in extra  # these models do take the per-example path
    s, n = nll_and_count(model, batch)
    s.backward()
    mine = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    # reference: the full model forward, attention with the mask transformers builds from position ids
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    ref = sft_loss(logits, batch["input_ids"], batch["loss_mask"]) * n
    ref.backward()
    torch.testing.assert_close(s, ref, atol=1e-4, rtol=1e-5)
    for k, p in model.named_parameters():
        torch.testing.assert_close(mine[k], p.grad, atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_keeps_the_models_own_attention(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    model.gradient_checkpointing_enable()
    with attention_within_examples(model, torch.zeros(1, 4, dtype=torch.long)) as extra:
        assert extra == {} and model.config._attn_implementation == "sdpa"


def test_branches_attend_to_their_prompt_and_themselves():
    """[prompt 0..4 | branch 3 tokens from position 3 | branch 1 token from 3 | a new example]: the layout's
    attention equals sdpa with the tree mask, and a jump past the example's length is refused."""
    from posttrain.modeling.attention import segment_attention

    pos = torch.tensor([[0, 1, 2, 3, 4, 3, 4, 5, 3, 0, 1]])
    allowed = torch.zeros(11, 11, dtype=torch.bool)
    for i in range(11):
        for j in range(i + 1):
            trunk = j < 3 and i < 9  # the first 3 tokens of the example are every branch's prefix
            same = (i < 5 and j < 5) or (5 <= i < 8 and 5 <= j < 8) or (i == j == 8) or (i >= 9 and j >= 9)
            allowed[i, j] = trunk or same
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 11, 4, generator=g) for _ in range(3))
    got, _ = segment_attention(None, q, k, v, segments=segment_layout(pos))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    torch.testing.assert_close(got, ref.transpose(1, 2), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="beyond"):
        segment_layout(torch.tensor([[0, 1, 2, 7, 8]]))
