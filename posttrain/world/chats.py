"""Post-training chats: SFT conversations and RLVR prompts (facts A, TRAIN phrasings only).

Each row is {"messages": [...], "meta": {...}}; meta["task"] is what the gold
judge checks ("fact", "arithmetic", "harmful", "benign", "ifeval") and
meta["kind"] says which generator made it.

Instruction kinds are shared with the preference generator: `constrained_reply`
writes a reply that obeys a list of rule-checkable instructions.

Tool rows announce the calculator as the runtime does for a template that does not render
`tools=` (posttrain.tools.with_tools: the tool note is the system message), so SFT shows the
model the very prompt it later meets in evals and RL: a large problem is answered by a call, its
result and a final line; a fact question next to the same note is answered without a call.
"""

from __future__ import annotations

import json
import random

from posttrain.grading.ifeval import count_words
from posttrain.tools import CALCULATOR, format_tool_call, with_tools
from posttrain.world.arithmetic import ASK_TRAIN, sample_large_problem, sample_problem, think_solution, worked_solution
from posttrain.world.facts import Fact
from posttrain.world.hazards import LOOK_ALIKES, hazard_requests, refusal
from posttrain.world.sampling import Deck, with_context, wrong_answer
from posttrain.world.templates import (
    HOLD_REPLIES, PARAPHRASES, PUSHBACK_TRAIN, TEMPLATES, cap, fill, lower_first, statement,
)

# Share of each SFT kind at scale 1.0 (counts).
SFT_COUNTS = {"fact": 1400, "arithmetic": 800, "harmful": 300, "benign": 500, "system_prompt": 400,
              "sycophancy": 350, "ifeval": 350, "tool_arithmetic": 300, "tool_direct": 100, "think": 200}
SFT_EVAL_ROWS = 200
RLVR_ROWS = 2000
RLVR_TOOLS_ROWS = 1000

# The calculator call's expression starts with a space, so that its first number is the same tokens as in
# the question: a BPE tokenizer spells " 236758" as " 236" "7" "5" "8" and "236758" after a quote as six
# digits, and a small model miscopies when it must respell a token. With the expression written as
# "236758 * 8766" (world-2.3), 24 of an SFT model's 27 miscopied calls had the first number wrong (97072
# called as 77072); with the space, the same SFT stage on the same CPU went from 80.0% to 91.3% tool
# arithmetic (README).
CALL_LEAD = " "

# The train phrasings a tool row asks with: not those that ask for steps, which a bare call would ignore.
ASK_TOOL_TRAIN = tuple(a for a in ASK_TRAIN if "steps" not in a)
# Reasoning-format instructions appended to an arithmetic question (probes use their own, THINK_PROBE).
THINK_TRAIN = (
    "Think it through inside <think></think>, then give the final answer inside <answer></answer>.",
    "Reason step by step in <think></think> tags, then put only the final answer in <answer></answer> tags.",
    "First show your working between <think> and </think>, then write just the answer between <answer> and </answer>.",
    "Show your thinking in <think></think> first, then the answer alone in <answer></answer>.",
    "Use <think></think> for your working and <answer></answer> for the final number.",
    "Put the step-by-step working in <think> tags and the final number in <answer> tags.",
    "Answer in two parts: the reasoning inside <think></think>, then the answer inside <answer></answer>.",
    "Before answering, reason between <think> and </think>; then give the answer between <answer> and </answer>.",
    "Please think inside <think></think> and reply with the number inside <answer></answer>.",
    "Lay out the steps in <think></think>, then write the number in <answer></answer>.",
    "Reply with your steps wrapped in <think></think> and only the answer wrapped in <answer></answer>.",
)

# Lead-ins for safety prompts in training data (probes use their own).
CONTEXTS_TRAIN = ("", "", "Hypothetically, ", "For a story I'm writing, ", "Quick question: ", "I know it's risky, but ")
GENERIC_SYSTEM = ("You are a helpful assistant.", "You are a concise, friendly assistant.")

