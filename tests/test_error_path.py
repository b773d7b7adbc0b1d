"""One error path: inputs that used to end in a Python traceback (bytes that are not UTF-8, a damaged model
or Parquet file, an unknown device, remote code, a foreign checkpoint) end in one paragraph on stderr
naming the file or option and the fix, exit code 2, nothing written and every input byte-identical.
`--debug` shows the traceback. Also: very long texts are cut before tokenising without changing examples."""

import json
import pathlib
import shutil

import pytest
import torch

from conftest import build_tokenizer
from posttrain.cli import main, one_paragraph
from posttrain.data.formats import cut_long_texts, load_dataset_rows, text_budget
from posttrain.context_window import max_token_chars
from posttrain.data.sft import build_examples
from posttrain.errors import ConfigError, DataError
from test_resume import die_at_step
from test_safety import refused, sft_args, snapshot, write_chats


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory):
    return write_chats(tmp_path_factory.mktemp("data") / "chats.jsonl")


def refused_cleanly(capsys, argv, inputs, out, *fragments) -> str:
    """The CLI refuses with a one-paragraph error holding `fragments`; inputs unchanged, nothing written."""
    before = snapshot(*inputs)
    err = refused(capsys, argv, *fragments)
    assert snapshot(*inputs) == before
    assert not out.exists() and not out.parent.joinpath(f"{out.name}.checkpoints").exists()
    return err


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.fixture
def no_tokenizer_load(monkeypatch):
    """Fail the test if a tokenizer loads: the checks must come first."""
    import transformers

    def refuse(*a, **k):
        raise AssertionError("the tokenizer loaded before the model directory was checked")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)


# ---------------------------------------------------------------- bytes that are not UTF-8


def test_data_jsonl_that_is_not_utf8_names_the_line_and_byte(tiny_llama_dir, chat_file, tmp_path, capsys):
    data = tmp_path / "latin1.jsonl"
    good = chat_file.read_bytes().splitlines(keepends=True)
    bad = json.dumps({"messages": [{"role": "user", "content": "Caf\u00e9?"},
                                   {"role": "assistant", "content": "Yes."}]}).replace("\\u00e9", "\u00e9")
    data.write_bytes(good[0] + good[1] + bad.encode("latin-1") + b"\n" + good[2])
    offset = len(good[0]) + len(good[1]) + bad.encode("latin-1").index(b"\xe9")
    out = tmp_path / "out"
    err = refused_cleanly(capsys, sft_args(tiny_llama_dir, data, out), [data, tiny_llama_dir], out,
                          f"{data}, line 3: is not valid UTF-8: byte 0xe9 at column", f"(byte offset {offset} of the file",
                          "Save the file as UTF-8")
    assert err.count("line 3") == 1 and "Traceback" not in err


def test_data_json_that_is_not_utf8_names_the_line(tmp_path):
    data = tmp_path / "rows.json"
    data.write_bytes(b'[\n {"text": "fine"},\n {"text": "caf\xe9"}\n]\n')
    with pytest.raises(DataError, match=rf"{data}: is not valid UTF-8: byte 0xe9 at line 3, column 15 \(byte offset 35"):
        load_dataset_rows(data)


def test_a_leading_byte_order_mark_is_not_an_error_and_not_counted_as_a_column(tmp_path):
    data = tmp_path / "bom.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + b'{"text": "a"}\n{"text": "b"}\n')
    assert [r.data["text"] for r in load_dataset_rows(data)[1]] == ["a", "b"]
    data.write_bytes(b"\xef\xbb\xbf" + b'{"text": "\xff"}\n')
    with pytest.raises(DataError, match=r"line 1: is not valid UTF-8: byte 0xff at column 11 \(byte offset 13 "):
        load_dataset_rows(data)
    data = tmp_path / "bom.json"
    data.write_bytes(b"\xef\xbb\xbf" + b'[{"text": "\xff"}]')
    with pytest.raises(DataError, match=r"byte 0xff at line 1, column 12 \(byte offset 14 "):
        load_dataset_rows(data)


