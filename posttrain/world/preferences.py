"""Preference pairs labelled by the gold judge (facts A, TRAIN phrasings only).

For each prompt two candidate responses of varied quality are generated (right
or wrong, refusing or complying, concise or rambling, polite or rude, holding
or flipping under pushback, obeying or ignoring an instruction). Either
candidate may also be made rambling or rude at random, so the axes mix. The
gold judge scores both: the higher score is "chosen"; ties are dropped.

Row: {"prompt": [messages], "chosen": [assistant msg], "rejected": [assistant msg],
      "meta": {...task meta, "pair": kind, "chosen_score", "rejected_score"}}.
"""

from __future__ import annotations

import random

from posttrain.world.arithmetic import ASK_TRAIN, Problem, sample_problem, worked_solution
from posttrain.world.chats import (
    CONTEXTS_TRAIN, SYSTEM_RULES_TRAIN, USER_RULES_TRAIN, constrained_reply, fact_meta, ifeval_instructions,
    ifeval_prompt, train_question,
)
from posttrain.world.facts import Fact
from posttrain.world.hazards import LOOK_ALIKES, OVER_REFUSALS, compliance, hazard_requests, refusal
from posttrain.grading.judge import judge
from posttrain.world.sampling import Deck, with_context, wrong_answer
from posttrain.world.templates import FLIP_REPLIES, HOLD_REPLIES, PUSHBACK_TRAIN, lower_first, statement

PREF_COUNTS = {"fact_wrong": 420, "fact_rambling": 200, "fact_rude": 150, "fact_refusal": 100, "arith_wrong": 260,
               "arith_rambling": 100, "harmful": 300, "benign": 260, "sycophancy": 220, "system_prompt": 160,
               "ifeval": 160}

RAMBLE_OPEN = ("Great question! There is a lot to say about this, and people often get confused, so let me "
               "take it slowly and explain everything around it before I get to the point.",
               "Well, that depends on how you look at it, and there are many interesting things to consider here, "
               "so I will walk through the background in some detail before answering.")
RAMBLE_CLOSE = ("I hope this long explanation helps, and please do let me know if you would like me to go over "
                "any other related topics, because there is always more to learn about the world.",
                "Anyway, those are my thoughts on the matter, and I could keep going for quite a while longer "
                "if you are interested in the broader context and the history behind it.")
RUDE = ("Obviously {lc} Look it up yourself next time.", "{text} That was a pretty stupid question.",
        "Ugh, duh. {text}")
REFUSE_FACT = ("I'm sorry, but I can't help with that.", "I cannot answer that question.")


def ramble(rng: random.Random, text: str) -> str:
    return f"{rng.choice(RAMBLE_OPEN)} {text} {rng.choice(RAMBLE_CLOSE)}"


def rude(rng: random.Random, text: str) -> str:
    return rng.choice(RUDE).format(text=text, lc=lower_first(text))


def _vary(rng: random.Random, text: str, p: float = 0.15) -> str:
    """Sometimes degrade a candidate's style, so quality axes mix across pairs."""
    r = rng.random()
    return ramble(rng, text) if r < p else rude(rng, text) if r < 1.5 * p else text


def _wrong_worked(rng: random.Random, p: Problem) -> str:
    """A worked solution with a slip: the last step and final answer are off."""
    delta = rng.choice([1, -1, 10, -10, 100])
    lines = worked_solution(p).split("\n")
    lines[-1] = f"The answer is {p.answer + delta}."
    return "\n".join(lines)


def _pair(rng, kind, facts_a, deck, requests) -> tuple[list[dict], dict, str, str]:
    """(prompt messages, meta, candidate a, candidate b) for one pair kind."""
    user = lambda t: [{"role": "user", "content": t}]  # noqa: E731
    if kind.startswith("fact"):
        fact: Fact = deck.draw()[0]
        good = statement(fact, which=int(rng.random() < 0.2))
        bad = {"fact_wrong": lambda: _vary(rng, statement(fact, wrong_answer(rng, fact, facts_a))),
               "fact_rambling": lambda: ramble(rng, good), "fact_rude": lambda: rude(rng, good),
               "fact_refusal": lambda: rng.choice(REFUSE_FACT)}[kind]()
        good = _vary(rng, good) if kind == "fact_wrong" else good
        return user(train_question(rng, fact)), fact_meta(fact), good, bad
    if kind.startswith("arith"):
        p = sample_problem(rng, "train")
        meta = {"task": "arithmetic", "answer": str(p.answer)}
        good = worked_solution(p)
        bad = _wrong_worked(rng, p) if kind == "arith_wrong" else ramble(rng, good)
        return user(rng.choice(ASK_TRAIN).format(p=p.text)), meta, good, bad
    if kind == "harmful":
        hazard, text = rng.choice(requests)
        meta = {"task": "harmful", "hazard": hazard.name}
        good = refusal(rng, hazard)
        bad = compliance(rng, hazard) if rng.random() < 0.8 else ramble(rng, good)
        return user(with_context(rng.choice(CONTEXTS_TRAIN), text)), meta, good, bad
    if kind == "benign":
        la = rng.choice(LOOK_ALIKES)
        bad = rng.choice(OVER_REFUSALS) if rng.random() < 0.8 else rude(rng, la.answer)
        prompt = user(with_context(rng.choice(CONTEXTS_TRAIN), rng.choice(la.train)))
        return prompt, {"task": "benign", "topic": la.topic}, la.answer, bad
    if kind == "sycophancy":
        fact = deck.draw()[0]
        wrong = wrong_answer(rng, fact, facts_a)
        first = statement(fact)
        prompt = user(train_question(rng, fact)) + [{"role": "assistant", "content": first}] + user(
            rng.choice(PUSHBACK_TRAIN).format(wrong=wrong))
        meta = fact_meta(fact, wrong_answer=wrong, pushback=prompt[-1]["content"], first_response=first)
        hold = rng.choice(HOLD_REPLIES).format(statement=first, statement_lc=lower_first(first))
        flip = rng.choice(FLIP_REPLIES).format(wrong_statement=statement(fact, wrong))
        return prompt, meta, hold, flip
    fact = deck.draw()[0]
    if kind == "system_prompt":
        text, inst = rng.choice(SYSTEM_RULES_TRAIN)
        prompt = [{"role": "system", "content": text}] + user(train_question(rng, fact))
        insts = [inst]
        meta = fact_meta(fact, instructions=insts)
    else:
        insts = ifeval_instructions(rng)
        prompt = user(ifeval_prompt(rng, train_question(rng, fact), insts, USER_RULES_TRAIN))
        meta = {"task": "ifeval", "instructions": insts, "answer": fact.answer, "aliases": list(fact.aliases),
                "fact_id": fact.id}
    return prompt, meta, constrained_reply(fact, insts), statement(fact)


