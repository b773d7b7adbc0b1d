"""scripts/arithmetic_errors.py: the README's breakdown of wrong arithmetic answers, on made-up samples."""

import json

from posttrain.world.arithmetic import worked_steps
from posttrain.world.probes import build_probe_sets

from conftest import load_script


def test_each_kind_of_wrong_answer_is_told_apart(tmp_path, capsys):
    errors = load_script("arithmetic_errors")
    sets = build_probe_sets(0, 8)
    think = [(r, errors.asked_problem(r)) for r in sets["reasoning"][:4]]
    tool = [(r, errors.asked_problem(r)) for r in sets["tool_arithmetic"][:3]]
    steps = [worked_steps(p) for _, p in think]
    wrong_step = ["Step: 9 + 9 = 18, write 18"] + steps[2][1:]
    reasoning = [
        {"id": think[0][0]["id"], "correct": True, "response": "ok"},
        {"id": think[1][0]["id"], "correct": False,
         "response": "\n".join(steps[1]) + f"\n<answer>{think[1][1].answer + 1}</answer>"},
        {"id": think[2][0]["id"], "correct": False, "response": "\n".join(wrong_step)},
        {"id": think[3][0]["id"], "correct": False, "response": "I can't help with that request."},
    ]
    call = '<tool_call>{{"name": "calculator", "arguments": {{"expression": "{}"}}}}</tool_call>'
    tools = [
        {"id": tool[0][0]["id"], "correct": False, "response": call.format(tool[0][1].text) + "\nThe answer is 1."},
        {"id": tool[1][0]["id"], "correct": False, "response": call.format("1" + tool[1][1].text)},
        {"id": tool[2][0]["id"], "correct": False, "response": "The answer is 12."},
    ]
    report = {"source": "builtin:seed=0", "n": 8,
              "probes": {"reasoning": {"samples": reasoning}, "tool_arithmetic": {"samples": tools}}}
    path = tmp_path / "eval_report.json"
    path.write_text(json.dumps(report))
    assert errors.main([str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("reasoning (4 answers): ")
    assert {"right 1", "right steps and a wrong final answer 1", "a wrong step 1", "not worked out 1"} == set(
        out[0].split(": ", 1)[1].split("; "))
    assert {"right call, wrong answer 1", "call with a miscopied number 1", "no calculator call 1"} == set(
        out[1].split(": ", 1)[1].split("; "))
    # The one wrong-step answer went wrong in its first (units) column.
    assert out[2] == f"reasoning, first wrong step by operation and column: {think[2][1].op} units 1"


def test_the_first_wrong_column_counts_from_the_units():
    errors = load_script("arithmetic_errors")
    p = errors.Problem(241, "-", 40)
    steps = worked_steps(p)
    assert errors.first_wrong_column(p, "\n".join(steps) + "\nThe answer is 7.") is None
    assert errors.first_wrong_column(p, "Step: 11 - 0 = 9, borrow 1, write 9\n" + "\n".join(steps[1:])) == 0
    assert errors.first_wrong_column(p, "\n".join(steps[:2] + ["Step: 1 - 1 = 0, write 0"])) == 2
    assert errors.first_wrong_column(p, "\n".join(steps[:1])) == 1  # a step left out


def test_a_report_without_arithmetic_probes_is_refused(tmp_path, capsys):
    path = tmp_path / "eval_report.json"
    path.write_text(json.dumps({"source": "builtin:seed=0", "n": 8, "probes": {"ifeval": {"samples": []}}}))
    assert load_script("arithmetic_errors").main([str(path)]) == 2
    assert "no arithmetic, reasoning or tool_arithmetic probe" in capsys.readouterr().err


def test_a_missing_or_broken_report_is_one_clear_line(tmp_path, capsys):
    script = load_script("arithmetic_errors")
    assert script.main([str(tmp_path / "nope.json")]) == 2
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert script.main([str(broken)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("not a readable eval report" in line for line in err)
    assert "nope.json" in err[0] and "broken.json" in err[1]
