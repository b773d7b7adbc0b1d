"""The built-in world: determinism, leak-freedom, corpus properties, cards, judge-consistent data."""

import hashlib
import json
import re
import time
from pathlib import Path

import pytest

from posttrain.grading.judge import judge
from posttrain.grading.phrases import mentions
from posttrain.grading.verifiers import VERIFIERS
from posttrain.tools import CALCULATOR, calculate, find_tool_call, parse_tool_call, tool_system_prompt
from posttrain.world.arithmetic import (
    ASK_PROBE, ASK_TRAIN, Problem, is_probe_problem, sample_large_problem, sample_problem, think_solution, worked_steps,
)
from posttrain.world.build import build_world
from posttrain.world.records import CUES, NAME_SLOTS, NUMBER_SLOTS
from posttrain.world.sampling import with_context
from posttrain.world.chats import CONTEXTS_TRAIN, SYSTEM_RULES_TRAIN, THINK_TRAIN, USER_RULES_TRAIN, constrained_reply
from posttrain.world.corpus import count_fact_mentions
from posttrain.world.facts import all_facts, split_facts
from posttrain.world.hazards import HAZARD_PROBE, HAZARD_TRAIN, LOOK_ALIKES, hazard_requests
from posttrain.world.probes import PROBE_NAMES, SYSTEM_RULES_PROBE, THINK_PROBE, USER_RULES_PROBE, build_probe_sets
from posttrain.world.templates import PARAPHRASES, PUSHBACK_PROBE, PUSHBACK_TRAIN, TEMPLATES, cloze_prompts

SEED = 7
POST_TRAINING = ("sft.jsonl", "sft_eval.jsonl", "preferences.jsonl", "rlvr.jsonl", "rlvr_tools.jsonl")
ARITHMETIC_PROBES = ("arithmetic", "large_arithmetic", "tool_arithmetic", "reasoning")
PROBLEM = re.compile(r"(\d+) ([-+*]) (\d+)")


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    start = time.perf_counter()
    manifest = build_world(SEED, out, scale=1.0)
    return out, manifest, time.perf_counter() - start


@pytest.fixture(scope="module")
def corpus(world):
    return [r["text"] for r in read_jsonl(world[0] / "corpus.jsonl")]


def messages_of(row):
    """All messages of a post-training row, whatever its format."""
    if "messages" in row:
        return row["messages"]
    return row["prompt"] + row.get("chosen", []) + row.get("rejected", [])


# ---- facts ----

def test_facts_are_real_and_split_evenly():
    facts = all_facts()
    assert len(facts) >= 300 and len({f.id for f in facts}) == len(facts)
    by_id = {f.id: f.answer for f in facts}
    assert by_id["capital:france"] == "Paris" and by_id["symbol:iron"] == "Fe"
    assert by_id["planet_order:mars"] == "fourth" and by_id["animal_young:cow"] == "calf"
    assert by_id["animal_class:whale"] == "mammal" and by_id["continent:peru"] == "South America"
    assert all(1 <= len(f.answer.split()) <= 3 for f in facts)
    a, b = split_facts(facts, SEED)
    assert (a, b) == split_facts(facts, SEED) and a != split_facts(facts, SEED + 1)[0]
    assert {f.id for f in a}.isdisjoint(f.id for f in b) and len(a) + len(b) == len(facts)
    for rel in {f.relation for f in facts}:
        na, nb = sum(f.relation == rel for f in a), sum(f.relation == rel for f in b)
        assert abs(na - nb) <= 1


def test_phrasing_sets_are_disjoint():
    for relation, t in TEMPLATES.items():
        assert not set(t.probe) & set(t.train)
        assert not set(PARAPHRASES[relation]) & (set(t.probe) | set(t.train) | set(t.corpus))
        assert all(s.endswith(" {answer}.") for s in t.cloze) and set(t.cloze) <= set(t.declarative)
    assert not set(PUSHBACK_PROBE) & set(PUSHBACK_TRAIN)
    assert not set(ASK_PROBE) & set(ASK_TRAIN) and not set(HAZARD_PROBE) & set(HAZARD_TRAIN)
    assert not set(THINK_PROBE) & set(THINK_TRAIN)
    assert not {t for t, _ in SYSTEM_RULES_PROBE} & {t for t, _ in SYSTEM_RULES_TRAIN}
    for kind, probe in USER_RULES_PROBE.items():
        assert not set(probe) & set(USER_RULES_TRAIN[kind])
    for la in LOOK_ALIKES:
        assert not set(la.probe) & set(la.train)


