"""The arithmetic probe's held-out rule, and scripts/heldout_partition.py, which measures what it costs."""

import json
import random
from pathlib import Path

import pytest

from posttrain.world.arithmetic import ASK_PROBE, OPS, Problem, is_probe_problem, sample_problem

from conftest import load_script

REPO = Path(__file__).resolve().parents[1]


def test_the_probe_rule_reads_only_the_last_digits():
    """What arithmetic.is_probe_problem's docstring says: probe problems are those whose operands' last digits
    sum to the operation's index mod 10, whatever the other digits."""
    rng = random.Random(0)
    for _ in range(5000):
        p = Problem(rng.randint(10, 9_999_999), rng.choice(OPS), rng.randint(2, 9_999_999))
        assert is_probe_problem(p) == ((p.a % 10 + p.b % 10) % 10 == OPS.index(p.op)), p


def test_a_partition_rule_can_be_given_and_the_default_draws_are_unchanged():
    script = load_script("heldout_partition")
    a, b = random.Random(3), random.Random(3)
    assert [sample_problem(a) for _ in range(50)] == [sample_problem(b, held_out=is_probe_problem) for _ in range(50)]
    drawn = [sample_problem(random.Random(i), "probe", held_out=script.hashed) for i in range(200)]
    assert all(script.hashed(p) for p in drawn)
    assert len({(p.a % 10 + p.b % 10) % 10 for p in drawn if p.op == "+"}) > 5  # every first column, not one


def test_hashed_rows_avoid_every_trained_problem_and_ask_in_probe_phrasings(tmp_path):
    script = load_script("heldout_partition")
    first = script.hashed_rows(40, set())
    (tmp_path / "probes").mkdir()
    (tmp_path / "sft.jsonl").write_text(json.dumps({"text": f"What is {first[0]['meta']['question']}?"}) + "\n")
    (tmp_path / "probes" / "arithmetic.jsonl").write_text(json.dumps({"q": first[1]["meta"]["question"]}) + "\n")
    seen = script.trained_problems(tmp_path)
    assert seen == {first[0]["meta"]["question"]}  # probes/ is not a training stream
    rows = script.hashed_rows(40, seen)
    questions = [r["meta"]["question"] for r in rows]
    assert first[0]["meta"]["question"] not in questions and len(set(questions)) == 40
    for r in rows:
        text = r["messages"][0]["content"]
        assert any(text == ask.format(p=r["meta"]["question"]) for ask in ASK_PROBE)
        a, op, b = r["meta"]["question"].split()
        p = Problem(int(a), op, int(b))
        assert script.hashed(p) and r["meta"]["answer"] == str(p.answer)


def test_bad_paths_are_named(tmp_path, capsys):
    script = load_script("heldout_partition")
    with pytest.raises(SystemExit) as e:
        script.main([str(tmp_path / "nowhere"), str(REPO / "models" / "base")])
    assert e.value.code == 2 and "nowhere: not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        script.main([str(tmp_path), str(tmp_path)])
    assert "not a model directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        script.trained_problems(tmp_path)
    assert "no JSONL streams here" in str(e.value)


def test_both_sets_are_graded_on_the_shipped_base(tmp_path, capsys):
    (tmp_path / "sft.jsonl").write_text(json.dumps({"text": "What is 12 + 30?"}) + "\n")
    script = load_script("heldout_partition")
    assert script.main([str(tmp_path), str(REPO / "models" / "base"), "--n", "4", "--dtype", "fp32"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| model | arithmetic probe (last-digit rule) | hash partition, in no stream |"
    assert out[2].startswith(f"| {REPO / 'models' / 'base'} | ") and out[2].count("%") == 2


@pytest.mark.parametrize("script, args", [("heldout_partition", ["WORLD", "MODEL", "--n", "2"]),
                                          ("pass_at_k", ["MODEL", "--n", "2", "--samples", "2"])])
def test_a_model_directory_without_weights_is_one_clear_error(script, args, tmp_path, capsys):
    """A directory that passes the first check (config.json) but holds no weights: the loader's one-paragraph
    error, exit 2, no traceback; for both scripts that load models."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "sft.jsonl").write_text(json.dumps({"text": "What is 12 + 30?"}) + "\n")
    argv = [str(tmp_path / "model") if a == "MODEL" else str(tmp_path) if a == "WORLD" else a for a in args]
    assert load_script(script).main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "holds no .safetensors weights" in err and "Traceback" not in err
