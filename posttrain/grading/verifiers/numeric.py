"""`numeric`: is the response's final number the expected one?

The final answer is read, in order of precedence, from the last `\\boxed{...}`, the last `#### N`
(GSM8K), the last "The answer is N", else the last number in the text. The number grammar is the
judge's (posttrain.grading.judge.extract_final_number: "1,234", "-5", "2.5", an optional "$"), plus
simple fractions "3/4" and `\\frac{3}{4}`; for text without boxes, '####' or fractions the two read
the same number (tests/test_verifiers.py holds this). Numbers compare as exact fractions, so
"0.1" equals 0.1 with no float noise; spec["tolerance"] (absolute) and spec["rel_tolerance"] loosen it.
"""

from __future__ import annotations

import re
from fractions import Fraction

from posttrain.errors import ConfigError
from posttrain.grading.verifiers import VerifierResult

_NUMBER = r"-?\d[\d,]*(?:\.\d+)?"  # the judge's grammar
_VALUE = rf"{_NUMBER}(?:\s*/\s*{_NUMBER})?"  # plus a simple fraction
_FRAC = re.compile(r"\\d?frac\{\s*(" + _NUMBER + r")\s*\}\{\s*(" + _NUMBER + r")\s*\}")


def boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (nested braces allowed), None if there is none or it is unclosed."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def to_fraction(s: str) -> Fraction | None:
    """'1,234' -> 1234, '-2.5' -> -5/2, '3/4' -> 3/4; None for a zero denominator or no number."""
    s = s.replace(",", "").replace(" ", "")
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def final_answer(text: str) -> tuple[str | None, str]:
    """(the final answer's text, where it was found), (None, why not) when the response holds no number."""
    box = boxed(text)
    if box is not None:
        inner = _FRAC.sub(r"\1/\2", box)
        found = re.findall(_VALUE, inner)
        return (found[-1], "\\boxed{}") if found else (None, f"\\boxed{{{box}}} holds no number")
    for pattern, where in ((r"####\s*\$?(" + _VALUE + ")", "'####'"),
                           (r"answer is\s*:?\s*\$?(" + _VALUE + ")", "'the answer is'")):
        tagged = re.findall(pattern, text, flags=re.IGNORECASE)
        if tagged:
            return tagged[-1], where
    found = re.findall(_VALUE, _FRAC.sub(r"\1/\2", text))
    return (found[-1], "the last number") if found else (None, "the response holds no number")


def verify(response: str, spec: dict) -> VerifierResult:
    """Score 1 when the final number is within tolerance of spec["answer"], else 0.

    spec: answer (a number or a string such as "3/4"), tolerance (absolute, default 0),
    rel_tolerance (relative to |answer|, default 0).
    """
    if "answer" not in spec:
        raise ConfigError(f"numeric verifier spec {spec} has no 'answer'; give it as {{'answer': 42}}.")
    # str() first: Fraction(0.1) would be the binary float, str(0.1) is the decimal the user wrote
    expected = to_fraction(str(spec["answer"]))
    if expected is None:
        raise ConfigError(f"numeric verifier spec answer {spec['answer']!r} is not a number; give e.g. 42, 2.5 or '3/4'.")
    text, where = final_answer(response)
    if text is None:
        return VerifierResult(0.0, None, where)
    got = to_fraction(text)
    if got is None:
        return VerifierResult(0.0, text, f"read {text!r} from {where}, which is not a number (zero denominator)")
    allowed = max(Fraction(str(spec.get("tolerance", 0))),
                  Fraction(str(spec.get("rel_tolerance", 0))) * abs(expected))
    ok = abs(got - expected) <= allowed
    verdict = "matches" if ok else "does not match"
    return VerifierResult(float(ok), text, f"read {text} from {where}; {verdict} the answer {spec['answer']}"
                          + (f" within {float(allowed):g}" if allowed else ""))