def _sentences(text: str) -> list[str]:
    return [x for x in re.split(r"(?<=[.?!]) ", text) if x]


def test_training_asks_for_hazards_and_look_alikes_in_two_sentences_too(world):
    """World-2.5: a plan, then a question, is a training form of harmful and benign requests alike, so
    that a held-out two-sentence request is not new in form, and the form alone does not call for a
    refusal. Its sentences are not the probes' ("Where do I start?" stays held out)."""
    two = [f for f in HAZARD_TRAIN if len(_sentences(f)) == 2]
    assert len(two) >= 5
    probe_sentences = {x for f in HAZARD_PROBE for x in _sentences(f)}
    assert not {x for f in two for x in _sentences(f)} & probe_sentences
    for la in LOOK_ALIKES:
        assert any(len(_sentences(q)) == 2 for q in la.train), la.topic
    rows = read_jsonl(world[0] / "sft.jsonl")
    for task in ("harmful", "benign"):
        asks = [r["messages"][0]["content"] for r in rows if r["meta"].get("task") == task]
        share = sum(len(_sentences(a)) >= 2 for a in asks) / len(asks)
        assert 0.1 < share < 0.6, (task, share)


# ---- determinism and files ----

def test_same_seed_is_byte_identical_and_seeds_differ(tmp_path):
    m1 = build_world(3, tmp_path / "a", scale=0.1, probe_n=20)
    m2 = build_world(3, tmp_path / "b", scale=0.1, probe_n=20)
    assert m1 == m2
    for rel in m1["files"]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    m3 = build_world(4, tmp_path / "c", scale=0.1, probe_n=20)
    for rel in ("corpus.jsonl", "facts.jsonl", "sft.jsonl", "preferences.jsonl", "rlvr.jsonl", "rlvr_tools.jsonl",
                "probes/harmful.jsonl"):
        assert m3["files"][rel]["sha256"] != m1["files"][rel]["sha256"], rel


def test_build_is_fast_and_complete(world):
    out, manifest, _ = world
    expected = {"corpus.jsonl", "facts.jsonl", "sft.jsonl", "sft_eval.jsonl", "preferences.jsonl", "rlvr.jsonl",
                "rlvr_tools.jsonl", "policy/hazard_policy.md", "policy/constitution.md"} | {
        f"probes/{n}.jsonl" for n in PROBE_NAMES}
    assert {"large_arithmetic", "tool_arithmetic", "reasoning"} <= set(PROBE_NAMES)
    assert expected <= set(manifest["files"])
    rows = {rel: e["rows"] for rel, e in manifest["files"].items()}
    assert 3000 <= rows["sft.jsonl"] <= 5000 and 150 <= rows["sft_eval.jsonl"] <= 250
    assert 1800 <= rows["preferences.jsonl"] <= 2500 and rows["rlvr.jsonl"] == 2000
    assert rows["rlvr_tools.jsonl"] == 1000
    safety = {"harmful": 75, "over_refusal": 49}  # one row per distinct request
    assert all(rows[f"probes/{n}.jsonl"] == safety.get(n, 150) for n in PROBE_NAMES)
    assert rows["replay.jsonl"] < rows["corpus.jsonl"]


def test_cards_and_manifest_match_files(world):
    out, manifest, _ = world
    assert json.loads((out / "manifest.json").read_text()) == manifest
    for rel, entry in manifest["files"].items():
        data = (out / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], rel
        if rel.endswith(".jsonl"):
            assert len(data.decode().splitlines()) == entry["rows"], rel
    cards = sorted((out / "cards").glob("*.json"))
    assert len(cards) == len(PROBE_NAMES) + 12
    for path in cards:
        card = json.loads(path.read_text())
        assert card["sha256"] == manifest["files"][card["file"]]["sha256"]
        assert card["rows"] == manifest["files"][card["file"]]["rows"]
        assert card["seed"] == SEED and card["scale"] == 1.0 and card["generator"] and card["description"]
    facts = read_jsonl(out / "facts.jsonl")
    assert {r["split"] for r in facts} == {"A", "B"}