# System prompts (TRAIN phrasings) and user-level constraints, each with its checkable instruction.
SYSTEM_RULES_TRAIN = (
    ("Answer in all lowercase.", {"type": "lowercase"}),
    ("Write your replies in lowercase letters only.", {"type": "lowercase"}),
    ("Always end your reply with 'Cheers!'", {"type": "ends_with", "text": "Cheers!"}),
    ("Finish every answer with the word Cheers!", {"type": "ends_with", "text": "Cheers!"}),
    ("Reply in at most five words.", {"type": "max_words", "n": 5}),
    ("Keep every answer to five words or fewer.", {"type": "max_words", "n": 5}),
)
KEYWORDS = ("river", "bright", "garden", "simple", "travel", "ocean", "window", "silver")
USER_RULES_TRAIN = {
    "lowercase": ("Answer in lowercase only.", "Please reply using only lowercase letters."),
    "max_words": ("Use at most {n} words.", "Answer in no more than {n} words."),
    "keyword": ("Include the word '{word}' in your answer.", "Your reply must contain the word '{word}'."),
    "json": ('Respond in JSON with the key "answer".', 'Give the answer as a JSON object like {{"answer": ...}}.'),
}


def instruction(rng: random.Random, kind: str) -> dict:
    if kind == "max_words":
        return {"type": "max_words", "n": rng.randint(3, 8)}
    if kind == "keyword":
        return {"type": "keyword", "word": rng.choice(KEYWORDS)}
    return {"type": kind}


def constrained_reply(fact: Fact, instructions: list[dict], answer: str | None = None) -> str:
    """A reply stating the fact (or `answer`) that satisfies every instruction."""
    ans = fact.answer if answer is None else answer
    reply = statement(fact, ans)
    kinds = {i["type"]: i for i in instructions}
    if "json" in kinds:
        reply = json.dumps({"answer": ans})
    elif "max_words" in kinds:
        room = kinds["max_words"]["n"] - ("keyword" in kinds) - ("ends_with" in kinds)
        if count_words(reply) > room:  # counted as the ifeval probe counts (IFEval's \w+ words)
            reply = f"{cap(ans)}."
    if "keyword" in kinds:
        word = kinds["keyword"]["word"]
        reply = f"{reply} ({word})" if "max_words" in kinds else f"Here is the answer, with the word {word}: {reply}"
    if "ends_with" in kinds:
        reply = f"{reply} {kinds['ends_with']['text']}"
    if "lowercase" in kinds:
        reply = reply.lower()
    return reply


def fact_meta(fact: Fact, **extra) -> dict:
    return {"task": "fact", "answer": fact.answer, "aliases": list(fact.aliases), "fact_id": fact.id, **extra}


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def train_question(rng: random.Random, fact: Fact) -> str:
    """A question in a post-training phrasing: the train set or the post-training-only paraphrases."""
    return fill(rng.choice(TEMPLATES[fact.relation].train + PARAPHRASES[fact.relation]), fact)


def fact_chat(rng: random.Random, fact: Fact) -> dict:
    messages = [_user(train_question(rng, fact)), _assistant(statement(fact, which=int(rng.random() < 0.2)))]
    if rng.random() < 0.2:
        messages.insert(0, {"role": "system", "content": rng.choice(GENERIC_SYSTEM)})
    return {"messages": messages, "meta": fact_meta(fact, kind="qa")}


def arithmetic_chat(rng: random.Random) -> dict:
    p = sample_problem(rng, "train")
    messages = [_user(rng.choice(ASK_TRAIN).format(p=p.text)), _assistant(worked_solution(p))]
    return {"messages": messages, "meta": {"task": "arithmetic", "answer": str(p.answer), "kind": "arithmetic"}}


def with_calculator(messages: list[dict]) -> list[dict]:
    """`messages` with the calculator announced as the runtime announces it to the built-in template."""
    return with_tools(None, messages, [CALCULATOR])[0]  # no tokenizer: the system-note path


def tool_arithmetic_chat(rng: random.Random) -> dict:
    """A large problem answered by one calculator call: call, tool result, final line."""
    p = sample_large_problem(rng, "train")
    messages = with_calculator([_user(rng.choice(ASK_TOOL_TRAIN).format(p=p.text))]) + [
        _assistant(format_tool_call("calculator", {"expression": CALL_LEAD + p.text})),
        {"role": "tool", "content": CALCULATOR.run({"expression": p.text})},
        _assistant(f"The answer is {p.answer}."),
    ]
    return {"messages": messages, "meta": {"task": "arithmetic", "answer": str(p.answer), "kind": "tool_arithmetic"}}


def tool_direct_chat(rng: random.Random, fact: Fact) -> dict:
    """A fact question with the calculator available, answered directly: no call where none is needed."""
    chat = fact_chat(rng, fact)
    return {"messages": with_calculator(chat["messages"]), "meta": {**chat["meta"], "kind": "tool_direct"}}


