"""`posttrain generate` and `posttrain chat` end to end on a tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from posttrain.cli import main
from posttrain.engine import Engine, SamplingParams
from posttrain.models import load_model_and_tokenizer


@pytest.fixture(scope="module")
def engine(tiny_llama_dir):
    model, tok = load_model_and_tokenizer(tiny_llama_dir, "cpu")
    return Engine(model, tok, dtype="fp32")


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_generate_writes_one_row_per_prompt(tiny_llama_dir, engine, tmp_path):
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
    rows = [{"prompt": "What is the capital of France?", "id": 7}, {"messages": conv}, {"prompt": "Hi"}]
    prompts = _write_jsonl(tmp_path / "prompts.jsonl", rows[:2] + [""] + rows[2:])  # a blank line is skipped
    out = tmp_path / "out.jsonl"
    rc = main(["generate", str(tiny_llama_dir), "--prompts", str(prompts), "--out", str(out),
               "--max-new-tokens", "6", "--dtype", "fp32", "--batch-size", "2"])
    assert rc == 0
    got = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(got) == 3
    assert got[0]["id"] == 7 and got[0]["prompt"] == rows[0]["prompt"] and got[1]["messages"] == conv
    # "prompt" rows are chat-templated as one user turn.
    as_chats = [[{"role": "user", "content": rows[0]["prompt"]}], conv, [{"role": "user", "content": "Hi"}]]
    expected = engine.chat(as_chats, SamplingParams(max_new_tokens=6))
    for row, c in zip(got, expected):
        assert row["completion"] == c.text
        assert row["finish_reason"] == c.finish_reason
        assert row["num_tokens"] == len(row["logprobs"]) == len(c.token_ids) <= 6
        assert row["logprobs"] == pytest.approx(c.logprobs, abs=1e-5)


def test_generate_raw_continues_text_and_prints_to_stdout(tiny_llama_dir, engine, tmp_path, capsys):
    prompts = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "The capital of France is"}, {"prompt": "Two plus"}])
    # on the engine fixture's device: the same seed draws other numbers on a GPU
    rc = main(["generate", str(tiny_llama_dir), "--prompts", str(prompts), "--raw", "--max-new-tokens", "5",
               "--dtype", "fp32", "--temperature", "0.9", "--seed", "4", "--device", "cpu"])
    assert rc == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = engine.generate(["The capital of France is", "Two plus"],
                               SamplingParams(max_new_tokens=5, temperature=0.9, seed=4))
    assert [r["completion"] for r in got] == [c.text for c in expected]
    assert [r["num_tokens"] for r in got] == [len(c.token_ids) for c in expected]


@pytest.mark.parametrize(
    "bad_line, field",
    [
        ('{"prompt": "unterminated', None),
        ('["a list"]', None),
        ('{"question": "no prompt field"}', "prompt"),
        ('{"prompt": 3}', "prompt"),
        ('{"messages": [{"role": "user"}]}', "messages[0].content"),  # checked as SFT data is
    ],
)
def test_generate_bad_line_names_file_line_and_field(tiny_llama_dir, tmp_path, capsys, bad_line, field):
    prompts = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "fine"}, bad_line, {"prompt": "fine too"}])
    out = tmp_path / "out.jsonl"
    rc = main(["generate", str(tiny_llama_dir), "--prompts", str(prompts), "--out", str(out), "--dtype", "fp32"])
    err = capsys.readouterr().err
    assert rc != 0
    assert f"{prompts}, line 2" in err
    if field:
        assert f"field '{field}'" in err
    assert not out.exists()  # nothing is generated from a file with errors


def test_chat_with_piped_stdin_keeps_history_and_handles_commands(tiny_llama_dir, engine):
    lines = ["Hello!", "", "And then?", "/system Answer briefly.", "What is the capital of France?",
             "/reset", "Hi", "/exit", "never read"]
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run(
        [sys.executable, "-m", "posttrain.cli", "chat", str(tiny_llama_dir), "--max-new-tokens", "6",
         "--dtype", "fp32", "--system", "You are helpful."],
        input="\n".join(lines).encode(), capture_output=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()

    # The same conversation through the engine: greedy, so the seed of each turn does not matter.
    params = SamplingParams(max_new_tokens=6)
    transcript = []

    def turn(system, history, user):
        history.append({"role": "user", "content": user})
        reply = engine.chat([[{"role": "system", "content": system}] + history], params)[0].text
        history.append({"role": "assistant", "content": reply})
        transcript.extend([f"user> {user}", f"assistant> {reply}"])

    history = []
    turn("You are helpful.", history, "Hello!")
    turn("You are helpful.", history, "And then?")  # the second turn sees the first
    history = []
    turn("Answer briefly.", history, "What is the capital of France?")
    history = []
    turn("Answer briefly.", history, "Hi")  # /reset keeps the system prompt
    assert proc.stdout.decode("utf-8") == "\n".join(transcript) + "\n"
    assert "never read" not in proc.stdout.decode("utf-8")
