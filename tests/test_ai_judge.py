"""The AI judge: principles from a constitution, the soft label's maths on tensors, the letters' token ids,
and the batched judge on a tiny model (padding-invariant, swap-averaged, fitted to the context)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from posttrain.errors import ConfigError
from posttrain.feedback.ai_judge import (
    ANSWER_PREFIX, CUT, AIJudge, cap_lengths, choice_probability, choice_token_ids, load_principles,
    parse_principles, swap_average,
)
from posttrain.world.policies import CONSTITUTION

# ---------------------------------------------------------------- principles


def test_the_world_constitution_gives_its_six_principles_whole():
    principles = parse_principles(CONSTITUTION)
    assert len(principles) == 6
    assert principles[0] == ("Avoid harm. Refuse requests covered by the hazard policy; do not help hurt "
                             "people or property.")  # wrapped line joined, bold marks dropped
    assert principles[5] == "Be polite. No insults, no condescension, no sarcasm."
    assert load_principles(None) == principles


def test_principles_from_bullets_or_plain_lines(tmp_path):
    text = "# Rules\n\nIntro prose is not a rule.\n\n- Be kind.\n* Be **brief**.\n  Really brief.\n\n+ Be right.\n"
    assert parse_principles(text) == ["Be kind.", "Be brief. Really brief.", "Be right."]
    assert parse_principles("# Title\nBe kind.\n\nBe brief.\n") == ["Be kind.", "Be brief."]
    path = tmp_path / "c.md"
    path.write_text("1) First.\n2) Second.\n")
    assert load_principles(path) == ["First.", "Second."]


def test_constitution_errors_name_the_option_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"--constitution .*nope\.md is not a file\. Give a markdown file"):
        load_principles(tmp_path / "nope.md")
    empty = tmp_path / "empty.md"
    empty.write_text("# Only a heading\n\n")
    with pytest.raises(ConfigError, match="holds no principles. Write one principle per list item"):
        load_principles(empty)


# ---------------------------------------------------------------- maths


def test_choice_probability_normalises_the_letters_summed_over_their_tokens():
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.15, 0.25], [0.5, 0.01, 0.04, 0.01, 0.44]])
    p_a, mass = choice_probability(probs.log(), ids_a=[1, 3], ids_b=[2])
    assert p_a.tolist() == pytest.approx([0.35 / 0.65, 0.02 / 0.06], abs=1e-6)
    assert mass.tolist() == pytest.approx([0.65, 0.06], abs=1e-6)


def test_choice_probability_stays_exact_when_the_letters_are_unlikely():
    logits = torch.tensor([[100.0, -50.0, -51.0]])  # p(A), p(B) ~ e^-150: their ratio is still e^1 : 1
    p_a, mass = choice_probability(logits, [1], [2])
    assert p_a.item() == pytest.approx(1 / (1 + math.exp(-1)), abs=1e-6)
    assert mass.item() < 1e-60


def test_swap_average_cancels_position_bias_and_keeps_a_consistent_choice():
    always_a = swap_average(torch.tensor([0.9, 0.7]), torch.tensor([0.9, 0.7]))
    assert always_a.tolist() == pytest.approx([0.5, 0.5])
    # First reply better in both orders: p(A)=0.8 when it is A, p(A)=0.2 when it is B.
    assert swap_average(torch.tensor([0.8]), torch.tensor([0.2])).item() == pytest.approx(0.8)
    assert swap_average(torch.tensor([0.6]), torch.tensor([0.3])).item() == pytest.approx(0.65)


@pytest.mark.parametrize("lengths,budget,cap", [([10, 20, 30], 100, 30), ([10, 100, 100], 110, 50),
                                                ([300, 5, 300], 125, 60), ([7, 7, 7], 20, 6), ([], 10, 0)])
def test_cap_lengths_cuts_only_the_longest_parts_to_the_largest_fitting_cap(lengths, budget, cap):
    assert cap_lengths(lengths, budget) == cap
    assert sum(min(x, cap) for x in lengths) <= budget
    if sum(lengths) > budget:  # the largest such cap: one more token would not fit
        assert sum(min(x, cap + 1) for x in lengths) > budget


class TableTokenizer:
    """Greedy longest-match tokenizer over a fixed vocabulary: lets a test decide what merges."""

    def __init__(self, vocab: list[str]):
        self.vocab = {t: i for i, t in enumerate(vocab)}

    def __call__(self, text, add_special_tokens=False):
        ids = []
        while text:
            token = max((t for t in self.vocab if text.startswith(t)), key=len)
            ids.append(self.vocab[token])
            text = text[len(token):]
        return {"input_ids": ids}


def test_choice_token_ids_collects_the_letter_variants_that_follow_the_prefix():
    tok = TableTokenizer(list("abcAB( :") + [" A", " B", "ab"])
    assert choice_token_ids(tok, "ab (", "A") == sorted({tok.vocab["A"], tok.vocab[" A"]})
    # A tokenizer that writes "(A" as one token: after a prompt ending in "(", "A" alone is what comes next.
    merged = TableTokenizer(list("abAB( ") + ["(A", "(B"])
    assert choice_token_ids(merged, "ab (", "A") == [merged.vocab["A"]]
    assert choice_token_ids(merged, "ab (", "B") == [merged.vocab["B"]]


def test_choice_token_ids_of_a_real_tokenizer_each_write_the_letter():
    from conftest import build_tokenizer

    tok = build_tokenizer()
    ids_a, ids_b = (choice_token_ids(tok, ANSWER_PREFIX, x) for x in "AB")
    assert ids_a and ids_b and not set(ids_a) & set(ids_b)
    assert {tok.decode([i]).strip() for i in ids_a} == {"A"} and {tok.decode([i]).strip() for i in ids_b} == {"B"}
    head = tok(ANSWER_PREFIX, add_special_tokens=False)["input_ids"]
    assert tok(ANSWER_PREFIX + "A", add_special_tokens=False)["input_ids"][len(head)] in ids_a


# ---------------------------------------------------------------- the judge on a tiny model

PRINCIPLES = ["Be honest.", "Be brief.", "Be polite."]
CONV = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def judge(tiny_llama_dir):
    return AIJudge(tiny_llama_dir, PRINCIPLES, seed=3, device="cpu", dtype="fp32", batch_size=16)


def test_judge_averages_both_orders_and_labels_each_pair(judge):
    firsts = ["Paris.", "The capital of France is Paris.", "I cannot help with that."]
    seconds = ["Rome.", "Tokyo, obviously.", "Paris is the capital of France."]
    verdicts = judge.judge([CONV] * 3, firsts, seconds)
    assert len(verdicts) == 3
    for v in verdicts:
        assert v.p_first == pytest.approx((v.p_first_shown_a + v.p_first_shown_b) / 2, abs=1e-6)
        assert 0 < v.p_first < 1 and 0 < v.mass <= 1 and v.principle in PRINCIPLES
    # Swapping the replies mirrors the label, under the same principles (the judge's rng restarted).
    judge.rng = random.Random("3:ai-judge")
    original = judge.judge([CONV] * 3, firsts, seconds)
    judge.rng = random.Random("3:ai-judge")
    mirrored = judge.judge([CONV] * 3, seconds, firsts)
    for a, b in zip(original, mirrored):
        assert a.principle == b.principle
        assert a.p_first == pytest.approx(1 - b.p_first, abs=1e-5)
        assert a.p_first_shown_a == pytest.approx(1 - b.p_first_shown_b, abs=1e-5)


def test_judge_batch_gives_the_probabilities_of_each_prompt_alone(judge):
    prompts = [p for a, b in [("Paris.", "Rome, I think, or maybe somewhere else entirely."), ("No.", "Yes.")]
               for p in judge.prompt_pair(CONV, PRINCIPLES[0], a, b)]
    assert len({len(p) for p in prompts}) > 1  # different lengths: left padding is exercised
    batched, batched_mass = judge.choice_probabilities(prompts)
    judge.batch_size = 1
    try:
        alone, alone_mass = judge.choice_probabilities(prompts)
    finally:
        judge.batch_size = 16
    assert batched == pytest.approx(alone, abs=1e-5) and batched_mass == pytest.approx(alone_mass, rel=1e-4)


def test_judge_prompts_are_the_two_orders_and_fit_the_context(judge):
    first, second = "Paris is the capital. " * 200, "Rome."
    as_a, as_b = judge.prompt_pair(CONV, PRINCIPLES[1], first, second)
    assert len(as_a) < judge.context and len(as_b) < judge.context
    text_a, text_b = judge.tok.decode(as_a), judge.tok.decode(as_b)
    assert text_a.endswith(ANSWER_PREFIX) and PRINCIPLES[1] in text_a
    assert "(A) Paris is the capital." in text_a and "(B) Rome." in text_a and CUT in text_a
    assert "(A) Rome." in text_b and "(B) Paris is the capital." in text_b
    short_a, _ = judge.prompt_pair(CONV, PRINCIPLES[1], "Paris.", "Rome.")
    assert CUT not in judge.tok.decode(short_a)  # nothing is cut when everything fits