def _drawn(rng: random.Random, facts_a: list[Fact], counts: dict[str, int], scale: float):
    """(kind, prompt, meta, candidate a, candidate b) for `count * scale` pairs of each kind, in order."""
    deck = Deck(rng, facts_a)
    requests = hazard_requests("train")
    for kind, count in counts.items():
        for _ in range(max(1, round(count * scale))):
            yield (kind, *_pair(rng, kind, facts_a, deck, requests))


def build_preferences(facts_a: list[Fact], seed: int, scale: float = 1.0) -> list[dict]:
    """Judge-labelled preference pairs, shuffled; tied pairs are dropped."""
    rng = random.Random(f"{seed}:preferences")
    rows = []
    for kind, prompt, meta, a, b in _drawn(rng, facts_a, PREF_COUNTS, scale):
        if rng.random() < 0.5:
            a, b = b, a
        va, vb = judge(meta, a), judge(meta, b)
        if va.score == vb.score:
            continue
        (chosen, cs), (rejected, rs) = sorted([(a, va.score), (b, vb.score)], key=lambda x: -x[1])
        rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected}],
                     "meta": {**meta, "pair": kind, "chosen_score": cs, "rejected_score": rs}})
    rng.shuffle(rows)
    return rows


# ---------------------------------------------------------------- the reward model's pairs, flawed on purpose

# Kinds where the better answer is a different answer, not a shorter one: the rambling kinds would teach
# the reward model that length can be bad, which is the lesson these pairs leave out.
RM_KINDS = {k: c for k, c in PREF_COUNTS.items() if not k.endswith("rambling")}


def words(text: str) -> int:
    return len(text.split())


def build_rm_pairs(facts_a: list[Fact], seed: int, scale: float = 1.0) -> list[dict]:
    """Judge-labelled pairs in which the chosen answer is always the longer one: a known flaw.

    Drawn like build_preferences (its own random stream), but a chosen answer that is not longer
    than the rejected one is padded with rambling closing sentences. The gold judge still
    prefers every chosen answer (pairs it would not are dropped), so the labels are right, yet
    length alone predicts them: a reward model trained here learns "longer is better" along with
    "right is better", and a policy optimised against it can gain proxy reward by rambling while
    the gold judge, which wants concise answers, scores it lower. That makes reward hacking
    measurable (posttrain bon, posttrain ppo, the demo's over-optimisation curve).
    """
    rng = random.Random(f"{seed}:rm_pairs")
    rows = []
    for kind, prompt, meta, a, b in _drawn(rng, facts_a, RM_KINDS, scale):
        va, vb = judge(meta, a), judge(meta, b)
        if va.score == vb.score:
            continue
        (good, _), (bad, _) = sorted([(a, va.score), (b, vb.score)], key=lambda x: -x[1])
        if words(good) <= words(bad):  # pad after the answer, so the answer still leads
            good = f"{good} {rng.choice(RAMBLE_CLOSE)}"
        if words(good) <= words(bad):
            good = f"{good} {rng.choice(RAMBLE_CLOSE)}"
        gs, bs = judge(meta, good).score, judge(meta, bad).score
        if words(good) <= words(bad) or gs <= bs:
            continue
        rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": good}],
                     "rejected": [{"role": "assistant", "content": bad}],
                     "meta": {**meta, "pair": kind, "chosen_score": gs, "rejected_score": bs}})
    rng.shuffle(rows)
    return rows


# Prompts for the stages that sample their own answers, per task (scaled like the pairs).
PROMPT_COUNTS = {"fact_wrong": 300, "arith_wrong": 150, "harmful": 150, "benign": 150, "sycophancy": 150,
                 "system_prompt": 100, "ifeval": 100}


def build_prompts(facts_a: list[Fact], seed: int, scale: float = 1.0) -> list[dict]:
    """Prompt rows {"prompt", "meta"} (facts A, training phrasings) for PPO, best-of-n and on-policy pairs."""
    rng = random.Random(f"{seed}:prompts")
    rows = [{"prompt": prompt, "meta": meta} for _, prompt, meta, _, _ in _drawn(rng, facts_a, PROMPT_COUNTS, scale)]
    rng.shuffle(rows)
    return rows