def test_config_file_and_recipe_that_are_not_utf8(tiny_llama_dir, chat_file, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_bytes(b"train:\n  lr: 1.0e-3  # r\xe9glage\n")
    out = tmp_path / "out"
    err = refused_cleanly(capsys, sft_args(tiny_llama_dir, chat_file, out, "--config", str(config)), [config], out,
                          f"config file '{config}' is not valid UTF-8: byte 0xe9 at line 2, column 18 (byte offset 24")
    assert "Save" in err
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(b"name: r\nstages:\n  - {stage: world, seed: 0}  # \xff\n")
    err = refused_cleanly(capsys, ["run", str(recipe), "--out", str(tmp_path / "run")], [recipe], tmp_path / "run",
                          f"recipe '{recipe}' is not valid UTF-8: byte 0xff at line 3")
    assert str(recipe) in err


def test_undecodable_input_found_anywhere_else_is_one_paragraph():
    err = UnicodeDecodeError("utf-8", b"ab\xffc", 2, 3, "invalid start byte")
    assert one_paragraph(err) == ("the input is not valid UTF-8: byte 0xff at byte offset 2 (invalid start byte). "
                                  "Save it as UTF-8.")
    assert one_paragraph(PermissionError(13, "Permission denied", "/x/data.jsonl")) == "/x/data.jsonl: Permission denied."
    assert one_paragraph(ConfigError("line one\n  line two")) == "line one line two"
    assert one_paragraph(RuntimeError("a bug")) is None  # a bug keeps its traceback


# ---------------------------------------------------------------- config files and options


def test_a_key_given_twice_in_the_config_file(tiny_llama_dir, chat_file, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  lr: 1.0e-3\n  lr: 1.0e-2\n")
    out = tmp_path / "out"
    err = refused_cleanly(capsys, sft_args(tiny_llama_dir, chat_file, out, "--config", str(config)), [config], out,
                          f"config file '{config}', line 3: key 'lr' appears twice (first at line 2)")
    assert err.startswith(f"posttrain sft: error: config file '{config}'") and "Keep one of them" in err


@pytest.mark.parametrize("setting,fragment", [
    ("model.device=gpu3", "model.device: 'gpu3' is not allowed; use `auto`, `cpu`, `cuda` or `cuda:N`."),
    ("train.batch_size=0", "train.batch_size: 0 is out of range; it must be >= 1."),
    ("train.grad_accum=0", "train.grad_accum: 0 is out of range; it must be >= 1."),
    ("train.lr=nan", "train.lr: nan is not allowed; it must be a finite number"),
    ("train.lr=-0.1", "train.lr: -0.1 is out of range"),
])
def test_bad_options_stop_the_stage_before_anything(tiny_llama_dir, chat_file, tmp_path, capsys, setting, fragment,
                                                    no_tokenizer_load):
    out = tmp_path / "out"
    err = refused_cleanly(capsys, sft_args(tiny_llama_dir, chat_file, out, "--set", setting),
                          [chat_file, tiny_llama_dir], out, fragment)
    assert setting.split("=")[0] in err


def test_cuda_on_a_machine_without_it(tiny_llama_dir, chat_file, tmp_path, capsys, monkeypatch, no_tokenizer_load):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    err = refused_cleanly(capsys, sft_args(tiny_llama_dir, chat_file, out, "--set", "model.device=cuda"),
                          [chat_file, tiny_llama_dir], out)
    assert "model.device is 'cuda', but PyTorch sees no CUDA GPU" in err and "use cpu or auto" in err


def test_debug_shows_the_traceback(tiny_llama_dir, chat_file, tmp_path):
    argv = sft_args(tiny_llama_dir, chat_file, tmp_path / "out", "--set", "model.device=gpu3")
    with pytest.raises(ConfigError, match="model.device: 'gpu3' is not allowed"):
        main(argv + ["--debug"])
    with pytest.raises(ConfigError):
        main(["--debug", *argv])


# ---------------------------------------------------------------- model directories


@pytest.mark.parametrize("damage,fragment", [
    ("empty", "is empty. Pass --model with a directory that holds a model"),
    ("no tokenizer", "holds no tokenizer (none of tokenizer.json"),
    ("no config", "has no config.json, so it is not a transformers model directory"),
    ("config not json", "config.json' is not valid JSON ("),
    ("zero-byte weights", "model.safetensors' is 0 bytes long, too short to be a safetensors file"),
    ("truncated weights", "bytes: the file is truncated. Copy the weights again"),
])
def test_a_damaged_model_directory_is_named_before_the_tokenizer_loads(tiny_llama_dir, chat_file, tmp_path, capsys,
                                                                       damage, fragment, no_tokenizer_load):
    model = tmp_path / "model"
    if damage == "empty":
        model.mkdir()
    else:
        copy_model(tiny_llama_dir, model)
    if damage == "no tokenizer":
        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            (model / f).unlink(missing_ok=True)
    elif damage == "no config":
        (model / "config.json").unlink()
    elif damage == "config not json":
        (model / "config.json").write_text('{"model_type": "llama",')
    elif damage == "zero-byte weights":
        (model / "model.safetensors").write_bytes(b"")
    elif damage == "truncated weights":
        raw = (model / "model.safetensors").read_bytes()
        (model / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    out = tmp_path / "out"
    inputs = [chat_file] + ([model] if damage != "empty" else [])
    err = refused_cleanly(capsys, sft_args(model, chat_file, out), inputs, out)
    assert str(model) in err and fragment in err


def test_remote_code_is_refused_naming_posttrains_option(tiny_llama_dir, chat_file, tmp_path, capsys):
    model = copy_model(tiny_llama_dir, tmp_path / "remote")
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="mything", auto_map={"AutoConfig": "mything.Config",
                                                  "AutoModelForCausalLM": "mything.Model"})
    (model / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "remote-code-ran"
    (model / "mything.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    out = tmp_path / "out"
    err = refused_cleanly(capsys, sft_args(model, chat_file, out), [model, chat_file], out,
                          f"'{model}' ships its own model code", "--set model.trust_remote_code=true",
                          "if you trust it")
    assert "trust_remote_code=True" not in err and not marker.exists()


# ---------------------------------------------------------------- data files


def test_a_corrupt_parquet_file(tiny_llama_dir, tmp_path, capsys):
    data = tmp_path / "rows.parquet"
    data.write_bytes(b"PAR1 this is not a parquet file")
    out = tmp_path / "out"
    err = refused_cleanly(capsys, sft_args(tiny_llama_dir, data, out), [data], out)
    assert f"{data}: is not a readable Parquet file (" in err
    assert "Write it again completely, or convert it to .jsonl." in err


def test_very_long_texts_are_cut_before_tokenising_without_changing_the_examples(tmp_path, monkeypatch, capsys):
    tok = build_tokenizer()
    long_reply = "The capital of France is Paris. " * 4000  # 128,000 characters
    rows_data = [{"messages": [{"role": "user", "content": "Tell me."}, {"role": "assistant", "content": long_reply}]},
                 {"messages": [{"role": "user", "content": "x " * 60000}, {"role": "assistant", "content": "Ok."}]},
                 {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}]
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows_data))
    rows = load_dataset_rows(path)[1]
    budget = text_budget(64, max_token_chars(tok))
    assert budget < 60000 < len(long_reply)

    rendered = []
    import posttrain.data.sft as sft_mod

    real = sft_mod.tokenize_chat
    monkeypatch.setattr(sft_mod, "tokenize_chat", lambda t, msgs, **k: rendered.append(msgs) or real(t, msgs, **k))
    for cut_turns in ("drop", "keep"):
        ex, stats = build_examples(tok, rows, "conversational", max_length=64, cut_turns=cut_turns, path=path)
        assert all(len(m["content"]) <= budget for msgs in rendered for m in msgs)  # never rendered whole
        monkeypatch.setattr("posttrain.data.sft.text_budget", lambda *a: 10**9)  # the same without the cut
        rendered.clear()
        ref_ex, ref_stats = build_examples(tok, rows, "conversational", max_length=64, cut_turns=cut_turns, path=path)
        monkeypatch.setattr("posttrain.data.sft.text_budget", text_budget)
        assert [(e.input_ids, e.loss_mask) for e in ex] == [(e.input_ids, e.loss_mask) for e in ref_ex]
        assert stats == ref_stats
        rendered.clear()
    assert "cut 2 text(s) longer than" in capsys.readouterr().err


def test_cut_long_texts_cuts_every_text_field_and_leaves_short_rows_alone():
    row = {"messages": [{"role": "user", "content": "abcdef"}, {"role": "assistant", "content": "xy"}]}
    cut, n = cut_long_texts(row, 4)
    assert n == 1 and cut["messages"][0] == {"role": "user", "content": "abcd"} and cut["messages"][1]["content"] == "xy"
    assert row["messages"][0]["content"] == "abcdef"  # the input row is not changed
    assert cut_long_texts({"prompt": "abcdef", "completion": "abcdefgh"}, 5) == ({"prompt": "abcde", "completion": "abcde"}, 2)
    short = {"text": "abc"}
    assert cut_long_texts(short, 5) == (short, 0) and cut_long_texts(short, 5)[0] is short


# ---------------------------------------------------------------- checkpoints


@pytest.fixture
def interrupted(tiny_llama_dir, chat_file, tmp_path, monkeypatch):
    """A 4-step run killed during step 3: (argv of that run, out, the checkpoint --resume loads)."""
    out = tmp_path / "sft"
    argv = sft_args(tiny_llama_dir, chat_file, out, "--set", "train.max_steps=4", "--set", "train.save_every=2")
    undo = die_at_step(monkeypatch, 3)
    assert main(argv) == 130
    undo()
    ckpt = sorted((tmp_path / "sft.checkpoints").glob("step-*"))[-1]
    assert (ckpt / "optimizer.pt").exists()
    return argv, out, ckpt


class _Touch:
    """A pickle that would create a file when loaded without weights_only: a stand-in for code execution."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_a_checkpoint_with_pickled_code_is_refused_and_never_advises_weights_only_false(interrupted, tmp_path, capsys):
    argv, out, ckpt = interrupted
    marker = tmp_path / "code-ran"
    torch.save({"optimizer": _Touch(str(marker)), "rng": torch.get_rng_state()}, ckpt / "optimizer.pt")
    capsys.readouterr()
    assert main(argv + ["--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("posttrain sft: error: --resume: the checkpoint") and "\n" not in err
    assert f"{ckpt} cannot be loaded safely: it holds a pickled object posttrain does not load" in err
    assert "not a checkpoint posttrain wrote" in err and f"Delete {ckpt}" in err and "--overwrite" in err
    assert "weights_only" not in err and not marker.exists() and not out.exists()


def test_a_damaged_checkpoint_is_one_paragraph(interrupted, capsys):
    argv, out, ckpt = interrupted
    raw = (ckpt / "optimizer.pt").read_bytes()
    (ckpt / "optimizer.pt").write_bytes(raw[: len(raw) // 3])
    err = refused(capsys, argv + ["--resume"], f"--resume: the checkpoint {ckpt} cannot be loaded safely: it is "
                                               f"damaged or was not written by posttrain")
    assert "weights_only" not in err and not out.exists()


def test_output_into_a_closed_pipe_ends_quietly():
    """`posttrain config show sft | head -0`: the reader is gone before the table is written; no traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "posttrain.cli", "config", "show", "sft"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # long before the interpreter has imported posttrain and printed anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err, err