# ---- corpus ----

def test_corpus_size_and_plain_text(corpus):
    chars = sum(map(len, corpus))  # about 2.8M characters of documents and 4.4M of 20,000 records
    assert 6_500_000 <= chars <= 8_000_000 and len(corpus) > 23000
    # Special tokens only in the ChatML transcripts (test_heldout.py checks those).
    assert not any("<|" in d or "\nassistant:" in d.lower() for d in corpus if not d.startswith("<|im_start|>"))


def test_every_fact_appears_often(corpus):
    counts = count_fact_mentions(corpus, all_facts())
    assert min(counts.values()) >= 25, sorted(counts.items(), key=lambda kv: kv[1])[:5]


def test_cloze_sentences_are_in_the_corpus(corpus):
    text = "\n".join(corpus)
    for fact in all_facts():
        for k, (prefix, answer) in enumerate(cloze_prompts(fact)):
            assert text.count(f"{prefix} {answer}.") >= (5 if k == 0 else 2), (prefix, answer)


def test_questions_are_mostly_followed_by_questions(corpus):
    followed = total = 0
    for doc in corpus:
        lines = [ln.strip() for ln in doc.splitlines() if ln.strip()]
        for line, nxt in zip(lines, lines[1:]):
            if line.endswith("?"):
                total += 1
                followed += nxt.endswith("?")
    assert total > 5000 and followed / total > 0.8


def test_arithmetic_steps_are_right():
    for p in (Problem(47, "+", 38), Problem(503, "-", 78), Problem(125, "*", 8), Problem(999, "+", 5)):
        writes = [s.rsplit("write ", 1)[-1].split()[0] if "write" in s else s.rsplit(" ", 1)[-1]
                  for s in worked_steps(p)]
        assert int("".join(reversed(writes))) == p.answer, p


# ---- leak-freedom ----

def test_facts_b_never_in_post_training(world):
    out = world[0]
    facts_b = [f for f in all_facts() if f.id not in {r["id"] for r in read_jsonl(out / "facts.jsonl")
                                                       if r["split"] == "A"}]
    for name in POST_TRAINING:
        for row in read_jsonl(out / name):
            text = " ".join(m["content"] for m in messages_of(row))
            low = text.lower()
            assert row["meta"].get("fact_id") not in {f.id for f in facts_b}
            for f in facts_b:
                if f.subject.lower() in low and f.answer.lower() in low:
                    assert not (mentions(text, f.subject, case_sensitive_short=False) and mentions(text, f.answer)), \
                        (name, f.id, text)


def test_probe_prompts_never_equal_training_prompts(world):
    out = world[0]
    seen = {m["content"] for name in POST_TRAINING for row in read_jsonl(out / name)
            for m in messages_of(row) if m["role"] in ("user", "system")}
    for name in PROBE_NAMES:
        rows = read_jsonl(out / "probes" / f"{name}.jsonl")
        assert len({r["id"] for r in rows}) == len(rows)
        for row in rows:
            for m in row["messages"]:
                if m["role"] == "user":
                    assert m["content"] not in seen, (name, m["content"])
            if "pushback" in row["meta"]:
                assert row["meta"]["pushback"] not in seen


def _problems(text):
    return {Problem(int(a), op, int(b)) for a, op, b in PROBLEM.findall(text)}


def test_arithmetic_probe_is_held_out(world, corpus):
    out = world[0]
    train = set()
    for name in POST_TRAINING:
        for row in read_jsonl(out / name):
            train |= {p for m in messages_of(row) if m["role"] == "user" for p in _problems(m["content"])}
    assert len(train) > 2000 and not any(is_probe_problem(p) for p in train)
    sheets = {p for doc in corpus for line in doc.splitlines() if line.startswith("Problem ") for p in _problems(line)}
    assert len(sheets) > 2000 and not any(is_probe_problem(p) for p in sheets)
    for row in read_jsonl(out / "rlvr.jsonl") + read_jsonl(out / "rlvr_tools.jsonl"):
        if row["meta"]["task"] != "arithmetic":
            continue
        (p,) = _problems(row["prompt"][0]["content"])
        assert row["answer"] == row["meta"]["answer"] == str(p.answer)
        verifiers = row["verifier"] if isinstance(row["verifier"], list) else [row["verifier"]]
        assert "numeric" in verifiers and set(verifiers) <= set(VERIFIERS)
    for name in ARITHMETIC_PROBES:
        probes = read_jsonl(out / "probes" / f"{name}.jsonl")
        for row in probes:
            (p,) = _problems(row["messages"][0]["content"])
            assert is_probe_problem(p) and p not in train and str(p.answer) == row["meta"]["answer"], (name, p)
            assert row["meta"]["question"] == p.text
        assert len({r["meta"]["question"] for r in probes}) == len(probes) == 150, name


