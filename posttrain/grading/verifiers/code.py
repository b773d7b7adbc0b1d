"""`code`: does the model's program pass the spec's tests, run in the sandbox?"""

from __future__ import annotations

import re

from posttrain.errors import ConfigError
from posttrain.grading.verifiers import VerifierResult
from posttrain.grading.verifiers.sandbox import run_sandboxed

_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)[ \t]*\n(.*?)```", re.DOTALL)
_ANY_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(response: str) -> str:
    """The last ```python block, else the last ``` block, else the whole response."""
    for fence in (_FENCE, _ANY_FENCE):
        blocks = fence.findall(response)
        if blocks:
            return blocks[-1]
    return response


def verify(response: str, spec: dict) -> VerifierResult:
    """Score 1 when the program followed by spec["tests"] (asserts) exits 0 within the limits, else 0.

    spec: tests (Python source), timeout_s (default 5), memory_mb (default 512).
    """
    tests = spec.get("tests")
    if not isinstance(tests, str) or not tests.strip():
        raise ConfigError(f"code verifier spec {spec} has no 'tests'; give Python asserts as text, "
                          "e.g. {'tests': 'assert add(2, 3) == 5'}.")
    program = extract_code(response)
    result = run_sandboxed(program + "\n\n" + tests, timeout_s=float(spec.get("timeout_s", 5)),
                           memory_mb=int(spec.get("memory_mb", 512)))
    if result.returncode == 0 and not result.timed_out:
        return VerifierResult(1.0, program, "all tests passed")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    reason = result.killed_reason or (lines[-1].strip() if lines else f"exit code {result.returncode}")
    return VerifierResult(0.0, program, reason)
