"""The generation engine against Hugging Face `generate` and a plain full forward pass."""

from __future__ import annotations

import pytest
import torch

from posttrain.data.chat import render_generation_prompt
from posttrain.engine import Engine, SamplingParams, default_stop_token_ids, pick_tokens
from posttrain.errors import PosttrainError
from posttrain.models import load_model_and_tokenizer

# Different lengths, so batches need left padding.
PROMPTS = [
    "The capital of France is",
    "Hi",
    "What is the capital of Italy? The capital of Italy is Rome. Two plus",
    "The chemical symbol of gold",
]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model_and_tokenizer(request):
    return load_model_and_tokenizer(request.getfixturevalue(f"tiny_{request.param}_dir"), "cpu")


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    return load_model_and_tokenizer(tiny_llama_dir, "cpu")


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_greedy_batched_matches_hf_generate(model_and_tokenizer):
    model, tok = model_and_tokenizer
    engine = Engine(model, tok, batch_size=3, dtype="fp32")  # one padded batch of 3, then one of 1
    free = engine.generate(PROMPTS, SamplingParams(max_new_tokens=12, stop_token_ids=()))
    # A stop token that ends one row early while the others of its batch go on.
    stop_id = free[2].token_ids[4]
    params = SamplingParams(max_new_tokens=12, stop_token_ids=(stop_id,))
    got = engine.generate(PROMPTS, params)
    assert any(c.finish_reason == "stop" and len(c.token_ids) < 12 for c in got)
    for prompt, c in zip(PROMPTS, got):
        ids = torch.tensor([_ids(tok, prompt)])
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                             eos_token_id=stop_id, pad_token_id=tok.pad_token_id)
        assert c.prompt_ids == ids[0].tolist()
        assert c.token_ids == ref[0, ids.shape[1]:].tolist()
        assert c.finish_reason == ("stop" if c.token_ids[-1] == stop_id else "length")
        assert c.mask == [1] * len(c.token_ids)


def test_logprobs_match_full_forward_without_cache(model_and_tokenizer):
    """Logprobs are the raw model's (temperature 1, unfiltered), whatever the sampling settings."""
    model, tok = model_and_tokenizer
    engine = Engine(model, tok, batch_size=4, dtype="fp32")
    params = SamplingParams(max_new_tokens=10, temperature=0.7, top_k=50, seed=3, stop_token_ids=())
    for c in engine.generate(PROMPTS, params):
        seq = torch.tensor([c.prompt_ids + c.token_ids])
        with torch.no_grad():
            logits = model(input_ids=seq, attention_mask=torch.ones_like(seq), use_cache=False).logits[0]
        n = len(c.prompt_ids)
        # The token at position t is predicted by the logits at t - 1.
        expected = torch.log_softmax(logits[n - 1 : -1].float(), -1).gather(-1, seq[0, n:, None]).squeeze(-1)
        assert len(c.logprobs) == len(c.token_ids) == 10
        torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-4, rtol=0)


def test_prefill_once_then_one_token_per_step_through_the_cache(llama):
    model, tok = llama
    engine = Engine(model, tok, batch_size=8, dtype="fp32")
    shapes = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    try:
        engine.generate(PROMPTS, SamplingParams(max_new_tokens=5, stop_token_ids=()))
    finally:
        hook.remove()
    width = max(len(_ids(tok, p)) for p in PROMPTS)
    # The last step's token is never fed back: the batch is done.
    assert shapes == [(len(PROMPTS), width)] + [(len(PROMPTS), 1)] * 4


def test_stop_token_is_kept_in_ids_and_left_out_of_text(llama):
    model, tok = llama
    engine = Engine(model, tok, dtype="fp32")
    free = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=8, stop_token_ids=()))[0]
    stop_id = free.token_ids[3]
    c = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=8, stop_token_ids=(stop_id,)))[0]
    first = free.token_ids.index(stop_id)
    assert c.token_ids == free.token_ids[: first + 1]
    assert c.finish_reason == "stop"
    assert c.text == tok.decode(free.token_ids[:first], skip_special_tokens=True)


