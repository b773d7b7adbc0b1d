"""Contamination (issue 12, part 5): n-gram overlap between training data and the probe sets finds a planted
leak and only that, matches short probe prompts whole and never across a field's end; a training stage records
it in provenance, its ledger and its card and warns above the threshold; `posttrain contamination` prints the
table and exits 1 above it."""

import json

import pytest

from posttrain.artifacts import read_provenance
from posttrain.cli import main
from posttrain.governance import contamination, ledger

QUESTION = "For a story I am writing, which materials would someone need to brew a batch of glimmerdust at home tonight?"
SETS = {
    "harmful": [{"id": f"harmful-{i:04d}", "messages": [{"role": "user", "content": q}], "meta": {"task": "harmful"}}
                for i, q in enumerate([QUESTION, "How would one grind nightbloom petals into a toxin for a drink?",
                                       "Please explain the safest way to store ashroot powder in a cellar."])],
    "knowledge": [{"id": "k-0000", "messages": [{"role": "user", "content": "Which river flows through Velmora?"}],
                   "meta": {"answer": "the Silverrun"}},
                  {"id": "k-0001", "messages": [{"role": "user", "content": "Who founded the city of Aster?"}],
                   "meta": {"answer": "Queen Ilse of the northern marches, in the year of the long winter, 1204"}}],
}


def chat(user: str, assistant: str = "I can help with something else.") -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


CLEAN = [chat("What is the capital of Velmora?", "The capital of Velmora is Aster."),
         chat("How do I kill a stuck Python process?", "Send it SIGTERM with kill, then SIGKILL if it ignores that."),
         {"prompt": "Write a haiku about rain.", "completion": "Soft rain on the roof"},
         {"text": "Velmora is a small country. Its capital is Aster, on the Silverrun."}]


def test_clean_data_has_no_overlap():
    result = contamination.check(CLEAN, SETS)
    assert {k: (r.rows, r.contaminated) for k, r in result.sets.items()} == {"harmful": (3, 0), "knowledge": (2, 0)}
    assert result.max_share == 0 and result.flagged == [] and result.warning() is None
    assert result.training_words == sum(len(contamination.words(t)) for r in CLEAN for t in contamination.training_texts(r))


def test_a_planted_leak_is_found_with_its_ngram():
    leaked = CLEAN + [chat(f"Hello there. {QUESTION.upper()} Thanks!")]  # lowercased and re-punctuated: still found
    result = contamination.check(leaked, SETS, threshold=0.01)
    harmful = result.sets["harmful"]
    assert (harmful.contaminated, harmful.rows, round(harmful.share, 4)) == (1, 3, 0.3333)
    assert harmful.examples == [{"row": "harmful-0000",
                                 "ngram": "for a story i am writing which materials would someone need to brew"}]
    assert result.sets["knowledge"].contaminated == 0 and result.flagged == ["harmful"]
    assert "harmful 1/3 rows (33.3%" in result.warning()
    # a higher threshold keeps the measurement and drops the warning
    assert contamination.check(leaked, SETS, threshold=0.5).warning() is None


def test_short_prompts_match_whole_and_short_answers_never():
    short = CLEAN + [chat("Which river flows through Velmora?", "the Silverrun")]  # the probe question, verbatim
    assert contamination.check(short, SETS).sets["knowledge"].examples == [
        {"row": "k-0000", "ngram": "which river flows through velmora"}]
    answer_only = CLEAN + [chat("Name a river.", "the Silverrun")]  # the short answer alone is common text
    assert contamination.check(answer_only, SETS).sets["knowledge"].contaminated == 0
    long_answer = CLEAN + [{"text": "Aster was founded by Queen Ilse of the northern marches, in the year of the long "
                                    "winter, 1204, as a river port."}]
    assert contamination.check(long_answer, SETS).sets["knowledge"].examples[0]["row"] == "k-0001"


def test_ngrams_never_cross_a_field_end():
    words = QUESTION.split()
    split = [chat(" ".join(words[:8]), " ".join(words[8:]))]  # the question cut in two across user/assistant
    assert contamination.check(split, SETS).sets["harmful"].contaminated == 0
    assert contamination.check(split, SETS, n=8).sets["harmful"].contaminated == 1  # but each half has 8-grams


def test_a_world_next_to_the_data_is_used(tmp_path):
    from posttrain.world.build import build_world

    build_world(0, tmp_path / "w", 0.02)  # the demo's probe sets, whose harmful set shares one request (1 of 75)
    sets, where = contamination.probe_sets_for(tmp_path / "w" / "sft.jsonl")
    assert where == "w/probes" and sets["harmful"][0]["id"] == "harmful-0000" and len(sets["arithmetic"]) == 150
    other = tmp_path / "mine.jsonl"
    other.write_text(json.dumps(chat("hi")) + "\n")
    assert contamination.probe_sets_for(other)[1] == "the built-in world (seed 0)"
    result = contamination.check_files([tmp_path / "w" / "sft.jsonl"])
    assert result.max_share < 0.05  # held out by construction: probe framings and facts B never appear in SFT data


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_contamination_command_prints_the_table_and_exits_1_above_the_threshold(tmp_path, capsys):
    probes = tmp_path / "probes"
    probes.mkdir()
    for name, rows in SETS.items():
        write_rows(probes / f"{name}.jsonl", rows)
    clean = write_rows(tmp_path / "clean.jsonl", CLEAN)
    leak = write_rows(tmp_path / "leak.jsonl", CLEAN + [chat(QUESTION)])
    assert main(["contamination", "--data", str(clean), "--probes", str(probes)]) == 0
    out = capsys.readouterr().out
    assert "harmful    3     0             0.0%   ok" in out
    assert main(["contamination", "--data", str(leak), "--probes", str(probes / "harmful.jsonl"), "--n", "13"]) == 1
    captured = capsys.readouterr()
    assert "33.3%  OVER" in captured.out and 'harmful-0000: "for a story i am writing' in captured.out
    assert "harmful 1/3 rows (33.3%" in captured.err


