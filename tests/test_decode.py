"""The engine's decode steps (posttrain.modeling.decode) against the transformers forward they replace."""

from __future__ import annotations

import pytest
import torch

from posttrain.engine import Engine, SamplingParams
from posttrain.models import autocast, head_in_fp32
from posttrain.modeling.decode import Decoder

# Every logits check runs on CPU, and on CUDA where there is a GPU (CI has none; a GPU machine runs them all).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                reason="no CUDA device"))]


def _tiny(family: str, seed: int = 0, **extra):
    """A random tiny model of `family`: GQA everywhere, biases for qwen2, q/k norms for qwen3."""
    import transformers

    names = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "mistral": "Mistral"}[family]
    config = getattr(transformers, f"{names}Config")(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=128, initializer_range=0.2,
        tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=None, **extra)
    torch.manual_seed(seed)
    return getattr(transformers, f"{names}ForCausalLM")(config).eval()


def _inputs(batch=5, width=9, steps=7, seed=1, device="cpu"):
    """Left-padded prompts (rows 0, 2, 4 padded by 3) and the tokens fed after them."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 96, (batch, width), generator=g)
    mask = torch.ones(batch, width, dtype=torch.long)
    mask[::2, :3] = 0
    out = ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), torch.randint(2, 96, (steps, batch), generator=g)
    return tuple(t.to(device) for t in out)


def _transformers_steps(model, dtype, ids, mask, pos, feed):
    """Next-token logits after each fed token, through the transformers forward and its cache."""
    out = []
    with torch.no_grad(), autocast(dtype, ids.device), head_in_fp32(model, ids.device):
        o = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        cache, p = o.past_key_values, pos[:, -1]
        for tokens in feed:
            mask, p = torch.cat([mask, mask.new_ones(len(tokens), 1)], -1), p + 1
            o = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=p[:, None],
                      past_key_values=cache, use_cache=True)
            cache = o.past_key_values
            out.append(o.logits[:, -1].float())
    return torch.stack(out)


def _decoder_steps(model, dtype, ids, mask, pos, feed, room):
    """The same through the Decoder, from the transformers prefill; rows 1 and 3 leave after two steps."""
    out = []
    with torch.no_grad(), autocast(dtype, ids.device), head_in_fp32(model, ids.device):
        o = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        decoder = Decoder.for_model(model, dtype)
        decoder.start(o.past_key_values, mask, room=room)
        p = pos[:, -1]
        for tokens in feed:
            p = p + 1
            out.append(decoder.step(tokens, p))
    return torch.stack(out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("room", [1, 16])  # 1: the KV buffer grows (as tool turns make it)
def test_decoder_logits_equal_the_transformers_forward_in_fp32(family, room, device):
    model = _tiny(family).to(device)
    ids, mask, pos, feed = _inputs(device=device)
    ref = _transformers_steps(model, "fp32", ids, mask, pos, feed)
    got = _decoder_steps(model, "fp32", ids, mask, pos, feed, room)
    assert got.dtype == torch.float32 and got.shape == ref.shape == (7, 5, 96)
    assert ref.std() > 1.0  # logits that differ by token, so a wrong step would show
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_decoder_drops_rows_like_the_cache():
    model = _tiny("llama")
    ids, mask, pos, feed = _inputs()
    keep = torch.tensor([0, 2, 4])
    with torch.no_grad():
        o = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        decoder = Decoder.for_model(model, "fp32")
        decoder.start(o.past_key_values, mask, room=4)
        decoder.step(feed[0], pos[:, -1] + 1)
        decoder.select(keep)
        got = decoder.step(feed[1][keep], pos[keep, -1] + 2)
    # The kept rows alone, through the transformers forward.
    ref = _transformers_steps(model, "fp32", ids[keep], mask[keep], pos[keep], feed[:2, keep])[1]
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_decoder_is_as_close_to_fp32_as_the_transformers_bf16_forward(device):
    """bf16 matmuls round, on both paths; the decoder keeps attention and the residual stream in fp32,
    so its logits sit at least as close to the fp32 ones as the transformers forward's under autocast."""
    model = _tiny("llama", seed=3).to(device)
    ids, mask, pos, feed = _inputs(seed=4, device=device)
    exact = _transformers_steps(model, "fp32", ids, mask, pos, feed)
    theirs = (_transformers_steps(model, "bf16", ids, mask, pos, feed) - exact).abs().mean()
    ours = (_decoder_steps(model, "bf16", ids, mask, pos, feed, room=8) - exact).abs().mean()
    assert ours > 0  # bf16 did run
    assert ours <= 1.25 * theirs, (ours, theirs)


def _lora(model, **config):
    """`model` with LoRA adapters whose B is not zero (peft starts B at 0, which would hide a missed delta)."""
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(model, LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": "all-linear", **config}))
    torch.manual_seed(7)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)
    return wrapped.eval()