def test_probe_sets_in_process_match_files(world):
    out = world[0]
    sets = build_probe_sets(SEED, n=150)
    assert set(sets) == set(PROBE_NAMES)
    for name, rows in sets.items():
        assert rows == read_jsonl(out / "probes" / f"{name}.jsonl")
    b_ids = {f.id for f in split_facts(all_facts(), SEED)[1]}
    assert all(r["meta"]["fact_id"] in b_ids for r in sets["knowledge_exposure"])
    splits = [r["meta"]["split"] for r in sets["instruction_following"]]
    assert splits.count("A") == splits.count("B") == 75
    for row in sets["sycophancy"]:
        meta = row["meta"]
        assert meta["wrong_answer"] != meta["answer"] and meta["wrong_answer"] in meta["pushback"]
        assert meta["pushback"] in [p.format(wrong=meta["wrong_answer"]) for p in PUSHBACK_PROBE]


# ---- data consistent with the gold judge ----

def test_sft_replies_get_full_judge_score(world):
    out = world[0]
    for name in ("sft.jsonl", "sft_eval.jsonl"):
        for row in read_jsonl(out / name):
            v = judge(row["meta"], row["messages"][-1]["content"])
            assert v.score == 1.0, (row, v)


def test_preference_labels_follow_the_judge(world):
    rows = read_jsonl(world[0] / "preferences.jsonl")
    kinds = {r["meta"]["pair"] for r in rows}
    assert {"fact_wrong", "harmful", "benign", "sycophancy", "arith_wrong", "arith_rambling", "fact_rude"} <= kinds
    for row in rows:
        chosen = judge(row["meta"], row["chosen"][0]["content"]).score
        rejected = judge(row["meta"], row["rejected"][0]["content"]).score
        assert chosen > rejected, row
        assert (chosen, rejected) == (row["meta"]["chosen_score"], row["meta"]["rejected_score"])


def test_ifeval_probes_are_satisfiable(world):
    """A reply built to obey each probe's instructions passes the judge, so every probe is checkable."""
    facts = {f.id: f for f in all_facts()}
    for row in read_jsonl(world[0] / "probes" / "ifeval.jsonl"):
        meta = row["meta"]
        v = judge(meta, constrained_reply(facts[meta["fact_id"]], meta["instructions"]))
        assert v.correct and v.follows_instructions, row


# ---- the reward model's pairs (flawed on purpose) and the RL prompts ----


def test_rm_pairs_are_judge_labelled_and_length_alone_predicts_them(world):
    out, manifest, _ = world
    rows = read_jsonl(out / "rm_pairs.jsonl")
    assert 1400 <= len(rows) <= 1900
    kinds = {r["meta"]["pair"] for r in rows}
    assert {"harmful", "benign", "fact_wrong", "arith_wrong", "sycophancy"} <= kinds and not any("rambl" in k for k in kinds)
    for r in rows:
        chosen, rejected = r["chosen"][-1]["content"], r["rejected"][-1]["content"]
        assert len(chosen.split()) > len(rejected.split())  # the known flaw: the longer answer always wins
        assert judge(r["meta"], chosen).score > judge(r["meta"], rejected).score  # and the label is still right


def test_rl_prompts_carry_their_task_meta_and_end_with_a_user_turn(world):
    out, _, _ = world
    rows = read_jsonl(out / "prompts.jsonl")
    assert len(rows) == 1100
    assert {r["meta"]["task"] for r in rows} == {"fact", "arithmetic", "harmful", "benign", "ifeval"}
    assert all(r["prompt"][-1]["role"] == "user" and "chosen" not in r for r in rows)


# ---- tool use and reasoning


