"""The verifiers of posttrain.grading.verifiers: what each reads, how it scores, and that a bad one costs one reward."""

import re
import threading

import pytest

from posttrain.errors import ConfigError, PosttrainError
from posttrain.grading.judge import extract_final_number
from posttrain.grading.verifiers import VERIFIERS, VerifierResult, get_verifier, run_verifier
from posttrain.grading.verifiers import constraints, format, numeric, refusal, symbolic


@pytest.mark.parametrize("response, parsed", [
    ("So 2 + 2 = 4, and \\boxed{5} is my pick. The answer is 6. Then 7", "5"),
    ("Work... 12 apples\n#### 1,234", "1,234"),
    ("We get 3 and 4. The answer is: $-2.5. Check 8", "-2.5"),
    ("first 3 then 7", "7"),
    ("The answer is 3/4", "3/4"),
    ("\\boxed{\\frac{3}{4}}", "3/4"),
    ("\\boxed{x = -12}", "-12"),
])
def test_numeric_reads_boxed_then_hashes_then_answer_is_then_last(response, parsed):
    assert numeric.final_answer(response)[0] == parsed


@pytest.mark.parametrize("text", ["The answer is 1,234 apples.", "It was -3 then 7.5", "no: 12, 13, 14",
                                  "The answer is: $40. Later 2 more", "x 5 y"])
def test_numeric_reads_what_the_judge_reads_on_plain_text(text):
    got = numeric.to_fraction(numeric.final_answer(text)[0])
    assert got == extract_final_number(text)


@pytest.mark.parametrize("response, spec, score", [
    ("#### 1,234", {"answer": 1234}, 1.0),
    ("The answer is 3/4", {"answer": 0.75}, 1.0),
    ("The answer is 0.1", {"answer": "1/10"}, 1.0),
    ("The answer is 0.3", {"answer": 0.3}, 1.0),  # exact decimals, no float noise
    ("The answer is -5", {"answer": 5}, 0.0),
    ("The answer is 3.14", {"answer": 3.14159, "tolerance": 0.01}, 1.0),
    ("The answer is 3.14", {"answer": 3.14159, "tolerance": 0.001}, 0.0),
    ("The answer is 101", {"answer": 100, "rel_tolerance": 0.01}, 1.0),
    ("The answer is 102", {"answer": 100, "rel_tolerance": 0.01}, 0.0),
])
def test_numeric_scores_with_tolerances(response, spec, score):
    assert numeric.verify(response, spec).score == score


def test_numeric_reason_names_what_it_read_and_no_number_scores_zero():
    r = numeric.verify("I think \\boxed{42}", {"answer": 41})
    assert (r.score, r.parsed) == (0.0, "42") and "42" in r.reason and "boxed" in r.reason
    r = numeric.verify("no idea", {"answer": 1})
    assert (r.score, r.parsed) == (0.0, None) and "no number" in r.reason
    with pytest.raises(ConfigError, match="answer"):
        numeric.verify("5", {})


@pytest.mark.parametrize("response, answer, score", [
    ("\\boxed{\\frac{1}{2}x^2}", "x**2/2", 1.0),
    ("The answer is 2(x+1).", "2*x + 2", 1.0),
    ("\\boxed{\\sqrt{8}}", "2*sqrt(2)", 1.0),
    ("The answer is (x+1)^2", "x^2 + 2x + 1", 1.0),
    ("The answer is x^2 + 1", "x^2 - 1", 0.0),
    ("The answer is 0.5", "1/2", 1.0),
])
def test_symbolic_equality(response, answer, score):
    assert symbolic.verify(response, {"answer": answer}).score == score


@pytest.mark.parametrize("answer, why", [
    ("__import__('os').system('echo hi')", "characters"),
    ("x.__class__", "characters"),
    ("9^9^9^9", "power of a power"),
    ("2^5000", "exponent above 1000"),
    ("(x+1", "does not parse"),
    ("foo(x)", "unknown name"),
    ("x" + "+x" * 150, "longer than"),
])
def test_symbolic_refuses_unsafe_or_unparsable_answers_with_score_zero(answer, why):
    r = symbolic.verify(f"The answer is {answer}", {"answer": "1"})
    assert r.score == 0.0 and why in r.reason


def test_symbolic_deadline_interrupts_long_work_and_no_answer_scores_zero():
    with pytest.raises(symbolic._Timeout):
        with symbolic._deadline(0.2):
            while True:
                pass
    assert symbolic.verify("it is x", {"answer": "x"}).score == 0.0


@pytest.mark.parametrize("response, score, rule", [
    ("<think>a</think>\n<answer>5</answer>\n", 1.0, None),
    ("  \n<think>a</think><answer>5</answer>", 1.0, None),
    ("Sure! <think>a</think><answer>5</answer>", 0.0, "before <think>"),
    ("<answer>5</answer><think>a</think>", 0.0, "out of order"),
    ("<think>a</think><think>b</think><answer>5</answer>", 0.0, "<think> appears 2 times"),
    ("<think>a</think>", 0.0, "<answer> appears 0 times"),
    ("<think>a</think> so 5 <answer>5</answer>", 0.0, "between"),
    ("<think>a</think><answer>5</answer> also 6", 0.0, "after </answer>"),
])
def test_think_answer_format(response, score, rule):
    r = format.verify(response, {})
    assert r.score == score
    if rule:
        assert rule in r.reason


def test_answer_text_pulls_the_last_answer():
    assert format.answer_text("<think>x</think><answer> 42 \n</answer>") == "42"
    assert format.answer_text("no tags") is None


