"""Tools a model may call while it answers: a calculator, sandboxed Python, or your own function.

The call format is the Hermes/Qwen one that many chat templates render: inside its turn the model
writes

    <tool_call>{"name": "calculator", "arguments": {"expression": "4821 * 937"}}</tool_call>

and ends the turn. The runtime runs the tool and appends a `tool` message with its result, rendered
by the chat template, then the generation prompt of the next assistant turn; the model goes on
from there. In the engine (posttrain.engine) those runtime tokens are forced with mask 0, so they
carry no loss and no policy gradient.

How the model learns which tools exist: a template that renders `tools=` itself (its source names
`tools`, as Qwen2.5's and Llama 3.1's do) gets the tools' JSON schemas that way; for any other
template posttrain adds `tool_system_prompt` to the system message. Either way the conversation is
rendered by the same function for SFT data, evals and RL rollouts (`render_with_tools`).

A tool never raises into the run: a malformed call, an unknown tool or a failing tool comes back to
the model as text beginning "error:".
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from posttrain.errors import ConfigError

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
MAX_RESULT_CHARS = 400  # a tool's answer is cut to this many characters before the model reads it


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object
    run: Callable[[dict], str] = field(compare=False)

    def schema(self) -> dict:
        """The OpenAI-style function schema that transformers' `apply_chat_template(tools=...)` takes."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


# ---------------------------------------------------------------- the calculator

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_DIGITS = 1000  # larger intermediate results are refused (2 ** 10 ** 9 would take the machine)


def calculate(expression: str) -> int | float:
    """Evaluate arithmetic on numbers: + - * / // % ** and parentheses, exactly on integers.

    Only number literals and those operators are accepted (ast, no eval); results and powers are
    bounded to MAX_DIGITS digits. Raises ValueError with a reason for anything else.
    """
    if len(expression) > 2000:
        raise ValueError("the expression is longer than 2000 characters")
    try:
        tree = ast.parse(expression.strip().replace("^", "**").replace("×", "*").replace(",", ""), mode="eval")
    except SyntaxError:
        raise ValueError(f"cannot parse {expression!r} as arithmetic") from None

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](value(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            a, b = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(b) * math.log10(max(abs(a), 2)) > MAX_DIGITS:
                raise ValueError("the power is too large")
            try:
                out = _BINARY[type(node.op)](a, b)
            except ZeroDivisionError:
                raise ValueError("division by zero") from None
            if isinstance(out, int) and abs(out).bit_length() > MAX_DIGITS * 3.33:
                raise ValueError("the result is too large")
            return out
        raise ValueError(f"only numbers and + - * / // % ** ( ) are allowed, not {ast.dump(node)[:40]}")

    result = value(tree.body)
    if isinstance(result, float):
        if not math.isfinite(result):
            raise ValueError("the result is not finite")
        if result.is_integer() and abs(result) < 2 ** 53:
            return int(result)
        return round(result, 10)
    return result


def _calculator(arguments: dict) -> str:
    expression = arguments.get("expression")
    if not isinstance(expression, str):
        raise ValueError('the calculator takes {"expression": "<arithmetic>"}')
    # The expression echoed, then " = value": the value follows a space, as it does in "The answer is value",
    # so a model copies the same tokens (a BPE tokenizer splits "\n4517277" and " 4517277" differently).
    return f"{expression.strip()} = {calculate(expression)}"


def _python(arguments: dict) -> str:
    from posttrain.grading.verifiers.sandbox import run_sandboxed

    code = arguments.get("code")
    if not isinstance(code, str):
        raise ValueError('python takes {"code": "<program that prints its answer>"}')
    result = run_sandboxed(code, timeout_s=5, memory_mb=256)
    if result.killed_reason:
        raise ValueError(f"the program was stopped: {result.killed_reason}")
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["exit status %d" % result.returncode])[-1]
        raise ValueError(last)
    return result.stdout.strip()


CALCULATOR = Tool("calculator", "exact arithmetic (+ - * / // % **).",
                  {"type": "object", "properties": {"expression": {"type": "string", "description": "e.g. 4821 * 937"}},
                   "required": ["expression"]}, _calculator)
PYTHON = Tool("python", "runs a program in a sandbox (no network, 5 s, 256 MB); returns what it prints.",
              {"type": "object", "properties": {"code": {"type": "string", "description": "a program that prints"}},
               "required": ["code"]}, _python)
BUILTIN_TOOLS = {t.name: t for t in (CALCULATOR, PYTHON)}


def resolve_tools(names) -> list[Tool]:
    """Tools by name: built-in (calculator, python) or a user's "module:function" (a function taking the
    arguments dict and returning text; its docstring is the description)."""
    out = []
    for spec in names or ():
        if isinstance(spec, Tool):
            out.append(spec)
        elif spec in BUILTIN_TOOLS:
            out.append(BUILTIN_TOOLS[spec])
        elif isinstance(spec, str) and ":" in spec:
            out.append(_user_tool(spec))
        else:
            raise ConfigError(f"unknown tool {spec!r}. Use a built-in one ({', '.join(BUILTIN_TOOLS)}) or your "
                              "own as 'module:function' (a function taking the arguments dict and returning text).")
    if len({t.name for t in out}) < len(out):
        raise ConfigError(f"tools {', '.join(t.name for t in out)}: a tool is named twice; name each once.")
    return out


def _user_tool(spec: str) -> Tool:
    from posttrain.grading.verifiers import import_user_module

    module_name, _, attr = spec.partition(":")
    module = import_user_module(f"tool '{spec}'", module_name)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"tool '{spec}': module '{module_name}' has no function '{attr}'. Define "
                          f"`def {attr}(arguments: dict) -> str` there.")
    params = getattr(fn, "parameters", {"type": "object", "properties": {}})
    return Tool(attr, (fn.__doc__ or attr).strip().splitlines()[0], params, lambda args: str(fn(args)))