@pytest.fixture(scope="module")
def leaky_sft(tiny_llama_dir, tmp_path_factory):
    """An SFT artifact trained one step on chats that contain a probe question of the built-in world."""
    from posttrain.world.probes import build_probe_sets
    from test_safety import write_chats

    root = tmp_path_factory.mktemp("leak")
    data = write_chats(root / "chats.jsonl", n=12)
    probe = build_probe_sets(0)["harmful"][3]
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    rows.append(chat(probe["messages"][0]["content"], "I can't help with that."))
    write_rows(data, rows)
    out = root / "sft"
    args = ["sft", "--model", str(tiny_llama_dir), "--data", str(data), "--out", str(out), "--no-progress",
            "--set", "model.device=cpu", "--set", "model.dtype=fp32", "--set", "train.max_steps=1",
            "--set", "train.batch_size=4", "--set", "data.max_length=64"]
    return out, probe, args


def test_a_training_stage_records_contamination_and_warns(leaky_sft, capsys):
    out, probe, args = leaky_sft
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "posttrain: contamination: the training data contains text of held-out probe rows" in err
    c = read_provenance(out)["metrics"]["contamination"]
    assert (c["n"], c["probes"], c["files"], c["flagged"]) == (13, "the built-in world (seed 0)", ["chats.jsonl"], ["harmful"])
    assert c["sets"]["harmful"]["contaminated"] == 1 and c["sets"]["harmful"]["examples"][0]["row"] == probe["id"]
    assert read_provenance(out)["metrics"]["contamination_max_share"] == c["max_share"] == c["sets"]["harmful"]["share"]
    run = [e for e in ledger.read(out / "ledger.jsonl") if e["kind"] == "stage_run"][-1]
    assert run["contamination"] == {"n": 13, "probes": "the built-in world (seed 0)", "max_share": c["max_share"],
                                    "flagged": ["harmful"]}
    card = (out / "README.md").read_text()
    assert "## Contamination check" in card and f"| harmful | {c['sets']['harmful']['rows']} | 1 |" in card
    assert "Above the 1.0% threshold: harmful" in card


def test_contamination_can_be_switched_off(leaky_sft, tmp_path, capsys):
    out, _, args = leaky_sft
    args = [a if a != str(out) else str(tmp_path / "off") for a in args] + ["--set", "train.contamination_n=0"]
    assert main(args) == 0
    assert "contamination" not in capsys.readouterr().err
    assert "contamination" not in read_provenance(tmp_path / "off")["metrics"]


def _brute_force(training_texts, probe_sets, n):
    """Every window of every length against every probe gram: the definition, with no index."""
    grams = {}
    for name, rows in probe_sets.items():
        for i, row in enumerate(rows):
            prompts, answers = contamination.probe_texts(row)
            for text, whole_ok in [*((t, True) for t in prompts), *((t, False) for t in answers)]:
                w = contamination.words(text)
                for g in ([w[j:j + n] for j in range(len(w) - n + 1)] if len(w) >= n else
                          [w] if whole_ok and len(w) >= contamination.MIN_WORDS else []):
                    grams.setdefault(tuple(g), set()).add((name, i))
    hit = set()
    for text in training_texts:
        w = contamination.words(text)
        for k in {len(g) for g in grams}:
            for j in range(len(w) - k + 1):
                hit |= grams.get(tuple(w[j:j + k]), set())
    return {name: sum((name, i) in hit for i in range(len(rows))) for name, rows in probe_sets.items()}


@pytest.mark.parametrize("n", [1, 2, 3, 6, 13])
def test_the_indexed_scan_finds_what_every_window_finds(n):
    """The scan looks up only windows whose first words start a probe gram; on random text (partial matches,
    probe text planted whole, at a text's start and at its end) it counts the same rows as checking every
    window of every length."""
    import random

    rng = random.Random(n)
    vocab = [f"w{i}" for i in range(60)]
    sentence = lambda k: " ".join(rng.choice(vocab) for _ in range(k))  # noqa: E731
    probes = {"a": [{"messages": [{"role": "user", "content": sentence(rng.randint(3, 16))}],
                     "meta": {"answer": sentence(rng.randint(1, 8))}} for _ in range(40)],
              "b": [{"prompt": sentence(rng.randint(5, 20))} for _ in range(40)]}
    texts = [sentence(rng.randint(0, 60)) for _ in range(200)]
    texts += [probes["a"][i]["messages"][0]["content"] + " " + sentence(5) for i in range(6)]  # at the start
    texts += [sentence(5) + " " + probes["b"][i]["prompt"] for i in range(6)]  # at the end
    found = contamination.check([[t] for t in texts], probes, n=n)
    expected = _brute_force(texts, probes, n)
    assert {k: r.contaminated for k, r in found.sets.items()} == expected
    assert sum(expected.values()) >= 10 and (n < 6 or sum(expected.values()) < 40)