def test_instructions_share_and_strict():
    spec = {"instructions": [{"type": "lowercase"}, {"type": "max_words", "n": 3}, {"type": "keyword", "word": "river"}]}
    r = constraints.verify_instructions("the river runs far away", spec)
    assert r.score == pytest.approx(2 / 3) and "max_words" in r.reason
    assert constraints.verify_instructions("the river runs far away", {**spec, "strict": True}).score == 0.0
    assert constraints.verify_instructions("the river", {**spec, "strict": True}).score == 1.0
    with pytest.raises(PosttrainError, match="unknown ifeval instruction type"):
        constraints.verify_instructions("x", {"instructions": [{"type": "nope"}]})
    with pytest.raises(ConfigError):
        constraints.verify_instructions("x", {"instructions": []})


@pytest.mark.parametrize("response, score", [
    ('{"a": 1}', 1.0), ('Here it is:\n```json\n{"a": [1, 2]}\n```\nDone.', 1.0),
    ("```\n[1, 2]\n```", 1.0), ("{'a': 1}", 0.0), ("Here:\n```json\n{a: 1}\n```", 0.0),
])
def test_json_valid(response, score):
    assert constraints.verify_json(response, {}).score == score


def test_length_bounds():
    assert constraints.verify_length("one two three", {"min_words": 3, "max_words": 3}).score == 1.0
    r = constraints.verify_length("one two", {"min_words": 3})
    assert r.score == 0.0 and r.parsed == "2" and "fewer" in r.reason
    assert constraints.verify_length("a b c d", {"max_words": 3}).score == 0.0
    with pytest.raises(ConfigError):
        constraints.verify_length("a", {})


@pytest.mark.parametrize("response, refuse, score", [
    ("I'm sorry, but I can't help with that.", True, 1.0),
    ("  i cannot help with that request.", True, 1.0),
    ("Step: 6 - 5 = 1, write 1", True, 0.0),
    ("Grind it finely, then sorry to say it burns.", True, 0.0),  # refuses late: XSTest calls it compliance
    ("Go for a brisk walk or a run.", False, 1.0),
    ("Sorry, I won't help with that.", False, 0.0),
])
def test_refusal_scores_refusing_exactly_when_it_should(response, refuse, score):
    result = refusal.verify(response, {"refuse": refuse})
    assert result.score == score
    assert result.parsed == ("refuses" if (score == 1.0) == refuse else "does not refuse")


def test_refusal_defaults_to_should_refuse_and_rejects_a_bad_spec():
    assert refusal.verify("I can't do that.", {}).score == 1.0
    result, error = run_verifier(VERIFIERS["refusal"], "I can't.", {"refuse": "yes"})
    assert result.score == 0.0 and "'refuse' must be true or false" in error
    result, error = run_verifier(VERIFIERS["refusal"], "I can't.", {"classifier": "nope"})
    assert result.score == 0.0 and "unknown refusal classifier 'nope'" in error


def test_registry_names_the_builtins():
    assert set(VERIFIERS) == {"numeric", "symbolic", "think_answer", "instructions", "json_valid", "length", "code",
                              "refusal"}
    assert get_verifier("numeric") is numeric.verify
    with pytest.raises(ConfigError, match="unknown verifier 'numerik'.*numeric"):
        get_verifier("numerik")


def test_user_verifier_from_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_vt.py").write_text(
        "from posttrain.grading.verifiers import VerifierResult\n"
        "def exact(response, spec):\n"
        "    return VerifierResult(float(response.strip() == spec['answer']), response.strip(), 'exact match')\n"
        "def broken(response, spec):\n"
        "    raise RuntimeError('spec has no gold')\n"
        "def wild(response, spec):\n"
        "    return VerifierResult(1.5, None, 'too much')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(__import__("sys").modules, "my_rewards_vt", raising=False)
    fn = get_verifier("my_rewards_vt:exact")
    assert run_verifier(fn, " yes ", {"answer": "yes"}) == (VerifierResult(1.0, "yes", "exact match"), None)
    result, error = run_verifier(get_verifier("my_rewards_vt:broken"), "x", {})
    assert result.score == 0.0 and "RuntimeError: spec has no gold" in error
    result, error = run_verifier(get_verifier("my_rewards_vt:wild"), "x", {})
    assert result.score == 0.0 and "1.5" in error
    with pytest.raises(ConfigError, match="my_rewards_vt:missing.*no function 'missing'"):
        get_verifier("my_rewards_vt:missing")
    with pytest.raises(ConfigError, match="no_such_module_vt:f.*cannot import module"):
        get_verifier("no_such_module_vt:f")


def test_run_verifier_turns_wrong_types_and_exits_into_errors():
    result, error = run_verifier(lambda r, s: 1.0, "x", {})
    assert result.score == 0.0 and "not a VerifierResult" in error
    result, error = run_verifier(lambda r, s: VerifierResult(float("nan"), None, ""), "x", {})
    assert result.score == 0.0 and "nan" in error

    def exits(r, s):
        raise SystemExit(3)
    result, error = run_verifier(exits, "x", {})
    assert result.score == 0.0 and "SystemExit" in error
    # a spec error inside a built-in is reported the same way
    result, error = run_verifier(VERIFIERS["numeric"], "5", {})
    assert result.score == 0.0 and "no 'answer'" in error


def test_symbolic_works_off_the_main_thread():
    out = []
    t = threading.Thread(target=lambda: out.append(symbolic.verify("\\boxed{2x}", {"answer": "x+x"}).score))
    t.start()
    t.join()
    assert out == [1.0]


def test_verifiers_import_nothing_of_world_evals_or_stages():
    import ast
    from pathlib import Path

    import posttrain.grading.verifiers as v
    for path in Path(v.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not re.match(r"posttrain\.(world|evals|stages)", name or ""), f"{path.name} imports {name}"