# ---------------------------------------------------------------- the call format

def format_tool_call(name: str, arguments: dict) -> str:
    return f"{CALL_OPEN}{json.dumps({'name': name, 'arguments': arguments})}{CALL_CLOSE}"


_CALL = re.compile(re.escape(CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(CALL_CLOSE), re.S)


def find_tool_call(text: str) -> str | None:
    """The body of the last complete <tool_call>...</tool_call> in a turn, or None.

    Without tags, a turn that is one JSON object naming a tool and its "parameters" or "arguments" is a
    call too: Llama 3.1's format for custom tools (after an optional <|python_tag|>)."""
    bodies = _CALL.findall(text)
    if bodies:
        return bodies[-1]
    bare = text.strip().removeprefix("<|python_tag|>").strip()
    if bare.startswith("{") and bare.endswith("}"):
        try:
            call = json.loads(bare)
        except json.JSONDecodeError:
            return None
        if isinstance(call, dict) and isinstance(call.get("name"), str) and ({"parameters", "arguments"} & call.keys()):
            return bare
    return None


def parse_tool_call(body: str) -> tuple[str, dict]:
    """(name, arguments) of a call body; ValueError saying what is wrong with it."""
    try:
        call = json.loads(body)
    except json.JSONDecodeError as e:
        raise ValueError(f"the tool call is not JSON ({e.msg})") from None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise ValueError('a tool call is {"name": ..., "arguments": {...}}')
    arguments = call.get("arguments", call.get("parameters", {}))  # "parameters": Llama 3.1
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            raise ValueError("the tool call's arguments are not a JSON object") from None
    if not isinstance(arguments, dict):
        raise ValueError("the tool call's arguments are not a JSON object")
    return call["name"], arguments


def tool_system_prompt(tools: list[Tool]) -> str:
    """What a template without tool support is told about the tools (posttrain's own format), kept short:
    a small model reads it in every prompt."""
    lines = [f'Tools: write {CALL_OPEN}{{"name": ..., "arguments": {{...}}}}{CALL_CLOSE} to call one.']
    lines += [f"- {t.name}({', '.join(t.parameters.get('properties', {}))}): {t.description}" for t in tools]
    return "\n".join(lines)


def template_renders_tools(tokenizer) -> bool:
    template = getattr(tokenizer, "chat_template", None) or ""
    return isinstance(template, str) and "tools" in template


def with_tools(tokenizer, messages: list[dict], tools: list[Tool]) -> tuple[list[dict], list[dict] | None]:
    """(messages, tools= argument) to render a conversation in which `tools` are available."""
    if not tools:
        return messages, None
    if template_renders_tools(tokenizer):
        return messages, [t.schema() for t in tools]
    note = tool_system_prompt(tools)
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{note}"}] + messages[1:], None
    return [{"role": "system", "content": note}] + messages, None


class ToolRunner:
    """Runs the model's tool calls and renders their results as the text the runtime injects."""

    def __init__(self, tools: list[Tool], tokenizer, max_calls: int = 4):
        self.tools, self.tokenizer, self.max_calls = {t.name: t for t in tools}, tokenizer, max_calls
        self.calls = self.errors = 0

    def prompt_messages(self, messages: list[dict]) -> tuple[list[dict], list[dict] | None]:
        return with_tools(self.tokenizer, messages, list(self.tools.values()))

    def run(self, turn_text: str) -> str | None:
        """The result text of the turn's tool call ("error: ..." when it failed), None when it has no call."""
        body = find_tool_call(turn_text)
        if body is None:
            return None
        self.calls += 1
        try:
            name, arguments = parse_tool_call(body)
            tool = self.tools.get(name)
            if tool is None:
                raise ValueError(f"unknown tool {name!r}; the tools are {', '.join(self.tools)}")
            result = tool.run(arguments)
        except Exception as e:  # noqa: BLE001 - whatever a tool does, the model gets text back
            self.errors += 1
            result = f"error: {e}"
        return result[:MAX_RESULT_CHARS]

    def injection(self, messages: list[dict], turns: list[tuple[str, str]], end_of_turn: str) -> str:
        """The text after the model's end-of-turn token: the tool message with the last result, then the
        generation prompt of its next turn, both as the chat template renders them.

        messages: the conversation before the reply; turns: the reply so far as (assistant text, tool
        result) pairs, the last one being the call just made. end_of_turn: the text of the token that
        ended the model's turn.
        """
        from posttrain.data.chat import render_messages

        shown, tools = self.prompt_messages(messages)
        history = list(shown)
        for text, result in turns[:-1]:
            history += [{"role": "assistant", "content": text}, {"role": "tool", "content": result}]
        said = history + [{"role": "assistant", "content": turns[-1][0]}]
        before = render_messages(self.tokenizer, said, add_generation_prompt=False, tools=tools)
        after = render_messages(self.tokenizer, said + [{"role": "tool", "content": turns[-1][1]}],
                                add_generation_prompt=True, tools=tools)
        cut = before.rfind(end_of_turn)
        if not after.startswith(before) or cut < 0:
            raise ConfigError("the chat template does not render a tool result as a continuation of the "
                              "conversation (or renders no end-of-turn marker), so a tool result cannot be "
                              "injected mid-reply. Use a template that appends a `tool` message after the turn.")
        return before[cut + len(end_of_turn):] + after[len(before):]
