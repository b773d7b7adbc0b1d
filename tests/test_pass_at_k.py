"""scripts/pass_at_k.py: pass@k of a model on held-out probes (the README's RLVR notes quote it)."""

import re
from pathlib import Path

import pytest

from posttrain.engine import Completion, Engine

from conftest import load_script

REPO = Path(__file__).resolve().parents[1]
PROBLEM = re.compile(r"(\d+) ([-+*]) (\d+)")


def test_pass_curve_is_the_unbiased_estimate_per_row_averaged():
    script = load_script("pass_at_k")
    assert script.ks(16) == [1, 2, 4, 8, 16] and script.ks(6) == [1, 2, 4, 6] and script.ks(1) == [1]
    # Row 1: one right of 4; row 2: none; row 3: all four.
    flags = [True, False, False, False] + [False] * 4 + [True] * 4
    curve = script.pass_curve(flags, 4)
    assert curve[1] == pytest.approx((0.25 + 0 + 1) / 3)
    assert curve[2] == pytest.approx((1 - 3 / 6 + 0 + 1) / 3)  # 1 - C(3,2)/C(4,2) for the first row
    assert curve[4] == pytest.approx(2 / 3)


def test_samples_are_graded_against_their_own_row(monkeypatch, capsys):
    """The engine returns samples prompt-major; each is graded against its own row's answer. A fake model
    right only in its first sample of each row: pass@1 = 1/4, pass@2 = 1/2 and pass@4 = 1 exactly."""
    script = load_script("pass_at_k")

    def fake_chat(self, conversations, params, labels=None):
        out = []
        for messages in conversations:
            a, op, b = PROBLEM.search(messages[-1]["content"]).groups()
            answer = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
            for j in range(params.n):
                assert params.temperature == 0.5 and params.seed == 3
                text = f"The answer is {answer if j == 0 else answer + 1}."
                out.append(Completion([1], [2], text, [0.0], [1], "stop", full_text=text))
        return out

    monkeypatch.setattr(Engine, "chat", fake_chat)
    code = script.main([str(REPO / "models" / "base"), "--probes", "arithmetic", "--samples", "4", "--n", "12",
                        "--temperature", "0.5", "--seed", "3"])
    assert code == 0
    line = [x for x in capsys.readouterr().out.splitlines() if "| arithmetic |" in x]
    assert line == [f"| {REPO / 'models' / 'base'} | arithmetic | 25.0% | 50.0% | 100.0% |"]


@pytest.mark.parametrize("args, says", [
    (["--probes", "harmful_refusal"], "harmful_refusal is not one of"),
    (["--samples", "0"], "--samples and --n must be at least 1"),
    (["--temperature", "0"], "--temperature above 0"),
])
def test_bad_options_are_named(args, says, capsys):
    with pytest.raises(SystemExit) as e:
        load_script("pass_at_k").main([str(REPO / "models" / "base"), *args])
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_a_directory_without_a_model_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_script("pass_at_k").main([str(tmp_path)])
    assert f"{tmp_path}: not a model directory" in capsys.readouterr().err


def test_the_real_engine_runs_through_on_the_shipped_base():
    """No fakes: the shipped base answers 3 rows twice each; pass@k is a fraction that never falls with k."""
    script = load_script("pass_at_k")
    curves = script.measure(str(REPO / "models" / "base"), ["arithmetic", "reasoning"], 2, 1.0, 3, None, 0, "fp32")
    for curve in curves.values():
        assert list(curve) == [1, 2] and 0 <= curve[1] <= curve[2] <= 1