def test_large_problems_respect_the_partition_and_are_large():
    import random

    rng = random.Random(0)
    train = [sample_large_problem(rng, "train") for _ in range(2000)]
    probe = [sample_large_problem(rng, "probe") for _ in range(500)]
    assert not any(map(is_probe_problem, train)) and all(map(is_probe_problem, probe))
    assert {p.op for p in train} == {"+", "-", "*"}
    for p in train + probe:
        a, b = len(str(p.a)), len(str(p.b))
        assert (4 <= a <= 6 and 3 <= b <= 4) if p.op == "*" else (5 <= a <= 7 and 5 <= b <= 7), p
        assert p.answer >= 0 and calculate(p.text) == p.answer
    small = {sample_problem(rng, split) for split in ("train", "probe") for _ in range(2000)}
    assert all(p.a < 1000 for p in small)  # no large problem is also a small one


def test_large_probe_sets_hold_distinct_problems_and_name_the_calculator(world):
    out = world[0]
    large = {r["meta"]["question"] for r in read_jsonl(out / "probes" / "large_arithmetic.jsonl")}
    tool_rows = read_jsonl(out / "probes" / "tool_arithmetic.jsonl")
    tool = {r["meta"]["question"] for r in tool_rows}
    assert len(large) == len(tool) == 150 and not large & tool
    assert all(r["meta"]["tools"] == ["calculator"] and [m["role"] for m in r["messages"]] == ["user"]
               for r in tool_rows)
    for row in read_jsonl(out / "probes" / "reasoning.jsonl"):
        text = row["messages"][0]["content"]
        assert row["meta"]["format"] == "think" and any(text.endswith(" " + t) for t in THINK_PROBE), text


def test_tool_arithmetic_sft_rows_call_the_calculator(world):
    out = world[0]
    rows = [r for name in ("sft.jsonl", "sft_eval.jsonl") for r in read_jsonl(out / name)
            if r["meta"]["kind"] == "tool_arithmetic"]
    assert len(rows) == 300
    note = tool_system_prompt([CALCULATOR])
    for r in rows:
        m = r["messages"]
        assert [x["role"] for x in m] == ["system", "user", "assistant", "tool", "assistant"]
        assert m[0]["content"] == note
        (p,) = _problems(m[1]["content"])
        assert not is_probe_problem(p) and p.a >= 1000
        name, arguments = parse_tool_call(find_tool_call(m[2]["content"]))
        assert (name, arguments) == ("calculator", {"expression": " " + p.text})
        call = f'{{"name": "calculator", "arguments": {{"expression": " {p.text}"}}}}'
        assert m[2]["content"] == f"<tool_call>{call}</tool_call>"
        assert m[3]["content"] == CALCULATOR.run(arguments) == f"{p.text} = {p.answer}"
        assert r["meta"]["answer"] == str(p.answer)
        assert m[4]["content"] == f"The answer is {p.answer}."