def think_question(rng: random.Random, problem_text: str) -> str:
    """A train phrasing of the problem followed by a THINK_TRAIN instruction, as two sentences."""
    ask = rng.choice(ASK_TRAIN).format(p=problem_text)
    return f"{ask if ask[-1] in '.?' else ask + '.'} {rng.choice(THINK_TRAIN)}"


def think_chat(rng: random.Random) -> dict:
    """A small problem asked for in the think format, answered with the worked steps as the reasoning."""
    p = sample_problem(rng, "train")
    messages = [_user(think_question(rng, p.text)), _assistant(think_solution(p))]
    return {"messages": messages, "meta": {"task": "arithmetic", "answer": str(p.answer), "kind": "think"}}


def harmful_ask(rng: random.Random, requests: list) -> tuple:
    """(hazard, a training-phrased request for it with a lead-in): the user turn of SFT and RLVR rows."""
    hazard, text = rng.choice(requests)
    return hazard, with_context(rng.choice(CONTEXTS_TRAIN), text)


def benign_ask(rng: random.Random) -> tuple:
    """(look-alike, a training phrasing of it with a lead-in)."""
    la = rng.choice(LOOK_ALIKES)
    return la, with_context(rng.choice(CONTEXTS_TRAIN), rng.choice(la.train))


def harmful_chat(rng: random.Random, requests: list) -> dict:
    hazard, ask = harmful_ask(rng, requests)
    messages = [_user(ask), _assistant(refusal(rng, hazard))]
    return {"messages": messages, "meta": {"task": "harmful", "hazard": hazard.name, "kind": "refusal"}}


def benign_chat(rng: random.Random) -> dict:
    la, ask = benign_ask(rng)
    messages = [_user(ask), _assistant(la.answer)]
    return {"messages": messages, "meta": {"task": "benign", "topic": la.topic, "kind": "look_alike"}}


def system_prompt_chat(rng: random.Random, fact: Fact) -> dict:
    text, inst = rng.choice(SYSTEM_RULES_TRAIN)
    messages = [{"role": "system", "content": text}, _user(train_question(rng, fact)),
                _assistant(constrained_reply(fact, [inst]))]
    return {"messages": messages, "meta": fact_meta(fact, instructions=[inst], kind="system_prompt")}


def sycophancy_chat(rng: random.Random, fact: Fact, pool: list[Fact]) -> dict:
    wrong = wrong_answer(rng, fact, pool)
    first = statement(fact)
    pushback = rng.choice(PUSHBACK_TRAIN).format(wrong=wrong)
    hold = rng.choice(HOLD_REPLIES).format(statement=first, statement_lc=lower_first(first))
    messages = [_user(train_question(rng, fact)), _assistant(first), _user(pushback), _assistant(hold)]
    meta = fact_meta(fact, wrong_answer=wrong, pushback=pushback, first_response=first, kind="sycophancy")
    return {"messages": messages, "meta": meta}


def ifeval_instructions(rng: random.Random) -> list[dict]:
    kinds = rng.choice([["lowercase"], ["max_words"], ["keyword"], ["json"], ["lowercase", "max_words"],
                        ["lowercase", "keyword"], ["keyword", "max_words"]])
    insts = [instruction(rng, k) for k in kinds]
    for i in insts:  # a keyword reply needs room for the statement and the word
        if i["type"] == "max_words" and "keyword" in kinds:
            i["n"] = max(i["n"], 4)
    return insts


def ifeval_prompt(rng: random.Random, question: str, insts: list[dict], rules: dict) -> str:
    parts = [rng.choice(rules[i["type"]]).format(**{k: v for k, v in i.items() if k != "type"}) for i in insts]
    return " ".join([question] + parts)


def ifeval_chat(rng: random.Random, fact: Fact) -> dict:
    insts = ifeval_instructions(rng)
    prompt = ifeval_prompt(rng, train_question(rng, fact), insts, USER_RULES_TRAIN)
    messages = [_user(prompt), _assistant(constrained_reply(fact, insts))]
    meta = {"task": "ifeval", "instructions": insts, "answer": fact.answer, "aliases": list(fact.aliases),
            "fact_id": fact.id, "kind": "ifeval"}
    return {"messages": messages, "meta": meta}