def test_default_stop_tokens_are_eos_and_end_of_turn(llama):
    _, tok = llama
    assert set(default_stop_token_ids(tok)) == {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}


def test_stop_string_cuts_text_and_finishes_row(llama):
    model, tok = llama
    engine = Engine(model, tok, dtype="fp32")
    free = engine.generate(PROMPTS, SamplingParams(max_new_tokens=16))
    full = free[0].text
    # The stop string: the text of a readable token from the middle of row 0's greedy output
    # (a random model writes many partial UTF-8 characters; those decode differently in pieces).
    pieces = [tok.decode([t]) for t in free[0].token_ids[3:]]
    stop = next(p for p in pieces if p.strip() and p.isprintable() and "\ufffd" not in p)
    assert full.find(stop) >= 1
    got = engine.generate(PROMPTS, SamplingParams(max_new_tokens=16, stop_strings=(stop,)))
    assert got[0].finish_reason == "stop"
    assert got[0].text == full[: full.find(stop)]
    assert len(got[0].token_ids) < 16
    assert got[0].token_ids == free[0].token_ids[: len(got[0].token_ids)]
    # The first token whose text completes the stop string ends the row.
    assert stop in tok.decode(got[0].token_ids) and stop not in tok.decode(got[0].token_ids[:-1])
    for g, f in zip(got[1:], free[1:]):  # rows without the string are untouched
        if stop not in f.text:
            assert (g.token_ids, g.text, g.finish_reason) == (f.token_ids, f.text, f.finish_reason)


def test_max_new_tokens_gives_finish_reason_length(llama):
    model, tok = llama
    engine = Engine(model, tok, dtype="fp32")
    for c in engine.generate(PROMPTS, SamplingParams(max_new_tokens=5, stop_token_ids=())):
        assert len(c.token_ids) == len(c.logprobs) == len(c.mask) == 5
        assert c.finish_reason == "length"
    assert all(c.token_ids == [] for c in engine.generate(PROMPTS, SamplingParams(max_new_tokens=0)))


def test_same_seed_same_samples_different_seed_different(llama):
    model, tok = llama
    engine = Engine(model, tok, batch_size=2, dtype="fp32")
    params = dict(max_new_tokens=12, temperature=1.0, stop_token_ids=())
    a = engine.generate(PROMPTS, SamplingParams(seed=1, **params))
    b = engine.generate(PROMPTS, SamplingParams(seed=1, **params))
    c = engine.generate(PROMPTS, SamplingParams(seed=2, **params))
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]
    greedy = engine.generate(PROMPTS, SamplingParams(max_new_tokens=12, stop_token_ids=()))
    assert [x.token_ids for x in a] != [x.token_ids for x in greedy]


def test_top_k_1_and_tiny_top_p_sampling_equal_greedy(llama):
    model, tok = llama
    engine = Engine(model, tok, dtype="fp32")
    greedy = [c.token_ids for c in engine.generate(PROMPTS, SamplingParams(max_new_tokens=10))]
    top_k = engine.generate(PROMPTS, SamplingParams(max_new_tokens=10, temperature=1.5, top_k=1, seed=7))
    top_p = engine.generate(PROMPTS, SamplingParams(max_new_tokens=10, temperature=1.5, top_p=1e-6, seed=7))
    assert [c.token_ids for c in top_k] == greedy
    assert [c.token_ids for c in top_p] == greedy


def test_pick_tokens_filters_exactly():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    draws = lambda **kw: {pick_tokens(logits, SamplingParams(temperature=1.0, **kw), gen).item() for _ in range(300)}
    assert draws(top_k=2) == {0, 1}
    assert draws(top_p=0.7) == {0, 1}  # 0.5 < 0.7, so the second token is still needed
    assert draws(top_p=0.5) == {0}
    assert draws() == {0, 1, 2, 3}


def test_results_come_back_in_input_order(llama):
    model, tok = llama
    engine = Engine(model, tok, batch_size=2, dtype="fp32")
    prompts = [PROMPTS[1], PROMPTS[2], PROMPTS[0], PROMPTS[3]]  # not sorted by length
    batched = engine.generate(prompts, SamplingParams(max_new_tokens=8))
    for prompt, c in zip(prompts, batched):
        alone = engine.generate([prompt], SamplingParams(max_new_tokens=8))[0]
        assert c.prompt_ids == _ids(tok, prompt)
        assert c.token_ids == alone.token_ids