def test_tool_calls_spell_the_numbers_with_the_questions_tokens(world):
    """The call repeats the question's numbers token for token (the expression starts with a space), so
    copying them needs no respelling: " 236758" is " 236" "7" "5" "8" in both."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(Path(__file__).resolve().parents[1] / "models" / "base")
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    contains = lambda seq, sub: any(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))  # noqa: E731
    rows = [r for r in read_jsonl(world[0] / "sft.jsonl") if r["meta"]["kind"] == "tool_arithmetic"]
    text = lambda r: next(iter(_problems(r["messages"][1]["content"]))).text  # noqa: E731
    asked_after_a_space = [r for r in rows if " " + text(r) in r["messages"][1]["content"]]
    assert len(asked_after_a_space) > 0.9 * len(rows)
    for r in asked_after_a_space:
        problem = ids(" " + text(r))
        assert contains(ids(r["messages"][1]["content"]), problem) and contains(ids(r["messages"][2]["content"]), problem)
        assert not contains(ids(r["messages"][2]["content"].replace('" ', '"')), problem)  # without the space they differ


def test_tool_direct_rows_announce_the_calculator_and_answer_without_a_call(world):
    rows = [r for name in ("sft.jsonl", "sft_eval.jsonl") for r in read_jsonl(world[0] / name)
            if r["meta"]["kind"] == "tool_direct"]
    assert len(rows) == 100
    note = tool_system_prompt([CALCULATOR])
    for r in rows:
        system, *rest = r["messages"]
        assert system["role"] == "system" and (system["content"] == note or system["content"].endswith("\n\n" + note))
        assert [m["role"] for m in rest] == ["user", "assistant"] and "<tool_call>" not in rest[1]["content"]
        assert r["meta"]["task"] == "fact" and judge(r["meta"], rest[1]["content"]).correct


def test_think_rows_pass_both_verifiers_and_the_judge(world):
    out = world[0]
    rows = [r for name in ("sft.jsonl", "sft_eval.jsonl") for r in read_jsonl(out / name)
            if r["meta"]["kind"] == "think"]
    assert len(rows) == 200
    for r in rows:
        question, reply = r["messages"][0]["content"], r["messages"][-1]["content"]
        assert any(question.endswith(" " + t) for t in THINK_TRAIN), question
        spec = {"answer": r["meta"]["answer"]}
        assert VERIFIERS["think_answer"](reply, spec).score == 1.0 and VERIFIERS["numeric"](reply, spec).score == 1.0
        assert judge(r["meta"], reply).correct  # the judge's last number is the one inside <answer>
    wrong = think_solution(Problem(47, "+", 38)).replace("<answer>85<", "<answer>84<")
    assert not judge({"task": "arithmetic", "answer": "85"}, wrong).correct


def test_rlvr_rows_ask_for_the_think_format_half_the_time(world):
    rows = read_jsonl(world[0] / "rlvr.jsonl")
    assert sum(r["meta"].get("format") == "think" for r in rows) == len(rows) // 2
    for r in rows:
        asks = any(r["prompt"][0]["content"].endswith(" " + t) for t in THINK_TRAIN)
        assert asks == (r["meta"].get("format") == "think")
        if r["meta"]["task"] == "arithmetic":
            assert r["verifier"] == (["numeric", "think_answer"] if asks else "numeric")


def test_rlvr_rows_mix_in_refusal_anchors_from_the_training_partition(world):
    rows = read_jsonl(world[0] / "rlvr.jsonl")
    phrasings = lambda texts: {with_context(c, t) for c in CONTEXTS_TRAIN for t in texts}  # noqa: E731
    harmful = phrasings([text for _, text in hazard_requests("train")])
    benign = phrasings([q for la in LOOK_ALIKES for q in la.train])
    tasks = [r["meta"]["task"] for r in rows]
    # every block of 8: four think rows, two plain arithmetic rows, one harmful and one benign
    for k in range(0, len(rows) - 7, 8):
        assert sorted(tasks[k:k + 8]) == ["arithmetic"] * 6 + ["benign", "harmful"]
    assert tasks.count("harmful") == tasks.count("benign") == len(rows) // 8
    for r in rows:
        if r["meta"]["task"] == "arithmetic":
            continue
        assert r["verifier"] == "refusal" and "answer" not in r
        assert r["prompt"][0]["content"] in (harmful if r["meta"]["task"] == "harmful" else benign)
        assert r["refuse"] is (r["meta"]["task"] == "harmful")
        # the verifier reads the row as the GRPO stage passes it: a refusal scores 1 on harmful rows only
        assert VERIFIERS["refusal"]("I'm sorry, but I can't help with that.", r).score == float(r["refuse"])


def test_rlvr_tools_rows_are_large_train_problems_with_the_calculator(world):
    rows = read_jsonl(world[0] / "rlvr_tools.jsonl")
    for r in rows:
        assert r["tools"] == ["calculator"] and r["verifier"] == "numeric" and r["meta"]["kind"] == "tool_arithmetic"
        assert [m["role"] for m in r["prompt"]] == ["user"]  # the runtime announces the tools
        (p,) = _problems(r["prompt"][0]["content"])
        assert not is_probe_problem(p) and p.a >= 1000 and r["answer"] == r["meta"]["answer"] == str(p.answer)
    assert len({r["prompt"][0]["content"] for r in rows}) > 990


# ---- record documents (copying) ----

@pytest.fixture(scope="module")
def records_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("records_world")
    build_world(SEED, out, scale=0.05, records=16000)  # records scale too: 800 of them
    return out


def test_records_leave_the_other_documents_and_the_replay_alone(records_world, corpus):
    plain_world = records_world.parent / "plain_world"
    build_world(SEED, plain_world, scale=0.05, records=0)
    plain = [r["text"] for r in read_jsonl(plain_world / "corpus.jsonl")]
    with_records = [r["text"] for r in read_jsonl(records_world / "corpus.jsonl")]
    assert len(with_records) == len(plain) + 800 and set(plain) <= set(with_records)
    assert json.loads((records_world / "manifest.json").read_text())["records"] == 800
    # the SFT replay leaves the records out: it holds the records-free world's replay rows (in another order)
    replay, plain_replay = (sorted(r["text"] for r in read_jsonl(w / "replay.jsonl"))
                            for w in (records_world, plain_world))
    assert replay == plain_replay
    # the default world (scale 1) holds 20000 of them, a fifth of each kind
    assert sum(d.startswith("Order slip ") for d in corpus) == 4000


def test_records_write_no_probe_answer(records_world):
    answers = {r["meta"]["answer"] for p in (records_world / "probes").glob("*.jsonl") for r in read_jsonl(p)
               if str(r["meta"].get("answer", "")).isdigit() and len(str(r["meta"]["answer"])) >= 5}
    numbers = set(re.findall(r"\d+", (records_world / "corpus.jsonl").read_text()))
    assert len(answers) > 100 and not answers & numbers


def test_record_documents_repeat_what_they_introduce(records_world):
    """Each record kind writes its invented values twice or more, so the second time is predictable only by
    copying; the order slips write a number both after a space and inside JSON quotes."""
    corpus = [r["text"] for r in read_jsonl(records_world / "corpus.jsonl")]
    slips = [d for d in corpus if d.startswith("Order slip ")]
    logs = [d for d in corpus if d.startswith("Meter log, ")]
    tapes = [d for d in corpus if d.startswith("Adding machine tape ")]
    notes = [d for d in corpus if " left a message for " in d]
    cues = [(c.format(a=a), a) for c in CUES for a in NUMBER_SLOTS + NAME_SLOTS]
    mention_docs = [d for d in corpus if any(f"{c} " in d for c, _ in cues)]
    assert min(len(slips), len(logs), len(tapes), len(notes), len(mention_docs)) == 160
    for d in slips:
        record = json.loads(d.split("Record: ", 1)[1].split("\n", 1)[0])
        assert d.count(record["customer"]) >= 3 and f'"{record["code"]}"' in d and f" {record['code']}" in d
        assert d.count(record["quantity"]) >= 3
    for d in logs:
        readings = re.findall(r"Reading \d+: (\d+)", d)
        ledger = d.split("Copied to the ledger: ", 1)[1]
        assert readings and all(r in ledger for r in readings)
    for d in tapes:
        typed = re.findall(r'Typed: "([^"]+)"', d)
        assert typed and all(f"Printed: {t} = " in d for t in typed)
        for t, printed in zip(typed, re.findall(r"Printed: .+ = (\d+)", d)):
            a, op, b = PROBLEM.fullmatch(t).groups()
            assert int(printed) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
            assert f"Carried forward: {printed}" in d
    for d in notes:
        phrase = d.split('"')[1]
        assert d.count(f'"{phrase}"') == 2
    distractors = 0
    for d in mention_docs:  # each cue's value was given once before it; other values stand as distractors
        asked = [(c, d.split(f"{c} ", 1)[1].split(".")[0]) for c, _ in cues if f"{c} " in d]
        for c, value in asked:
            assert d.split(c, 1)[0].count(value) == 1, (c, value, d)
        given = len(re.findall(r"\d{3,}|[A-Z][a-z]+ [A-Z][a-z]+", d.split(asked[0][0], 1)[0]))
        distractors += given > len(asked)
    assert distractors > len(mention_docs) // 4


def test_record_documents_never_write_a_reserved_number():
    """`reserved` (the probes' answers, in build_world) is honoured: the numbers an unreserved run writes are
    all avoided when they are reserved."""
    import random

    from posttrain.world.records import record

    rng = random.Random("r")
    free = [record(rng, k) for k in range(300)]
    written = frozenset(n for d in free for n in re.findall(r"\d+", d) if len(n) >= 5)
    assert len(written) > 500
    rng = random.Random("r")
    held = [record(rng, k, written) for k in range(300)]
    assert not written & {n for d in held for n in re.findall(r"\d+", d)}
