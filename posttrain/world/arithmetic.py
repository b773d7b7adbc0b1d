"""Arithmetic problems with worked column steps, shared by the corpus, SFT, RLVR and probes.

Two sizes: small problems (`sample_problem`, 2-3 digits) that a small model can learn to work out
in columns, and large ones (`sample_large_problem`, up to 6 x 4 or 7 + 7 digits) that it cannot do
in its head and should hand to the calculator tool.

Held-out by construction: a fixed rule on the operands (`is_probe_problem`)
reserves about a tenth of all problems, of either size, for the probes. Training data
(corpus, SFT, preferences, RLVR) never draws those, whatever the seed or scale,
so the probes are leak-free even when built in-process without the world files.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

OPS = ("+", "-", "*")


@dataclass(frozen=True)
class Problem:
    a: int
    op: str
    b: int

    @property
    def text(self) -> str:
        return f"{self.a} {self.op} {self.b}"

    @property
    def answer(self) -> int:
        return {"+": self.a + self.b, "-": self.a - self.b, "*": self.a * self.b}[self.op]


def is_probe_problem(p: Problem) -> bool:
    """The fixed held-out partition: about 10% of problems belong to the probe.

    The rule reads only the operands' last digits (7919 and 104729 are both 9 mod 10): a problem is a probe
    problem exactly when those two digits sum to the operation's index mod 10 (0 for +, 1 for -, 2 for *).
    So a probe's first column is a digit pair that training never shows in the first column of that
    operation (4 + 6, 1 - 0, ...): the probes are harder than problems drawn at random. A new rule would
    change which problems the shipped base's pretraining corpus may hold, so it waits for a new base;
    scripts/heldout_partition.py measures the difference on problems held out by a hash instead.
    """
    return (p.a * 7919 + p.b * 104729 + OPS.index(p.op)) % 10 == 0


def sample_problem(rng: random.Random, split: str = "train", held_out=None) -> Problem:
    """A 2-3 digit addition or subtraction (no negatives) or a small multiplication.

    split 'train' never returns a probe problem; split 'probe' only returns probe problems. held_out: another
    partition rule in place of `is_probe_problem` (scripts/heldout_partition.py draws with one).
    """
    held_out = held_out or is_probe_problem
    while True:
        r = rng.random()
        if r < 0.4:
            p = Problem(rng.randint(10, 999), "+", rng.randint(10, 999))
        elif r < 0.75:
            a, b = rng.randint(10, 999), rng.randint(10, 999)
            p = Problem(max(a, b), "-", min(a, b))
        else:
            p = Problem(rng.randint(12, 199), "*", rng.randint(2, 9))
        if held_out(p) == (split == "probe"):
            return p


def _number(rng: random.Random, min_digits: int, max_digits: int) -> int:
    """A number of min_digits to max_digits digits, each length equally likely."""
    k = rng.randint(min_digits, max_digits)
    return rng.randint(10 ** (k - 1), 10 ** k - 1)


def sample_large_problem(rng: random.Random, split: str = "train") -> Problem:
    """A 4-6 digit by 3-4 digit multiplication, or a 5-7 digit addition or subtraction (no negatives):
    too large to work out in the head of a small model, so the answer should come from the calculator.

    The same held-out rule as `sample_problem`: split 'train' never returns a probe problem, split
    'probe' only probe problems. Every operand a is at least 1000, so no large problem is also a small one.
    """
    while True:
        r = rng.random()
        if r < 0.5:
            p = Problem(_number(rng, 4, 6), "*", _number(rng, 3, 4))
        elif r < 0.75:
            p = Problem(_number(rng, 5, 7), "+", _number(rng, 5, 7))
        else:
            a, b = _number(rng, 5, 7), _number(rng, 5, 7)
            p = Problem(max(a, b), "-", min(a, b))
        if is_probe_problem(p) == (split == "probe"):
            return p


def _digits(n: int) -> list[int]:
    """Digits, least significant first."""
    return [int(c) for c in reversed(str(n))]


def worked_steps(p: Problem) -> list[str]:
    """Column-method steps, right to left, one 'Step: ...' line per column."""
    steps: list[str] = []
    da, db = _digits(p.a), _digits(p.b)
    if p.op == "+":
        carry = 0
        for i in range(max(len(da), len(db))):
            terms = [str(d[i]) for d in (da, db) if i < len(d)] + ([str(carry)] if carry else [])
            s = sum(int(t) for t in terms)
            last = i == max(len(da), len(db)) - 1
            expr = " + ".join(terms)
            if len(terms) == 1:
                steps.append(f"Step: bring down {s}")
            elif s >= 10 and not last:
                steps.append(f"Step: {expr} = {s}, write {s % 10} carry {s // 10}")
            else:
                steps.append(f"Step: {expr} = {s}, write {s}")
            carry = s // 10 if not last else 0
    elif p.op == "-":
        borrow = 0
        for i in range(len(da)):
            top, bottom = da[i], db[i] if i < len(db) else 0
            need = top - borrow < bottom
            left = top + 10 if need else top
            parts = [str(left)] + (["1"] if borrow else []) + ([str(bottom)] if i < len(db) else [])
            value = left - borrow - bottom
            tail = f", borrow 1, write {value}" if need else f", write {value}"
            if len(parts) == 1:
                steps.append(f"Step: bring down {value}")
            else:
                steps.append(f"Step: {' - '.join(parts)} = {value}{tail}")
            borrow = 1 if need else 0
    else:
        carry, m = 0, p.b
        for i, d in enumerate(da):
            s = d * m + carry
            last = i == len(da) - 1
            expr = f"{d} * {m}" + (f" + {carry}" if carry else "")
            if last or s < 10:
                steps.append(f"Step: {expr} = {s}, write {s}")
                carry = 0
            else:
                steps.append(f"Step: {expr} = {s}, write {s % 10} carry {s // 10}")
                carry = s // 10
    return steps


def worked_solution(p: Problem, final: str = "The answer is {answer}.") -> str:
    """Steps then the final line; `final` is formatted with the answer."""
    return "\n".join(worked_steps(p) + [final.format(answer=p.answer)])


def think_solution(p: Problem) -> str:
    """The steps inside <think></think>, then the bare answer inside <answer></answer> (the R1 format
    that the think_answer verifier checks)."""
    return "<think>\n" + "\n".join(worked_steps(p)) + "\n</think>\n<answer>" + str(p.answer) + "</answer>"


# User phrasings. Probe phrasings are held out from all training data.
# Many train phrasings, so that what SFT and RLVR teach is tied to the problem, not to a few wordings
# (world-2.3: 18 where there were 6 raised SFT small arithmetic on the probes' phrasings from 52.7% to
# 64.7%; README, RLVR notes).
ASK_TRAIN = ("What is {p}?", "Calculate {p}.", "Compute {p}. Show your steps.", "Solve: {p}",
             "What does {p} equal?", "Please work out {p}.", "How much is {p}?", "Evaluate {p}.",
             "Find {p}.", "I need the result of {p}.", "Can you tell me what {p} is?", "{p} = ?",
             "Give me the answer to {p}.", "What's {p}?", "Determine {p}.", "Do the arithmetic: {p}",
             "Help me with this one: {p}", "Quick question: what is {p}?")
ASK_PROBE = ("Work out {p} for me.", "What do you get when you compute {p}?", "Could you find the value of {p}?")


def worksheet(rng: random.Random, number: int) -> str:
    """A pretraining worksheet: problems with worked steps and answers."""
    title = rng.choice(["Arithmetic practice", "Column arithmetic worksheet", "Math drills", "Homework: sums and products"])
    lines = [f"{title} {number}", ""]
    for k in range(1, rng.randint(4, 8) + 1):
        p = sample_problem(rng, "train")
        lines += [f"Problem {k}: {p.text}", *worked_steps(p), f"Answer: {p.answer}", ""]
    return "\n".join(lines).strip()
