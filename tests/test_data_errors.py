"""Data files: every malformed input is a DataError naming the file, the line and the field;
every supported file type reads to the same rows; over-length examples are counted."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import build_tokenizer
from posttrain.data.formats import detect_format, load_dataset_rows, read_rows
from posttrain.data.sft import build_examples, cuts_a_turn
from posttrain.errors import DataError

CHAT = {"messages": [{"role": "user", "content": "What is the capital of France?"},
                     {"role": "assistant", "content": "The capital of France is Paris."}]}
ROWS = [
    {"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]}
    for i in range(5)
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


# ---------------------------------------------------------------- malformed files


def test_malformed_json_names_the_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "chats.jsonl", [CHAT, CHAT, '{"messages": [', CHAT])
    with pytest.raises(DataError) as e:
        load_dataset_rows(path)
    msg = str(e.value)
    assert "chats.jsonl" in msg and "line 3" in msg and "not valid JSON" in msg
    assert e.value.line == 3


def test_blank_lines_keep_the_file_line_numbers(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text(json.dumps(CHAT) + "\n\n" + json.dumps({"messages": "oops"}) + "\n")
    with pytest.raises(DataError, match=r"gaps\.jsonl, line 3: field 'messages'"):
        load_dataset_rows(path)


def test_row_missing_messages_names_the_field(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [CHAT, {"conversation": []}])
    with pytest.raises(DataError) as e:
        load_dataset_rows(path, fmt="conversational")
    assert e.value.line == 2 and e.value.field == "messages"
    assert "c.jsonl, line 2: field 'messages' is missing" in str(e.value)


def test_bad_role_names_the_message_and_lists_allowed_roles(tmp_path):
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}]}
    path = write_jsonl(tmp_path / "c.jsonl", [bad])
    with pytest.raises(DataError) as e:
        load_dataset_rows(path)
    msg = str(e.value)
    assert "line 1" in msg and "messages[1].role" in msg and "'bot'" in msg
    assert "allowed roles: system, user, assistant, tool" in msg


def test_non_string_content_names_the_field(tmp_path):
    bad = {"messages": [{"role": "user", "content": ["a", "list"]}, {"role": "assistant", "content": "x"}]}
    path = write_jsonl(tmp_path / "c.jsonl", [CHAT, bad])
    with pytest.raises(DataError) as e:
        load_dataset_rows(path)
    assert e.value.field == "messages[0].content" and e.value.line == 2
    assert "must be a string" in str(e.value)


def test_conversation_without_assistant_turn(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(DataError, match=r"line 1: field 'messages' has no assistant turn.*Add an assistant message"):
        load_dataset_rows(path)


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: holds no rows"):
        read_rows(path)


def test_unknown_extension(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"data\.csv: has an unknown extension '\.csv'.*\.jsonl, \.json, \.parquet"):
        read_rows(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: does not exist"):
        read_rows(tmp_path / "nope.jsonl")


def test_preference_row_missing_rejected(tmp_path):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "prefs.jsonl", [good, {"prompt": "p", "chosen": "a"}])
    with pytest.raises(DataError) as e:
        load_dataset_rows(path)
    assert e.value.field == "rejected" and e.value.line == 2
    assert "preference format" in str(e.value) and "prompt, chosen, rejected" in str(e.value)


def test_stage_rejects_a_format_it_cannot_use(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "hello"}])
    with pytest.raises(DataError, match="text format, but this stage takes conversational, prompt_completion"):
        load_dataset_rows(path, allowed=("conversational", "prompt_completion"))


# ---------------------------------------------------------------- file types


def test_every_file_type_reads_the_same_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    jsonl = write_jsonl(tmp_path / "d.jsonl", ROWS)
    js = tmp_path / "d.json"
    js.write_text(json.dumps(ROWS))
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), parquet)
    ds_dir = tmp_path / "d_dataset"
    Dataset.from_list(ROWS).save_to_disk(str(ds_dir))

    results = {p.name: load_dataset_rows(p) for p in (jsonl, js, parquet, ds_dir)}
    for name, (fmt, rows) in results.items():
        assert fmt == "conversational", name
        assert [r.data for r in rows] == ROWS, name
        assert [r.line for r in rows] == [1, 2, 3, 4, 5], name


def test_json_object_wrapping_one_list_is_read(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"data": ROWS}))
    assert [r.data for r in read_rows(path)] == ROWS


def test_detect_format():
    assert detect_format(CHAT) == "conversational"
    assert detect_format({"prompt": "p", "completion": "c"}) == "prompt_completion"
    assert detect_format({"prompt": "p", "chosen": "a", "rejected": "b"}) == "preference"
    assert detect_format({"prompt": "p", "answer": "4"}) == "prompt_only"
    assert detect_format({"text": "t"}) == "text"
    assert detect_format({"question": "q"}) is None


def test_unknown_keys_list_the_known_formats(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "q", "reply": "r"}])
    with pytest.raises(DataError, match=r"q\.jsonl, line 1: has keys \['question', 'reply'\] that match no known format"):
        load_dataset_rows(path)


# ---------------------------------------------------------------- over-length


def _rows(tmp_path, tok):
    long = {"messages": [{"role": "user", "content": "Tell me a story."},
                         {"role": "assistant", "content": "Once upon a time there was a capital. " * 20}]}
    short = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    path = write_jsonl(tmp_path / "mix.jsonl", [short, long, short, long, long])
    return path, load_dataset_rows(path)[1]


def test_overlength_truncate_keeps_and_counts(tmp_path, tok, caplog):
    path, rows = _rows(tmp_path, tok)
    ex, stats = build_examples(tok, rows, "conversational", max_length=48, overlength="truncate",
                               cut_turns="keep", path=path)
    assert (stats.rows, stats.examples, stats.truncated, stats.dropped, stats.cut_turns) == (5, 5, 3, 0, 3)
    assert max(len(e.input_ids) for e in ex) == 48
    assert "kept 3 truncated examples whose trained turn lost its end-of-turn token" in caplog.text
    assert stats.tokens == sum(len(e.input_ids) for e in ex)
    assert stats.target_tokens == sum(sum(e.loss_mask) for e in ex)


def test_truncation_that_cuts_a_reply_before_its_end_of_turn_drops_it_by_default(tmp_path, tok):
    path, rows = _rows(tmp_path, tok)
    ex, stats = build_examples(tok, rows, "conversational", max_length=48, overlength="truncate", path=path)
    assert (stats.rows, stats.examples, stats.truncated, stats.dropped, stats.cut_turns) == (5, 2, 0, 0, 3)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    for e in ex:  # every kept reply ends, and its end carries loss
        assert any(t == im_end and m for t, m in zip(e.input_ids, e.loss_mask))


def test_truncation_after_complete_replies_keeps_the_example(tmp_path, tok):
    # A long user turn after a complete exchange: the cut falls in the user turn, nothing trained is cut.
    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                         {"role": "user", "content": "Tell me a story. " * 30},
                         {"role": "assistant", "content": "No."}]}
    path = write_jsonl(tmp_path / "late.jsonl", [chat])
    ex, stats = build_examples(tok, load_dataset_rows(path)[1], "conversational", max_length=32, path=path)
    assert (stats.examples, stats.truncated, stats.cut_turns) == (1, 1, 0)
    assert tok.convert_tokens_to_ids("<|im_end|>") in [t for t, m in zip(ex[0].input_ids, ex[0].loss_mask) if m]


def test_cuts_a_turn_looks_at_the_run_of_loss_across_the_cut():
    end = {9}
    ids, mask = [1, 2, 3, 4, 9, 5, 6], [0, 0, 1, 1, 1, 1, 0]  # reply 3 4 <end> then a trailing newline 5
    assert cuts_a_turn(ids, mask, 3, end) and cuts_a_turn(ids, mask, 4, end)  # the reply loses its end
    assert not cuts_a_turn(ids, mask, 5, end)  # cut after the end token, before the trailing newline
    assert not cuts_a_turn(ids, mask, 2, end)  # cut before the reply: nothing of it kept
    assert not cuts_a_turn(ids, mask, 7, end)  # nothing cut
    assert not cuts_a_turn([1, 2, 3, 4], [0, 1, 1, 1], 2, end)  # a run without an end token (e.g. text)


def test_overlength_drop_removes_and_counts(tmp_path, tok):
    path, rows = _rows(tmp_path, tok)
    ex, stats = build_examples(tok, rows, "conversational", max_length=48, overlength="drop", path=path)
    assert (stats.rows, stats.examples, stats.truncated, stats.dropped) == (5, 2, 0, 3)
    assert all(len(e.input_ids) <= 48 for e in ex)


def test_all_rows_dropped_is_an_error_with_a_fix(tmp_path, tok):
    path, rows = _rows(tmp_path, tok)
    with pytest.raises(DataError) as e:
        build_examples(tok, rows, "conversational", max_length=4, overlength="drop", path=path)
    msg = str(e.value)
    assert "mix.jsonl" in msg and "left no usable examples (5 dropped as over-length" in msg
    assert "Raise data.max_length" in msg


# ---------------------------------------------------------------- CLI contract


def test_cli_reports_bad_data_in_one_paragraph_and_writes_nothing(tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "broken.jsonl", [CHAT, CHAT, "{not json", CHAT])
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "posttrain.cli", "sft", "--model", str(tiny_llama_dir), "--data", str(data),
         "--out", str(out), "--set", "model.dtype=fp32", "--set", "train.max_steps=1", "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("posttrain sft: error: ") and "broken.jsonl" in err and "line 3" in err
    assert "\n" not in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "out.checkpoints").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