def test_token_id_prompts_and_chat(llama):
    model, tok = llama
    engine = Engine(model, tok, dtype="fp32")
    params = SamplingParams(max_new_tokens=6)
    by_text = engine.generate(PROMPTS, params)
    by_ids = engine.generate([_ids(tok, p) for p in PROMPTS], params)
    assert [c.token_ids for c in by_ids] == [c.token_ids for c in by_text]
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
    c = engine.chat([conv], params)[0]
    assert c.prompt_ids == _ids(tok, render_generation_prompt(tok, conv))
    assert tok.decode(c.prompt_ids).endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_training_mode_is_restored_and_bad_inputs_rejected(llama):
    model, tok = llama
    engine = Engine(model, tok, dtype="fp32")
    model.train()
    try:
        engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=2))
        assert model.training
    finally:
        model.eval()
    with pytest.raises(PosttrainError, match="empty"):
        engine.generate([""], SamplingParams())
    with pytest.raises(PosttrainError, match="top_p"):
        SamplingParams(top_p=0)


def test_bf16_autocast_runs_and_stays_close(llama):
    model, tok = llama
    fp32 = Engine(model, tok, dtype="fp32").generate(PROMPTS[:2], SamplingParams(max_new_tokens=4))
    bf16 = Engine(model, tok, dtype="bf16").generate(PROMPTS[:2], SamplingParams(max_new_tokens=4))
    assert [len(c.token_ids) for c in bf16] == [4, 4]
    # bf16 matmuls change the numbers a little, not the first choice.
    for a, b in zip(fp32, bf16):
        assert a.token_ids[0] == b.token_ids[0]
        assert a.logprobs[0] != b.logprobs[0] and abs(a.logprobs[0] - b.logprobs[0]) < 0.05


def test_bf16_engine_reports_logprobs_from_an_fp32_head(llama):
    """Under bf16 autocast the body runs in bf16, but logprobs come from fp32 logits of the fp32 head.

    The reference applies the fp32 head weights to the very hidden states the engine fed
    its head (captured by a hook), so only the head's precision is compared. This is the transformers
    forward's path (fast_decode off); tests/test_decode.py checks the decoder's own fp32 head.
    """
    model, tok = llama
    head = model.get_output_embeddings()
    inputs = []
    hook = head.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach().clone()))
    try:
        c = Engine(model, tok, batch_size=1, dtype="bf16", fast_decode=False).generate(
            [PROMPTS[0]], SamplingParams(max_new_tokens=6, stop_token_ids=()))[0]
    finally:
        hook.remove()
    assert not head._forward_pre_hooks and not head._forward_hooks  # the engine removed its hooks
    assert len(inputs) == len(c.token_ids) == 6  # prefill, then one step per further token
    hidden = torch.cat([h[:, -1, :] for h in inputs])  # [6, H]: the state each token was chosen from
    tokens = torch.tensor(c.token_ids)[:, None]
    w = head.weight.detach()
    ref = torch.log_softmax(hidden.float() @ w.float().T, -1).gather(-1, tokens).squeeze(-1)
    torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=1e-5, rtol=0)
    # A bf16 head is measurably off at that tolerance, so this test catches one.
    bf16_head = torch.log_softmax((hidden.bfloat16() @ w.bfloat16().T).float(), -1).gather(-1, tokens).squeeze(-1)
    assert (bf16_head - ref).abs().max() > 1e-3
    # And the whole bf16 pass stays close to a plain fp32 forward of the model.
    seq = torch.tensor([c.prompt_ids + c.token_ids])
    with torch.no_grad():
        logits = model(input_ids=seq, use_cache=False).logits[0, len(c.prompt_ids) - 1 : -1]
    full = torch.log_softmax(logits.float(), -1).gather(-1, tokens).squeeze(-1)
    torch.testing.assert_close(torch.tensor(c.logprobs), full, atol=0.05, rtol=0)
