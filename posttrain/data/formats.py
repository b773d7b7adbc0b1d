"""Reading data files and checking each row against a known format.

Formats (detected per file from the first row's keys, or named):
- conversational: {"messages": [{"role": ..., "content": ...}, ...]}
- prompt_completion: {"prompt": str, "completion": str}
- preference: {"prompt": str | messages, "chosen": str | messages, "rejected": str | messages}
- prompt_only: {"prompt": str | messages, "answer"?: str, "verifier"?: str}
- text: {"text": str} (pretraining)

Files: .jsonl, .json (a list of rows), .parquet, or a `datasets` saved directory, in UTF-8.
A malformed row raises DataError naming the file, the line (1-based) and the field; bytes that
are not UTF-8 are named by line, column and byte offset.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from posttrain.data.chat import ROLES
from posttrain.errors import DataError, bad_utf8

FORMATS = ("conversational", "prompt_completion", "preference", "prompt_only", "text")


@dataclass
class Row:
    line: int  # 1-based line (or row) number in the file
    data: dict


def read_rows(path: str | Path) -> list[Row]:
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, None, "does not exist.", "Pass --data with a local .jsonl/.json/.parquet file or a datasets directory.")
    if path.is_dir():
        rows = _read_datasets_dir(path)
    elif not path.is_file():  # a FIFO or a device: opening it could wait forever for a writer
        raise DataError(path, None, None, "is not a regular file or a directory (a pipe, socket or device).",
                        "Save the data to a .jsonl/.json/.parquet file and pass that file.")
    elif path.suffix == ".jsonl":
        rows = _read_jsonl(path)
    elif path.suffix == ".json":
        rows = _read_json(path)
    elif path.suffix == ".parquet":
        rows = _read_parquet(path)
    else:
        raise DataError(path, None, None, f"has an unknown extension '{path.suffix}'.", "Use .jsonl, .json, .parquet or a datasets directory.")
    if not rows:
        raise DataError(path, None, None, "holds no rows.", "Give a file with at least one example.")
    return rows


NOT_UTF8_FIX = "Save the file as UTF-8 (for example: iconv -f latin1 -t utf-8 IN > OUT)."
BOM = b"\xef\xbb\xbf"


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    offset = 0
    with open(path, "rb") as f:  # bytes, so that a bad byte is reported with its line
        for i, raw in enumerate(f, 1):
            start = len(BOM) if i == 1 and raw.startswith(BOM) else 0  # a leading byte-order mark is not data
            try:
                line = raw[start:].decode("utf-8")
            except UnicodeDecodeError as e:
                problem = bad_utf8(raw[start:], e, i, offset + start, name_line=False)
                raise DataError(path, i, None, problem + ".", NOT_UTF8_FIX) from None
            offset += len(raw)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, i, None, f"is not valid JSON ({e.msg} at column {e.colno}).", "Each line must be one JSON object.") from None
            if not isinstance(obj, dict):
                raise DataError(path, i, None, "is not a JSON object.", "Each line must be one JSON object.")
            rows.append(Row(i, obj))
    return rows


def _read_json(path: Path) -> list[Row]:
    raw = path.read_bytes()
    start = len(BOM) if raw.startswith(BOM) else 0
    try:
        text = raw[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(path, None, None, bad_utf8(raw[start:], e, offset=start) + ".", NOT_UTF8_FIX) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, None, f"is not valid JSON ({e.msg}).") from None
    if isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), list):
        obj = next(iter(obj.values()))
    if not isinstance(obj, list):
        raise DataError(path, None, None, "must hold a JSON list of rows.")
    for i, r in enumerate(obj, 1):
        if not isinstance(r, dict):
            raise DataError(path, i, None, "is not a JSON object (row numbers count list items).")
    return [Row(i, r) for i, r in enumerate(obj, 1)]


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as e:
        why = re.sub(r"^Could not open Parquet input source '[^']*':\s*", "", str(e)).split(". ")[0].rstrip(". ")
        raise DataError(path, None, None, f"is not a readable Parquet file ({why}).",
                        "Write it again completely, or convert it to .jsonl.") from None
    return [Row(i + 1, r) for i, r in enumerate(table.to_pylist())]


def _read_datasets_dir(path: Path) -> list[Row]:
    try:
        from datasets import load_from_disk
    except ImportError:  # pragma: no cover
        raise DataError(path, None, None, "is a directory, and reading it needs the `datasets` package.") from None
    try:
        ds = load_from_disk(str(path))
    except Exception as e:  # datasets raises several types
        raise DataError(path, None, None, f"is not a datasets saved directory ({e}).") from None
    if hasattr(ds, "keys"):  # DatasetDict: take train
        if "train" not in ds:
            raise DataError(path, None, None, f"is a DatasetDict without a 'train' split (has {list(ds.keys())}).")
        ds = ds["train"]
    return [Row(i + 1, r) for i, r in enumerate(ds)]


def detect_format(row: dict) -> str | None:
    keys = set(row)
    if "messages" in keys:
        return "conversational"
    if {"prompt", "chosen", "rejected"} <= keys:
        return "preference"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if "prompt" in keys:
        return "prompt_only"
    if "text" in keys:
        return "text"
    return None


def check_messages(path, line, field, msgs, need_assistant: bool) -> None:
    if not isinstance(msgs, list) or not msgs:
        raise DataError(path, line, field, "must be a non-empty list of {\"role\", \"content\"} objects.")
    for j, m in enumerate(msgs):
        where = f"{field}[{j}]"
        if not isinstance(m, dict):
            raise DataError(path, line, where, "must be an object with 'role' and 'content'.")
        if m.get("role") not in ROLES:
            raise DataError(path, line, f"{where}.role", f"is {m.get('role')!r}; allowed roles: {', '.join(ROLES)}.")
        if not isinstance(m.get("content"), str):
            raise DataError(path, line, f"{where}.content", "must be a string.")
    if need_assistant and not any(m["role"] == "assistant" for m in msgs):
        raise DataError(path, line, field, "has no assistant turn, so there is nothing to learn from.", "Add an assistant message.")


def _check_text_or_messages(path, line, field, value) -> None:
    if isinstance(value, str):
        return
    check_messages(path, line, field, value, need_assistant=False)


def validate_row(path, row: Row, fmt: str) -> None:
    d, line = row.data, row.line
    need = {
        "conversational": ["messages"],
        "prompt_completion": ["prompt", "completion"],
        "preference": ["prompt", "chosen", "rejected"],
        "prompt_only": ["prompt"],
        "text": ["text"],
    }[fmt]
    for k in need:
        if k not in d:
            raise DataError(path, line, k, f"is missing (this file is in the {fmt} format).", f"Every row needs: {', '.join(need)}.")
    if fmt == "conversational":
        check_messages(path, line, "messages", d["messages"], need_assistant=True)
    elif fmt == "prompt_completion":
        for k in ("prompt", "completion"):
            if not isinstance(d[k], str):
                raise DataError(path, line, k, "must be a string.")
    elif fmt == "preference":
        for k in ("prompt", "chosen", "rejected"):
            _check_text_or_messages(path, line, k, d[k])
    elif fmt == "prompt_only":
        _check_text_or_messages(path, line, "prompt", d["prompt"])
    elif fmt == "text":
        if not isinstance(d["text"], str):
            raise DataError(path, line, "text", "must be a string.")


def load_dataset_rows(path: str | Path, fmt: str = "auto", allowed: tuple[str, ...] = FORMATS) -> tuple[str, list[Row]]:
    """Read and validate every row; return (format, rows)."""
    rows = read_rows(path)
    if fmt == "auto":
        fmt = detect_format(rows[0].data)
        if fmt is None:
            raise DataError(path, rows[0].line, None, f"has keys {sorted(rows[0].data)} that match no known format.", f"Known formats: {', '.join(FORMATS)} (see docs/data.md).")
    if fmt not in allowed:
        raise DataError(path, None, None, f"is in the {fmt} format, but this stage takes {', '.join(allowed)}.")
    for r in rows:
        validate_row(path, r, fmt)
    return fmt, rows


# ---------------------------------------------------------------- very long texts

TEXT_BUDGET_SLACK = 4096  # characters past the bound, so the cut never falls near the last kept token


def text_budget(max_length: int, longest_token_chars: int) -> int:
    """Characters of one text worth tokenising when an example keeps at most `max_length` tokens.

    No token spans more characters than the longest token of the vocabulary, so the first `max_length`
    tokens of a text lie within its first max_length * longest_token_chars characters: cutting a text
    beyond that (plus slack) changes nothing that is kept, but a 20 MB message no longer takes
    gigabytes to render and tokenise.
    """
    return max_length * max(1, longest_token_chars) + TEXT_BUDGET_SLACK


def cut_long_texts(data: dict, budget: int) -> tuple[dict, int]:
    """(the row with every text cut to `budget` characters, how many texts were cut).

    Texts are each message's content and the prompt, completion, chosen, rejected or text strings.
    The row itself is returned when nothing is cut.
    """
    out, n = dict(data), 0
    for key, value in data.items():
        if isinstance(value, str) and key in ("prompt", "completion", "chosen", "rejected", "text") and len(value) > budget:
            out[key], n = value[:budget], n + 1
        elif isinstance(value, list) and key in ("messages", "prompt", "chosen", "rejected"):
            msgs = []
            for m in value:
                if isinstance(m, dict) and isinstance(m.get("content"), str) and len(m["content"]) > budget:
                    m, n = {**m, "content": m["content"][:budget]}, n + 1
                msgs.append(m)
            out[key] = msgs
    return (out, n) if n else (data, 0)
