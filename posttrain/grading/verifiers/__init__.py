"""Verifiers for RL from verifiable rewards: small functions that score one response against a spec.

Every verifier is `verify(response: str, spec: dict) -> VerifierResult`, pure and pluggable:

- numeric.py      `numeric`: the final number (boxed, '#### N', 'The answer is N', else the last) vs spec["answer"]
- symbolic.py     `symbolic`: the final expression is equal to spec["answer"] by sympy, under size and time limits
- format.py       `think_answer`: <think>...</think> then <answer>...</answer>; `answer_text` for the others
- constraints.py  `instructions` (the IFEval checkers), `json_valid`, `length`
- code.py         `code`: the model's program plus spec["tests"] runs in sandbox.py's isolated subprocess
- refusal.py      `refusal`: the response refuses (XSTest's match) exactly when spec["refuse"] says it should

A user's own verifier is named "module:function" (docs/verifiers.md). `run_verifier` is how the RL
loop should call any of them: a verifier that raises or returns nonsense scores 0 and the error comes
back as text, so one bad verifier or spec costs one reward, never the run.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from posttrain.errors import ConfigError


@dataclass(frozen=True)
class VerifierResult:
    """What a verifier concluded about one response."""

    score: float  # the reward, in [0, 1]
    parsed: str | None  # the answer it read from the response, None when it found none
    reason: str  # one line, for logs and for a human reading why a response scored what it did


Verifier = Callable[[str, dict], VerifierResult]

# The built-in verifiers import VerifierResult from here, so they are imported after it is defined.
from posttrain.grading.verifiers import code, constraints, format, numeric, refusal, symbolic  # noqa: E402

VERIFIERS: dict[str, Verifier] = {
    "numeric": numeric.verify,
    "symbolic": symbolic.verify,
    "think_answer": format.verify,
    "instructions": constraints.verify_instructions,
    "json_valid": constraints.verify_json,
    "length": constraints.verify_length,
    "code": code.verify,
    "refusal": refusal.verify,
}


def get_verifier(name_or_spec: str | Verifier) -> Verifier:
    """A built-in verifier by name, or a user's "module:function" imported from the current directory
    or the Python path. A callable is returned as it is."""
    if callable(name_or_spec):
        return name_or_spec
    spec = str(name_or_spec).strip()
    if spec in VERIFIERS:
        return VERIFIERS[spec]
    if ":" not in spec:
        raise ConfigError(
            f"unknown verifier '{spec}'. Use a built-in one ({', '.join(VERIFIERS)}) or your own as "
            "'module:function', e.g. 'my_rewards:exact_match' for a function in ./my_rewards.py."
        )
    module_name, _, attr = spec.partition(":")
    module = import_user_module(f"verifier '{spec}'", module_name)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(
            f"verifier '{spec}': module '{module_name}' ({getattr(module, '__file__', '?')}) has no function "
            f"'{attr}'. Define `def {attr}(response: str, spec: dict) -> VerifierResult` there."
        )
    return fn


def import_user_module(what: str, module_name: str):
    """A user's module for `what` (e.g. "verifier 'm:f'"), imported from the current directory or the Python
    path; any failure is a ConfigError naming it. The current directory is searched too, so a file next
    to the recipe just works."""
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_name)
    except Exception as e:  # an error inside the user's module is as fatal as a missing one
        raise ConfigError(
            f"{what}: cannot import module '{module_name}' ({type(e).__name__}: {e}). Put "
            f"{module_name.replace('.', '/')}.py in the current directory ({os.getcwd()}) or on PYTHONPATH, "
            "and check that it imports on its own."
        ) from e
    finally:
        if added:
            sys.path.remove(os.getcwd())


def run_verifier(fn: Verifier, response: str, spec: dict) -> tuple[VerifierResult, str | None]:
    """(result, None) when the verifier behaved; (a score-0 result, the error text) when it raised or
    returned something that is not a VerifierResult with a score in [0, 1]."""
    name = getattr(fn, "__qualname__", repr(fn))
    try:
        result = fn(response, spec)
    except (Exception, SystemExit) as e:  # SystemExit too: a user's sys.exit must not end training
        error = f"verifier {name} raised {type(e).__name__}: {e}"
        return VerifierResult(0.0, None, error), error
    if not isinstance(result, VerifierResult):
        error = f"verifier {name} returned {type(result).__name__}, not a VerifierResult"
        return VerifierResult(0.0, None, error), error
    score = result.score
    ok = isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score) and 0 <= score <= 1
    if not ok:
        error = f"verifier {name} returned score {score!r}; a score must be a number in [0, 1]"
        return VerifierResult(0.0, result.parsed, error), error
    return result, None
