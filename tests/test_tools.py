"""Tools: the calculator, the call format, the runner's errors, and the engine running a call mid-answer."""

import pytest
import torch
from transformers import LlamaForCausalLM

from posttrain.data.chat import render_generation_prompt
from posttrain.engine import Engine, SamplingParams
from posttrain.errors import ConfigError
from posttrain.models import load_model_and_tokenizer
from posttrain.tools import (
    CALCULATOR, ToolRunner, calculate, find_tool_call, format_tool_call, parse_tool_call, resolve_tools,
    tool_system_prompt, with_tools,
)


def test_calculator_is_exact_on_big_integers_and_refuses_anything_but_arithmetic():
    assert calculate("48213 * 9371") == 48213 * 9371
    assert calculate("(1 + 2) ** 3 - 10 // 3") == 24
    assert calculate("7 / 2") == 3.5
    assert calculate("1,234,567 + 1") == 1234568
    assert calculate(" 236758 * 8766\n") == 236758 * 8766  # the world's calls start with a space
    assert CALCULATOR.run({"expression": " 6 * 7"}) == "6 * 7 = 42"
    for bad in ("__import__('os')", "x + 1", "2 ** 99999999", "1 / 0", "[1, 2]", "open('f')"):
        with pytest.raises(ValueError):
            calculate(bad)


def test_a_call_round_trips_through_the_format_and_bad_calls_say_why():
    text = "Let me compute. " + format_tool_call("calculator", {"expression": "2 + 2"})
    assert parse_tool_call(find_tool_call(text)) == ("calculator", {"expression": "2 + 2"})
    assert find_tool_call("no call here <tool_call>{unclosed") is None
    with pytest.raises(ValueError, match="not JSON"):
        parse_tool_call("{name: calculator}")
    with pytest.raises(ValueError, match="arguments"):
        parse_tool_call('{"name": "calculator", "arguments": 3}')


def test_llama_31_bare_json_calls_are_calls_and_other_json_is_not():
    bare = '{"name": "calculator", "parameters": {"expression": "6 * 7"}}'
    for text in (bare, f"  {bare}\n", f"<|python_tag|>{bare}"):
        assert parse_tool_call(find_tool_call(text)) == ("calculator", {"expression": "6 * 7"})
    for text in ('{"name": "Ostrel"}', '{"answer": 42}', "The call would be " + bare, "{not json}"):
        assert find_tool_call(text) is None, text


def test_the_runner_turns_every_failure_into_text_for_the_model(tiny_llama_dir):
    _, tok = load_model_and_tokenizer(tiny_llama_dir)
    runner = ToolRunner(resolve_tools(["calculator", "python"]), tok)
    assert runner.run(format_tool_call("calculator", {"expression": "6 * 7"})) == "6 * 7 = 42"
    assert runner.run("just an answer") is None
    assert runner.run(format_tool_call("weather", {})).startswith("error: unknown tool 'weather'")
    assert runner.run(format_tool_call("calculator", {"expression": "import os"})).startswith("error:")
    assert runner.run("<tool_call>not json</tool_call>").startswith("error: the tool call is not JSON")
    assert runner.run(format_tool_call("python", {"code": "print(sum(range(10)))"})) == "45"
    assert runner.run(format_tool_call("python", {"code": "raise SystemExit(3)"})).startswith("error:")
    assert (runner.calls, runner.errors) == (7 - 1, 4)
    with pytest.raises(ConfigError, match="unknown tool 'abacus'"):
        resolve_tools(["abacus"])


def test_a_template_without_tool_support_gets_the_tools_in_the_system_message(tiny_llama_dir):
    _, tok = load_model_and_tokenizer(tiny_llama_dir)
    user = [{"role": "user", "content": "What is 2 + 2?"}]
    messages, schemas = with_tools(tok, user, [CALCULATOR])
    assert schemas is None and messages[0] == {"role": "system", "content": tool_system_prompt([CALCULATOR])}
    merged, _ = with_tools(tok, [{"role": "system", "content": "Be brief."}] + user, [CALCULATOR])
    assert merged[0]["content"].startswith("Be brief.\n\n") and len(merged) == 2
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if tools %}{{ tools | length }}{% endif %}"
    messages, schemas = with_tools(tok, user, [CALCULATOR])
    assert messages == user and schemas == [CALCULATOR.schema()]
    assert render_generation_prompt(tok, messages, schemas).endswith("1")


