"""The engine's n samples per prompt (one shared prefill) and its finished-row compaction.

On the shipped base model (`models/base`, a 4-layer Llama trained to chat), whose replies end on their own
after a few to a few dozen tokens, so the rows of a batch finish at very different steps.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import pytest
import torch

from posttrain.data.chat import render_generation_prompt
from posttrain.engine import Engine, Row, SamplingParams, default_stop_token_ids, draw
from posttrain.errors import PosttrainError
from posttrain.models import load_model_and_tokenizer

BASE = Path(__file__).resolve().parents[1] / "models" / "base"
# Greedy replies of 14, 25, 10, 16 and 29 tokens on the shipped base: every row finishes at its own step.
QUESTIONS = ["What is the capital of France?", "Compute 240 - 198. Show your steps.", "Good morning!",
             "Niger is on which continent?", "I got a new job!"]


@pytest.fixture(scope="module")
def base():
    model, tok = load_model_and_tokenizer(BASE, "cpu")
    prompts = [render_generation_prompt(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]
    return model, tok, prompts


def _forward_shapes(model, run) -> list[tuple[int, int]]:
    """(rows, tokens) of every forward pass `run()` makes: a prefill feeds whole prompts, a step one token a row."""
    shapes = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    try:
        run()
    finally:
        hook.remove()
    return shapes


def _teacher_forced_logprobs(model, c) -> torch.Tensor:
    seq = torch.tensor([c.prompt_ids + c.token_ids])
    with torch.no_grad():
        logits = model(input_ids=seq, use_cache=False).logits[0, len(c.prompt_ids) - 1 : -1]
    return torch.log_softmax(logits.float(), -1).gather(-1, seq[0, len(c.prompt_ids):, None]).squeeze(-1)


def test_n_samples_come_prompt_major_and_each_prompt_is_prefilled_once(base):
    model, tok, prompts = base
    engine = Engine(model, tok, batch_size=6, dtype="fp32")  # 6 rows sampled at once: 2 prompts x 3 samples
    out: list = []
    shapes = _forward_shapes(model, lambda: out.extend(
        engine.generate(prompts, SamplingParams(max_new_tokens=6, temperature=1.0, seed=0, n=3))))
    assert len(out) == len(prompts) * 3
    for i, p in enumerate(prompts):
        for j in range(3):  # sample j of prompt i at i * n + j
            assert out[i * 3 + j].prompt_ids == tok(p, add_special_tokens=False)["input_ids"]
    # 5 prompts, 2 a batch: prefills of 2, 2 and 1 prompts; the steps feed at most their 6, 6 and 3 samples.
    assert [rows for rows, tokens in shapes if tokens > 1] == [2, 2, 1]
    assert max(rows for rows, tokens in shapes if tokens == 1) == 6
    # The same prompts with sharing off: each of the 15 samples is its own prompt, prefilled.
    off = _forward_shapes(model, lambda: engine.generate(
        prompts, SamplingParams(max_new_tokens=6, n=3, share_prefill=False)))
    assert [rows for rows, tokens in off if tokens > 1] == [6, 6, 3]
    # chat passes n through the same way
    conv = [{"role": "user", "content": "Hi!"}]
    chats = engine.chat([conv, [{"role": "user", "content": "Hello there"}]], SamplingParams(max_new_tokens=4, n=2))
    assert len(chats) == 4
    assert chats[0].prompt_ids == chats[1].prompt_ids != chats[2].prompt_ids == chats[3].prompt_ids
    with pytest.raises(PosttrainError, match=r"n \(samples per prompt\) must be >= 1"):
        SamplingParams(n=0)


def test_greedy_n_samples_equal_n_1_and_sharing_changes_nothing(base):
    model, tok, prompts = base
    engine = Engine(model, tok, batch_size=8, dtype="fp32")
    one = engine.generate(prompts, SamplingParams(max_new_tokens=24))
    for share in (True, False):
        two = engine.generate(prompts, SamplingParams(max_new_tokens=24, n=2, share_prefill=share))
        assert len(two) == 2 * len(prompts)
        for i, c in enumerate(one):
            for s in two[2 * i : 2 * i + 2]:
                assert s.token_ids == c.token_ids and s.finish_reason == c.finish_reason
                torch.testing.assert_close(torch.tensor(s.logprobs), torch.tensor(c.logprobs), atol=1e-5, rtol=0)


def test_seeded_samples_reproduce_and_differ_across_samples(base):
    model, tok, prompts = base
    engine = Engine(model, tok, batch_size=8, dtype="fp32")
    params = dict(max_new_tokens=16, temperature=1.0, n=4, stop_token_ids=())
    a = engine.generate(prompts, SamplingParams(seed=5, **params))
    b = engine.generate(prompts, SamplingParams(seed=5, **params))
    c = engine.generate(prompts, SamplingParams(seed=6, **params))
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.logprobs for x in a] == [x.logprobs for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]
    # The 4 samples of a prompt are 4 draws, not copies (a chat model greets "Hi!" in few ways, so some agree).
    distinct = [len({tuple(x.token_ids) for x in a[4 * i : 4 * i + 4]}) for i in range(len(prompts))]
    assert min(distinct) >= 2 and sum(distinct) >= 3 * len(prompts)


def test_sample_logprobs_equal_a_teacher_forced_forward(base):
    model, tok, prompts = base
    engine = Engine(model, tok, batch_size=6, dtype="fp32")
    params = SamplingParams(max_new_tokens=12, temperature=0.9, top_k=40, seed=2, n=3)
    out = engine.generate(prompts, params)
    assert {len(c.token_ids) for c in out} != {12}  # some replies ended on their own
    for c in out:
        assert len(c.logprobs) == len(c.token_ids) == len(c.mask) and set(c.mask) == {1}
        torch.testing.assert_close(torch.tensor(c.logprobs), _teacher_forced_logprobs(model, c), atol=1e-4, rtol=0)


def test_finished_rows_leave_the_batch_and_results_match_one_at_a_time(base):
    model, tok, prompts = base
    params = SamplingParams(max_new_tokens=48)
    batched = Engine(model, tok, batch_size=8, dtype="fp32")
    got: list = []
    shapes = _forward_shapes(model, lambda: got.extend(batched.generate(prompts, params)))
    lengths = sorted(len(c.token_ids) for c in got)
    assert len(set(lengths)) == len(prompts) and lengths[-1] >= 2 * lengths[0]  # rows finish at different steps
    # One forward per step; a step feeds exactly the rows that have not finished yet.
    assert shapes[1:] == [(sum(n > k for n in lengths), 1) for k in range(1, lengths[-1])]
    alone = Engine(model, tok, batch_size=1, dtype="fp32")
    for prompt, c in zip(prompts, got):
        ref = alone.generate([prompt], params)[0]
        assert (c.token_ids, c.finish_reason, c.text) == (ref.token_ids, ref.finish_reason, ref.text)
        torch.testing.assert_close(torch.tensor(c.logprobs), torch.tensor(ref.logprobs), atol=1e-5, rtol=0)


def test_injected_tokens_have_mask_0_and_survive_compaction(base):
    """A row with runtime-injected tokens (Row.forced) goes on after its neighbours finished and left the batch."""
    model, tok, prompts = base
    engine = Engine(model, tok, batch_size=8, dtype="fp32")
    stop_ids = set(default_stop_token_ids(tok))
    params = SamplingParams(max_new_tokens=24)
    # Neighbours whose greedy replies are short (6 and 14 tokens), beside an injection longer than both.
    neighbours = [prompts[3], prompts[2]]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in [prompts[0], *neighbours]]
    injected = tok(" The capital of France is Paris, I think, and it is lovely in spring.",
                   add_special_tokens=False)["input_ids"]
    rows = [Row(ids[0], 24, forced=deque(injected)), Row(ids[1], 24), Row(ids[2], 24)]
    with torch.no_grad():
        engine._generate_batch(rows, params, stop_ids, torch.Generator().manual_seed(0))
    forced = rows[0]
    assert forced.token_ids[: len(injected)] == injected
    assert forced.mask == [0] * len(injected) + [1] * (len(forced.token_ids) - len(injected))
    assert max(len(r.token_ids) for r in rows[1:]) < len(injected)  # both neighbours left the batch first
    c = engine._completion(forced, params, stop_ids)
    torch.testing.assert_close(torch.tensor(c.logprobs), _teacher_forced_logprobs(model, c), atol=1e-4, rtol=0)
    # The neighbours are exactly what they would be without the injected row.
    for row, prompt in zip(rows[1:], neighbours):
        assert row.token_ids == engine.generate([prompt], params)[0].token_ids


def test_draw_samples_each_token_at_its_probability():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05, 0.0]]).repeat(40_000, 1)
    counts = torch.bincount(draw(probs, torch.Generator().manual_seed(0)), minlength=5) / 40_000
    # 3 standard errors of a share p over 40,000 draws is at most 0.0075; a filtered-out token never comes.
    torch.testing.assert_close(counts, probs[0], atol=0.0075, rtol=0)
    assert counts[4] == 0
