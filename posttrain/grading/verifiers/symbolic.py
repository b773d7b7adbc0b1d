"""`symbolic`: is the response's final expression mathematically equal to spec["answer"]?

The final answer is the last \\boxed{...}, else what follows the last "the answer is" up to the end
of its line (a trailing period dropped). A little LaTeX is translated (\\frac, \\sqrt, \\cdot, \\pi,
^, braces), then sympy checks `simplify(parsed - expected) == 0`.

Model text must never reach sympy's parser unchecked: `parse_expr` calls eval, and sympy can hang
(`9^9^9^9` evaluates a number of billions of digits). So, before parsing: a length limit, a
character whitelist (no quotes, underscores, dots other than decimal points, '!'), names limited to
single letters and a list of functions; after parsing unevaluated: no power of a power and no
exponent larger than 1000, at most `max_ops` operations; and simplify runs under a wall-clock
alarm (main thread only; elsewhere the size limits are the guard).
"""

from __future__ import annotations

import re
import signal
import threading
from contextlib import contextmanager

from posttrain.grading.verifiers import VerifierResult
from posttrain.grading.verifiers.numeric import boxed

_FUNCTIONS = {"sqrt", "sin", "cos", "tan", "log", "ln", "exp", "pi", "E", "I", "oo", "Abs", "abs"}
_ALLOWED = re.compile(r"[0-9A-Za-z\s+\-*/^().,=]*")
_LATEX = [(r"\\left|\\right|\\!|\\,|\\;|\$", ""), (r"\\d?frac\{", "frac{"), (r"\\cdot|\\times", "*"),
          (r"\\pi", "pi"), (r"\\sqrt", "sqrt"), (r"\\ln", "log"), (r"\\(sin|cos|tan|log|exp)", r"\1")]


class _Timeout(Exception):
    pass


@contextmanager
def _deadline(seconds: float):
    """Raise _Timeout after `seconds` of wall time; a no-op outside the main thread (signals go there only)."""
    if threading.current_thread() is not threading.main_thread() or seconds <= 0:
        yield
        return

    def alarm(signum, frame):
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def final_expression(text: str) -> str | None:
    """The last \\boxed{...}, else the rest of the line after the last 'the answer is'; None if neither."""
    box = boxed(text)
    if box is not None:
        return box.strip()
    tagged = re.findall(r"answer is\s*:?\s*(.+)", text, flags=re.IGNORECASE)
    return tagged[-1].strip().rstrip(".").strip().strip("$").strip() if tagged else None


def _to_sympy_text(latex: str) -> str:
    s = latex
    for pattern, repl in _LATEX:
        s = re.sub(pattern, repl, s)
    s = re.sub(r"frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", s)
    s = s.replace("{", "(").replace("}", ")")
    return s.split("=")[-1]  # "x = 2y" answers with its right-hand side


def parse(text: str, max_chars: int = 200, max_ops: int = 60):
    """A sympy expression from answer text, or raise ValueError saying why it was refused."""
    import sympy
    from sympy.parsing.sympy_parser import (convert_xor, implicit_multiplication_application, parse_expr,
                                            standard_transformations)

    if len(text) > max_chars:
        raise ValueError(f"longer than {max_chars} characters")
    s = _to_sympy_text(text)
    if not _ALLOWED.fullmatch(s) or re.search(r"\.(?!\d)|(?<!\d)\.", s):
        raise ValueError("characters outside digits, letters, + - * / ^ ( ) and decimal points")
    unknown = {w for w in re.findall(r"[A-Za-z]\w*", s) if len(w) > 1 and w not in _FUNCTIONS
               and not re.fullmatch(r"[A-Za-z]\d+", w)}
    if unknown:
        raise ValueError(f"unknown name(s) {', '.join(sorted(unknown))}")
    names = {w: sympy.Symbol(w) for w in re.findall(r"\b[A-Za-z]\d*\b", s) if w not in _FUNCTIONS}
    names.update({"ln": sympy.log, "abs": sympy.Abs})
    transformations = standard_transformations + (implicit_multiplication_application, convert_xor)
    try:
        expr = parse_expr(s, local_dict=names, transformations=transformations, evaluate=False)
    except Exception as e:  # sympy raises SyntaxError, TokenError, TypeError... for malformed input
        raise ValueError(f"does not parse ({type(e).__name__})") from e
    for p in (node for node in sympy.preorder_traversal(expr) if isinstance(node, sympy.Pow)):
        exponent = p.args[1]
        if any(isinstance(n, sympy.Pow) for n in sympy.preorder_traversal(exponent)):
            raise ValueError("a power of a power (too costly to evaluate safely)")
        if exponent.is_Number and abs(exponent) > 1000:
            raise ValueError("an exponent above 1000")
    if sympy.count_ops(expr) > max_ops:
        raise ValueError(f"more than {max_ops} operations")
    return expr


def verify(response: str, spec: dict) -> VerifierResult:
    """Score 1 when the final expression equals spec["answer"] (a sympy-readable string) symbolically.

    spec: answer, timeout_s (wall time for the comparison, default 2), max_chars (default 200),
    max_ops (default 60). A refused or unparsable answer scores 0 with the reason.
    """
    import sympy

    from posttrain.errors import ConfigError

    if "answer" not in spec:
        raise ConfigError(f"symbolic verifier spec {spec} has no 'answer'; give it as {{'answer': 'x**2 + 1'}}.")
    text = final_expression(response)
    if text is None:
        return VerifierResult(0.0, None, "no \\boxed{} and no 'the answer is' in the response")
    limits = {"max_chars": spec.get("max_chars", 200), "max_ops": spec.get("max_ops", 60)}
    try:
        with _deadline(float(spec.get("timeout_s", 2))):
            got = parse(text, **limits)
            try:
                expected = parse(str(spec["answer"]), **limits)
            except ValueError as e:
                raise ConfigError(f"symbolic verifier spec answer {spec['answer']!r} is refused: {e}.") from e
            same = sympy.simplify(got.doit() - expected.doit()) == 0
    except ValueError as e:
        return VerifierResult(0.0, text, f"answer {text!r} refused: {e}")
    except _Timeout:
        return VerifierResult(0.0, text, f"comparing {text!r} with the answer took longer than the time limit")
    except (ArithmeticError, TypeError, AttributeError) as e:  # e.g. zoo - zoo, a relation minus a number
        return VerifierResult(0.0, text, f"answer {text!r} cannot be compared ({type(e).__name__})")
    verdict = "equals" if same else "does not equal"
    return VerifierResult(float(same), text, f"read {text!r}; {verdict} {spec['answer']}")