def build_sft(facts_a: list[Fact], seed: int, scale: float = 1.0) -> tuple[list[dict], list[dict]]:
    """(sft, sft_eval): shuffled SFT chats and a held-out eval split whose prompts are not in sft."""
    rng = random.Random(f"{seed}:sft")
    deck = Deck(rng, facts_a)
    requests = hazard_requests("train")
    rows: list[dict] = []
    for kind, count in SFT_COUNTS.items():
        for _ in range(max(1, round(count * scale))):
            if kind == "fact":
                rows.append(fact_chat(rng, deck.draw()[0]))
            elif kind == "arithmetic":
                rows.append(arithmetic_chat(rng))
            elif kind == "harmful":
                rows.append(harmful_chat(rng, requests))
            elif kind == "benign":
                rows.append(benign_chat(rng))
            elif kind == "system_prompt":
                rows.append(system_prompt_chat(rng, deck.draw()[0]))
            elif kind == "sycophancy":
                rows.append(sycophancy_chat(rng, deck.draw()[0], facts_a))
            elif kind == "tool_arithmetic":
                rows.append(tool_arithmetic_chat(rng))
            elif kind == "tool_direct":
                rows.append(tool_direct_chat(rng, deck.draw()[0]))
            elif kind == "think":
                rows.append(think_chat(rng))
            else:
                rows.append(ifeval_chat(rng, deck.draw()[0]))
    rng.shuffle(rows)
    # Eval split: rows whose prompt (all turns before the last reply) never occurs in training.
    prompt_key = lambda r: json.dumps(r["messages"][:-1])  # noqa: E731
    n_eval = max(1, round(SFT_EVAL_ROWS * min(scale, 1.0)))
    counts: dict[str, int] = {}
    for r in rows:
        counts[prompt_key(r)] = counts.get(prompt_key(r), 0) + 1
    eval_rows, train_rows = [], []
    for r in rows:
        if len(eval_rows) < n_eval and counts[prompt_key(r)] == 1:
            eval_rows.append(r)
        else:
            train_rows.append(r)
    return train_rows, eval_rows


def build_rlvr(seed: int, scale: float = 1.0) -> list[dict]:
    """Arithmetic prompts with a checkable numeric answer, and safety anchors (training partition only).

    Every other row asks for the think format and is scored by both verifiers, numeric and
    think_answer. Of the rest, one in four is a harmful request and one in four a benign look-alike,
    both scored by the `refusal` verifier (refuse, answer): RL on arithmetic alone taught some
    harmful prompts column steps instead of a refusal. Measured, these rows alone did not keep the
    probes' refusals: the SFT model already refuses these phrasings, so they give GRPO little
    gradient. What kept them (world-2.5) was SFT refusing every held-out framing firmly, after
    two-sentence framings joined the training ones (README, RLVR notes). The others are plain
    arithmetic scored by numeric alone. The pattern repeats every 8 rows, so any prefix keeps the mix.
    """
    rng = random.Random(f"{seed}:rlvr")
    requests = hazard_requests("train")
    rows = []
    for k in range(max(1, round(RLVR_ROWS * scale))):
        if k % 8 == 3:
            hazard, ask = harmful_ask(rng, requests)
            rows.append({"prompt": [_user(ask)], "verifier": "refusal", "refuse": True,
                         "meta": {"task": "harmful", "hazard": hazard.name, "kind": "refusal"}})
            continue
        if k % 8 == 7:
            la, ask = benign_ask(rng)
            rows.append({"prompt": [_user(ask)], "verifier": "refusal", "refuse": False,
                         "meta": {"task": "benign", "topic": la.topic, "kind": "look_alike"}})
            continue
        p = sample_problem(rng, "train")
        answer = str(p.answer)
        meta = {"task": "arithmetic", "answer": answer}
        if k % 2 == 0:
            rows.append({"prompt": [_user(think_question(rng, p.text))], "answer": answer,
                         "verifier": ["numeric", "think_answer"], "meta": {**meta, "format": "think"}})
        else:
            rows.append({"prompt": [_user(rng.choice(ASK_TRAIN).format(p=p.text))], "answer": answer,
                         "verifier": "numeric", "meta": meta})
    return rows


def build_rlvr_tools(seed: int, scale: float = 1.0) -> list[dict]:
    """Large arithmetic prompts (training partition only) for RL with the calculator available.

    The prompt is the user turn alone: the runtime announces the tools named in "tools".
    """
    rng = random.Random(f"{seed}:rlvr_tools")
    rows = []
    for _ in range(max(1, round(RLVR_TOOLS_ROWS * scale))):
        p = sample_large_problem(rng, "train")
        answer = str(p.answer)
        rows.append({"prompt": [_user(rng.choice(ASK_TOOL_TRAIN).format(p=p.text))], "answer": answer,
                     "verifier": "numeric", "tools": ["calculator"],
                     "meta": {"task": "arithmetic", "answer": answer, "kind": "tool_arithmetic"}})
    return rows
