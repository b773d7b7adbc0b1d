"""Bounded inputs: prompts are checked against the model's context (an error, or cut with --overlong truncate;
a reply budget clipped to the room left), fast even for a megabyte; `chat` drops old turns to fit, refuses a
message too long alone, never sends an unknown /command, skips input that is not UTF-8; `generate` checks
roles as SFT data does; Ctrl-C during training checkpoints the last finished step and resumes from it."""

from __future__ import annotations

import io
import json
import shlex
import shutil
import signal
import sys
import time

import pytest
import torch

from posttrain.cli import main
from posttrain.commands.chat import drop_oldest_turns
from posttrain.context_window import bounded_ids, fit
from posttrain.engine import Engine, SamplingParams
from posttrain.errors import DataError
from posttrain.models import load_model_and_tokenizer
from test_safety import sft_args, write_chats

BIG = "The capital of France is Paris. " * 32_000  # 1 MB; the tiny models have 512 positions


@pytest.fixture(scope="module")
def loaded(tiny_llama_dir):
    return load_model_and_tokenizer(tiny_llama_dir, "cpu")


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _error(err: str) -> str:
    """The error paragraph of stderr: its last line (transformers' loading bar may come before it)."""
    return err.strip().splitlines()[-1]


def _small_context_copy(src, dst, positions: int):
    """A copy of a tiny model directory whose config allows only `positions` positions."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["max_position_embeddings"] = positions
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


# ------------------------------------------------------------ the pure parts


def test_fit_keeps_room_for_the_reply():
    assert fit(10, 5, 100, truncate=False) == (10, 5)
    assert fit(98, 5, 100, truncate=False) == (98, 2)  # fits, with a shorter reply
    assert fit(99, 5, 100, truncate=False) == (99, 1)
    assert fit(100, 5, 100, truncate=False) is None  # no room for one new token
    assert fit(100, 0, 100, truncate=False) == (100, 0)  # nothing asked: the prompt may fill the context
    assert fit(1000, 5, 100, truncate=True) == (95, 5)  # cut to leave room for the whole reply
    assert fit(1000, 80, 100, truncate=True) == (50, 50)  # ...but the prompt keeps at least half the context
    assert fit(10**6, 7, None, truncate=False) == (10**6, 7)  # unknown context: unchecked


def test_bounded_ids_reads_only_a_tail_of_a_long_text():
    seen = []

    def one_per_char(text):
        seen.append(len(text))
        return [ord(c) for c in text]

    text = "".join(chr(97 + i % 26) for i in range(1_000_000))
    ids, whole = bounded_ids(one_per_char, text, n=100, max_chars=5)
    assert not whole and len(ids) > 101 and max(seen) <= 102 * 5
    assert ids[-100:] == [ord(c) for c in text[-100:]]  # the tail's last tokens are the text's last tokens
    seen.clear()
    assert bounded_ids(one_per_char, "short", n=100, max_chars=5) == ([ord(c) for c in "short"], True)
    assert seen == [5]

    def merging(text):  # a normalizer that folds 10 characters into one token breaks the bound...
        return list(range(len(text) // 10))

    ids, whole = bounded_ids(merging, "x" * 5000, n=100, max_chars=5)
    assert whole and len(ids) == 500  # ...so the whole text is read rather than guessed


# ------------------------------------------------------------ generate / engine


def test_megabyte_prompt_is_refused_fast_naming_its_line_and_the_context(tiny_llama_dir, tmp_path, capsys):
    prompts = _jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi"}, {"prompt": BIG}])
    out = tmp_path / "out.jsonl"
    t0 = time.perf_counter()
    rc = main(["generate", str(tiny_llama_dir), "--prompts", str(prompts), "--out", str(out), "--raw",
               "--dtype", "fp32", "--device", "cpu", "--max-new-tokens", "4"])
    elapsed = time.perf_counter() - t0
    stderr = capsys.readouterr().err
    err = _error(stderr)
    assert rc == 2 and elapsed < 20, elapsed  # before: still running after 600 s
    assert err.startswith("posttrain generate: error: ") and "Traceback" not in stderr
    for fragment in (f"the prompt at {prompts}, line 2", "longer than 512 tokens", "1,024,000 characters",
                     "context is 512 tokens", "--overlong truncate"):
        assert fragment in err, (fragment, err)
    assert not out.exists()


def test_truncate_keeps_the_end_of_a_megabyte_prompt(tiny_llama_dir, loaded, tmp_path, capsys):
    prompts = _jsonl(tmp_path / "p.jsonl", [{"prompt": BIG}, {"prompt": "Hi"}])
    out = tmp_path / "out.jsonl"
    rc = main(["generate", str(tiny_llama_dir), "--prompts", str(prompts), "--out", str(out), "--raw",
               "--dtype", "fp32", "--device", "cpu", "--max-new-tokens", "4", "--overlong", "truncate"])
    assert rc == 0
    assert f"cut the prompt at {prompts}, line 1 to the last 508 tokens, leaving 4" in capsys.readouterr().err
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 2 and rows[0]["prompt"] == BIG  # the row is copied as given

    model, tok = loaded
    engine = Engine(model, tok, dtype="fp32", overlong_prompt="truncate")
    c = engine.generate([BIG], SamplingParams(max_new_tokens=4))[0]
    tail = tok(BIG[-10_000:], add_special_tokens=False)["input_ids"]
    assert c.prompt_ids == tail[-508:]  # the last 508 tokens of the text
    assert rows[0]["completion"] == c.text and rows[0]["num_tokens"] == len(c.token_ids)


def test_max_new_tokens_is_clipped_to_the_room_left(loaded, capsys):
    model, tok = loaded
    sentence = tok("The capital of France is Paris. ", add_special_tokens=False)["input_ids"]
    long_prompt = (sentence * 100)[:505]  # 512 positions: room for 7 new tokens
    params = SamplingParams(max_new_tokens=20, stop_token_ids=())  # no stop token: rows run to their budget
    long_c, short_c = Engine(model, tok, dtype="fp32").generate([long_prompt, sentence], params)
    assert len(long_c.prompt_ids) == 505 and len(long_c.token_ids) == 7 and long_c.finish_reason == "length"
    assert len(short_c.token_ids) == 20  # its batch-mate keeps the full budget
    assert "prompt 0 leaves room for only 7 of the 20 new tokens" in capsys.readouterr().err


def test_generate_refuses_a_role_sft_refuses_naming_file_line_and_field(tiny_llama_dir, tmp_path, capsys):
    from posttrain.data.formats import load_dataset_rows

    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    bad = {"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello"}]}
    prompts = _jsonl(tmp_path / "p.jsonl", [good, bad])
    rc = main(["generate", str(tiny_llama_dir), "--prompts", str(prompts), "--dtype", "fp32"])
    err = _error(capsys.readouterr().err)
    assert rc == 2
    assert f"{prompts}, line 2" in err and "field 'messages[1].role'" in err and "'bot'" in err
    with pytest.raises(DataError) as sft:  # the very message SFT gives for the same file
        load_dataset_rows(prompts)
    assert str(sft.value) in err


# ------------------------------------------------------------ chat


def _chat(monkeypatch, capsys, model_dir, lines: bytes, *extra):
    """Run `posttrain chat` in-process on piped `lines`; return (rc, stdout, stderr, prompts the engine got)."""
    sent = []
    real = Engine.generate

    def counting(self, prompts, params, labels=None):
        sent.extend(prompts)
        return real(self, prompts, params, labels)

    monkeypatch.setattr(Engine, "generate", counting)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(lines), encoding="utf-8"))
    capsys.readouterr()
    rc = main(["chat", str(model_dir), "--dtype", "fp32", "--device", "cpu", *extra])
    out, err = capsys.readouterr()
    return rc, out, err, sent


def test_unknown_command_is_not_sent_and_double_slash_sends_a_slash(tiny_llama_dir, monkeypatch, capsys):
    rc, out, err, sent = _chat(monkeypatch, capsys, tiny_llama_dir,
                               b"/frobnicate now\n/help\n//etc is a path\n/exit\n", "--max-new-tokens", "3")
    assert rc == 0 and len(sent) == 1  # only the // message reached the model
    assert "/etc is a path" in sent[0] and "//etc" not in sent[0] and "frobnicate" not in sent[0]
    assert "unknown command /frobnicate; it was not sent to the model" in err
    assert "/help, /reset, /system TEXT, /exit" in err and "//TEXT" in err  # the notice and /help
    assert out.startswith("user> /etc is a path\nassistant> ")


def test_chat_drops_oldest_turns_to_fit_and_refuses_a_message_too_long(tiny_llama_dir, tmp_path, monkeypatch,
                                                                       capsys):
    small = _small_context_copy(tiny_llama_dir, tmp_path / "small", positions=96)
    questions = [f"Question {i}: what is the capital of France?" for i in range(1, 6)]
    lines = questions[:3] + ["word " * 300] + questions[3:]
    rc, out, err, sent = _chat(monkeypatch, capsys, small, ("\n".join(lines) + "\n").encode(),
                               "--system", "Be brief.", "--max-new-tokens", "8")
    assert rc == 0 and len(sent) == 5  # the long message was not sent; the chat went on
    assert "message not sent" in err and "context of 96 tokens must also hold 8 for the reply" in err
    assert "word word" not in "".join(sent) and "word word" not in out
    _, tok = load_model_and_tokenizer(small, "cpu")
    for prompt in sent:
        assert len(tok(prompt, add_special_tokens=False)["input_ids"]) + 8 <= 96
        assert "Be brief." in prompt  # the system prompt is never dropped
    assert "dropped the" in err and "oldest turn" in err
    assert questions[0] not in sent[-1] and questions[4] in sent[-1]


def test_drop_oldest_turns_drops_whole_turns():
    h = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "A"},
         {"role": "user", "content": "b"}, {"role": "assistant", "content": "B"}, {"role": "user", "content": "c"}]
    assert drop_oldest_turns(h, lambda x: True) == (h, 0)
    assert drop_oldest_turns(h, lambda x: len(x) <= 3) == (h[2:], 1)
    assert drop_oldest_turns(h, lambda x: len(x) <= 1) == (h[4:], 2)
    assert drop_oldest_turns(h, lambda x: False) is None


def test_chat_skips_input_that_is_not_utf8(tiny_llama_dir, monkeypatch, capsys):
    rc, out, err, sent = _chat(monkeypatch, capsys, tiny_llama_dir, b"Hello\n\xff\xfe bad\nBye\n",
                               "--max-new-tokens", "2")
    assert rc == 0 and len(sent) == 2 and "Traceback" not in err
    assert "input line 2 is not valid UTF-8: byte 0xff at column 1 (byte offset 6 of the file" in err
    assert "it was skipped, not sent" in err
    assert "user> Hello\n" in out and "user> Bye\n" in out


# ------------------------------------------------------------ eval


def test_eval_names_the_probe_of_an_overlong_prompt_and_truncates_on_request(tiny_llama_dir, tmp_path, capsys):
    small = _small_context_copy(tiny_llama_dir, tmp_path / "small", positions=24)
    report = tmp_path / "report.json"
    argv = ["eval", str(small), "--probes", "arithmetic", "--n", "2", "--dtype", "fp32", "--device", "cpu",
            "--out", str(report)]
    capsys.readouterr()
    assert main(argv) == 2
    err = _error(capsys.readouterr().err)
    assert err.startswith("posttrain eval: error: probe 'arithmetic': conversation ")
    assert "context is 24 tokens" in err and not report.exists()
    assert main(argv + ["--overlong", "truncate"]) == 0
    assert json.loads(report.read_text())["overlong_prompt"] == "truncate"
    assert "to the last 12 tokens, leaving 12 for the reply" in capsys.readouterr().err


# ------------------------------------------------------------ Ctrl-C during training


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    return write_chats(tmp_path_factory.mktemp("data") / "chats.jsonl")


@pytest.fixture(scope="module")
def full_run(tiny_llama_dir, chats, tmp_path_factory):
    """An uninterrupted 5-step run: what every interrupted and resumed run must reproduce exactly."""
    out = tmp_path_factory.mktemp("full") / "sft"
    assert main(sft_args(tiny_llama_dir, chats, out, "--set", "train.max_steps=5", "--set", "train.save_every=4")) == 0
    return out


def _weights(out):
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def _interrupt_then_resume(argv, out, capsys, step: int):
    """Check the Ctrl-C paragraph and the checkpoint of `step`, then run its resume command to the end."""
    err = capsys.readouterr().err.strip()
    ckpt = out.parent / f"{out.name}.checkpoints" / f"step-{step:06d}"
    assert "Traceback" not in err and "\n" not in err, err
    assert err.startswith(f"posttrain sft: interrupted (Ctrl-C) at step {step} of 5; the weights after step {step} "
                          f"are saved in {ckpt}. To continue from there, run: posttrain sft "), err
    assert json.loads((ckpt / "state.json").read_text())["step"] == step
    command = shlex.split(err.split("To continue from there, run: ")[1])
    assert command[:2] == ["posttrain", "sft"] and "--resume" in command
    assert main(command[1:]) == 0
    assert f"resuming from step {step} of 5 (checkpoint {ckpt})" in capsys.readouterr().err


def test_ctrl_c_checkpoints_the_last_finished_step_and_resume_finishes_the_run(tiny_llama_dir, chats, full_run,
                                                                                tmp_path, monkeypatch, capsys):
    out = tmp_path / "sft"
    argv = sft_args(tiny_llama_dir, chats, out, "--set", "train.max_steps=5", "--set", "train.save_every=4")
    calls = {"n": 0}
    real = torch.optim.AdamW.step

    def dying(self, *a, **k):  # Ctrl-C in the middle of step 4: its gradients are computed, not applied
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying)
    capsys.readouterr()
    assert main(argv) == 130
    monkeypatch.setattr(torch.optim.AdamW, "step", real)
    assert not out.exists()
    _interrupt_then_resume(argv, out, capsys, step=3)  # no checkpoint was due at step 3 (save_every=4)
    full, resumed = _weights(full_run), _weights(out)
    assert all(torch.equal(full[k], resumed[k]) for k in full)  # the same run, bit for bit
    lines = lambda o: [json.loads(x) for x in (o / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [(m["step"], m["loss"], m["tokens"]) for m in lines(out)] == \
           [(m["step"], m["loss"], m["tokens"]) for m in lines(full_run)]


def test_ctrl_c_during_an_update_waits_for_the_update_to_be_recorded(tiny_llama_dir, chats, full_run, tmp_path,
                                                                     monkeypatch, capsys):
    out = tmp_path / "sft"
    argv = sft_args(tiny_llama_dir, chats, out, "--set", "train.max_steps=5", "--set", "train.save_every=4")
    calls = {"n": 0}
    real = torch.optim.AdamW.step

    def signalled(self, *a, **k):  # a real Ctrl-C (SIGINT) arrives while step 2's update is being applied
        result = real(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 2:
            # raise_signal delivers it to this (the main) thread now; os.kill lets the kernel pick any thread of the
            # process, and a late delivery can land in a finalizer, where Python drops the KeyboardInterrupt
            signal.raise_signal(signal.SIGINT)
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", signalled)
    capsys.readouterr()
    # Python's own Ctrl-C handler, as in a terminal: a run started in the background (nohup, `&`) inherits SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert main(argv) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    monkeypatch.setattr(torch.optim.AdamW, "step", real)
    _interrupt_then_resume(argv, out, capsys, step=2)  # step 2 is complete in the checkpoint, not half recorded
    full, resumed = _weights(full_run), _weights(out)
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_ctrl_c_in_a_recipe_says_how_to_continue_it(tiny_llama_dir, chats, tmp_path, monkeypatch, capsys):
    import yaml

    stage = {"name": "sft", "stage": "sft", "model": str(tiny_llama_dir), "data": str(chats),
             "config": {"model": {"dtype": "fp32", "device": "cpu"}, "data": {"max_length": 64},
                        "train": {"max_steps": 4, "save_every": 0, "batch_size": 4}}}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "stages": [stage]}))
    calls = {"n": 0}
    real = torch.optim.AdamW.step

    def dying(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying)
    capsys.readouterr()
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]) == 130
    monkeypatch.setattr(torch.optim.AdamW, "step", real)
    err = _error(capsys.readouterr().err)
    ckpt = tmp_path / "run" / "sft.checkpoints" / "step-000002"  # written by Ctrl-C: no save was due
    assert err.startswith(f"posttrain run: interrupted (Ctrl-C) at step 2 of 4; the weights after step 2 are saved "
                          f"in {ckpt}. To continue, run: posttrain run "), err
    command = shlex.split(err.split("To continue, run: ")[1].split(" (finished stages")[0])
    assert main(command[1:]) == 0
    assert f"resuming from step 2 of 4 (checkpoint {ckpt})" in capsys.readouterr().err