class ScriptedLlama(LlamaForCausalLM):
    """Greedy decoding of this model writes `plan`, token by token; a token it did not write (a forced
    one) does not advance the plan. The real forward still runs, so the KV cache is a real one."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, use_cache=None,
                logits_to_keep=0, **kwargs):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              cache=cache, use_cache=use_cache, logits_to_keep=logits_to_keep, **kwargs)
        fed = int(input_ids[0, -1])
        if input_ids.shape[1] > 1:  # the prefill
            self.i = 0
        elif fed != self.plan[self.i - 1]:  # a forced token: say the same again
            self.i -= 1
        emit = self.plan[min(self.i, len(self.plan) - 1)]
        self.i += 1
        logits = torch.full_like(out.logits, -1e4)
        logits[..., emit] = 1e4
        out.logits = logits
        return out


def test_the_engine_runs_a_tool_call_mid_answer_and_injects_the_result_as_unsampled_tokens(tiny_llama_dir):
    model, tok = load_model_and_tokenizer(tiny_llama_dir)
    model.__class__ = ScriptedLlama
    end = tok.convert_tokens_to_ids("<|im_end|>")
    call = format_tool_call("calculator", {"expression": "48213 * 9371"})
    answer = f"The answer is {48213 * 9371}."
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    model.plan = ids(call) + [end] + ids(answer) + [end]
    runner = ToolRunner([CALCULATOR], tok)
    engine = Engine(model, tok, dtype="fp32", tools=runner)
    conversation = [{"role": "user", "content": "What is 48213 * 9371?"}]
    [c] = engine.chat([conversation], SamplingParams(max_new_tokens=len(model.plan)))

    assert c.finish_reason == "stop" and c.text == answer
    assert c.turns == [(call, f"48213 * 9371 = {48213 * 9371}")]
    injected = [t for t, m in zip(c.token_ids, c.mask) if m == 0]
    sampled = [t for t, m in zip(c.token_ids, c.mask) if m == 1]
    assert sampled == model.plan  # every token the model wrote, and only those, has mask 1
    # What was injected is the template's tool message and the next assistant prompt, exactly.
    expected = runner.injection(conversation, c.turns, "<|im_end|>")
    assert tok.decode(injected) == expected
    assert str(48213 * 9371) in expected and expected.rstrip().endswith("assistant")
    # The prompt announced the calculator (the template renders no tools itself).
    assert "calculator" in tok.decode(c.prompt_ids)


def test_max_new_tokens_counts_sampled_tokens_only_and_max_calls_bounds_the_calls(tiny_llama_dir):
    model, tok = load_model_and_tokenizer(tiny_llama_dir)
    model.__class__ = ScriptedLlama
    end = tok.convert_tokens_to_ids("<|im_end|>")
    call = ids = tok(format_tool_call("calculator", {"expression": "1 + 1"}), add_special_tokens=False)["input_ids"]
    model.plan = (call + [end]) * 3
    engine = Engine(model, tok, dtype="fp32", tools=ToolRunner([CALCULATOR], tok, max_calls=1))
    [c] = engine.chat([[{"role": "user", "content": "Add."}]], SamplingParams(max_new_tokens=len(ids) * 3))
    assert len(c.turns) == 1 and c.finish_reason == "stop"  # the second call ends the reply: no more calls allowed
    assert sum(c.mask) == 2 * (len(ids) + 1) and len(c.mask) > sum(c.mask)
    [c] = engine.chat([[{"role": "user", "content": "Add."}]], SamplingParams(max_new_tokens=len(ids) + 3))
    assert c.finish_reason == "length" and sum(c.mask) == len(ids) + 3 and len(c.mask) > sum(c.mask)