def test_models_outside_the_decoder_keep_the_transformers_forward():
    assert Decoder.for_model(_tiny("llama"), "bf16") is not None
    assert Decoder.for_model(_tiny("mistral", sliding_window=4), "fp32") is None  # a window the decoder lacks
    assert Decoder.for_model(_lora(_tiny("llama"), use_dora=True), "fp32") is None  # DoRA is more than B @ A
    assert Decoder.for_model(_lora(_tiny("llama"), lora_bias=True), "fp32") is None
    assert Decoder.for_model(_lora(_tiny("llama"), trainable_token_indices=[3, 4]), "fp32") is None


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj", "down_proj"]])
def test_lora_adapters_decode_as_their_forward_and_follow_the_adapters(family, targets):
    """A LoRA policy (the RL stages') decodes through merged weights W + s B A, made per Decoder: the logits
    are the peft forward's with the adapters on, the base's with them off (reference passes), and a later
    Decoder sees adapters that trained since."""
    model = _lora(_tiny(family), target_modules=targets)
    ids, mask, pos, feed = _inputs()
    assert Decoder.for_model(model, "fp32") is not None
    ref = _transformers_steps(model, "fp32", ids, mask, pos, feed)
    with model.disable_adapter():
        base = _transformers_steps(model, "fp32", ids, mask, pos, feed)
        torch.testing.assert_close(_decoder_steps(model, "fp32", ids, mask, pos, feed, room=4), base, atol=1e-4, rtol=0)
    assert (ref - base).abs().max() > 0.1  # the adapters change the logits, so a missed delta would show
    torch.testing.assert_close(_decoder_steps(model, "fp32", ids, mask, pos, feed, room=4), ref, atol=1e-4, rtol=0)
    with torch.no_grad():  # a training step moves the adapters: the next Decoder follows
        next(p for n, p in model.named_parameters() if "lora_A" in n).add_(0.5)
    moved = _transformers_steps(model, "fp32", ids, mask, pos, feed)
    assert (moved - ref).abs().max() > 0.01
    torch.testing.assert_close(_decoder_steps(model, "fp32", ids, mask, pos, feed, room=4), moved, atol=1e-4, rtol=0)


def test_engine_samples_a_lora_policy_the_same_with_and_without_the_decoder(tiny_llama_dir):
    from posttrain.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(tiny_llama_dir, "cpu")
    model = _lora(model)
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=5, n=3)
    prompts = ["The capital of France is", "Hi"]
    fast = Engine(model, tok, batch_size=6, dtype="fp32").generate(prompts, params)
    slow = Engine(model, tok, batch_size=6, dtype="fp32", fast_decode=False).generate(prompts, params)
    assert len({tuple(c.token_ids) for c in fast}) > 2
    assert [c.token_ids for c in fast] == [c.token_ids for c in slow]
    for a, b in zip(fast, slow):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0)


def test_lora_merged_copies_past_the_budget_keep_the_transformers_forward(monkeypatch):
    from posttrain.modeling import decode

    model = _lora(_tiny("llama"))
    monkeypatch.setattr(decode, "FUSE_BYTES", 1000)
    assert Decoder.for_model(model, "fp32") is None
    assert Decoder.for_model(_tiny("llama"), "fp32") is not None  # a plain model copies nothing it must


@pytest.mark.parametrize("device", DEVICES)
def test_engine_samples_the_same_with_and_without_the_decoder(tiny_llama_dir, device):
    from posttrain.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(tiny_llama_dir, device)
    prompts = ["The capital of France is", "Hi", "Two plus two is four, and three plus"]
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=5, n=3)
    fast = Engine(model, tok, batch_size=6, dtype="fp32").generate(prompts, params)
    slow = Engine(model, tok, batch_size=6, dtype="fp32", fast_decode=False).generate(prompts, params)
    assert len({tuple(c.token_ids) for c in fast}) > 3  # samples that differ, so the comparison means something
    assert [c.token_ids for c in fast] == [c.token_ids for c in slow]
    for a, b in zip(fast, slow):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0)


def test_the_environment_can_keep_the_transformers_forward(tiny_llama_dir, monkeypatch):
    from posttrain.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(tiny_llama_dir, "cpu")
    assert Engine(model, tok).fast_decode is True
    monkeypatch.setenv("POSTTRAIN_FAST_DECODE", "0")
    assert Engine(model, tok).fast_decode is False
    assert Engine(model, tok, fast_decode=True).fast_decode is True  # an explicit choice wins


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_unfused_projections_of_a_large_model_give_the_same_logits(family, monkeypatch):
    """Past FUSE_BYTES the decoder keeps q/k/v and gate/up apart, using weights already in the compute
    dtype as they are (no copy); the logits are the same."""
    from posttrain.modeling import decode

    model = _tiny(family)
    ids, mask, pos, feed = _inputs()
    ref = _transformers_steps(model, "fp32", ids, mask, pos, feed)
    monkeypatch.setattr(decode, "FUSE_BYTES", 0)
    d = Decoder.for_model(model, "fp32")
    assert len(d.layers[0]["qkv"]) == 3 and d.layers[0]["qkv"][0][0] is model.model.layers[0].self_attn.q_proj.weight
    got = _decoder_steps(model, "fp32", ids, mask, pos, feed, room=4)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_a_bf16_model_decodes_without_fp32_copies_and_close_to_its_forward():
    """bf16 weights (a GPU user's model): the head runs in its own dtype, as the transformers path does, and
    the decoder holds no fp32 copy of it; logits agree with the transformers forward to bf16 precision."""
    model = _tiny("llama", seed=5).to(torch.bfloat16)
    ids, mask, pos, feed = _inputs(seed=6)
    d = Decoder.for_model(model, "bf16")
    assert d.head is model.get_output_embeddings().weight
    ref = _transformers_steps(model, "bf16", ids, mask, pos, feed)
    got = _decoder_steps(model, "bf16", ids, mask, pos, feed, room=8)
    assert got.dtype == torch.float32
    assert (got - ref).abs().mean() < 0.02 * ref.std(), ((got - ref).abs().mean(), ref.std())
