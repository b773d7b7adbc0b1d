"""Reading data files and checking each row against a known format.

Formats (detected per file from the first row's keys, or named):
- conversational: {"messages": [{"role": ..., "content": ...}, ...]}
- prompt_completion: {"prompt": str, "completion": str}
- preference: {"prompt": str | messages, "chosen": str | messages, "rejected": str | messages}
- prompt_only: {"prompt": str | messages, "answer"?: str, "verifier"?: str}
- text: {"text": str} (pretraining)

Files: .jsonl, .json (a list of rows), .parquet, or a `datasets` saved directory.
A malformed row raises DataError naming the file, the line (1-based) and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from posttrain.data.chat import ROLES
from posttrain.errors import DataError

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
    elif path.suffix == ".jsonl":
        rows = _read_jsonl(path)
    elif path.suffix == ".json":
        rows = _read_json(path)
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = [Row(i + 1, r) for i, r in enumerate(pq.read_table(path).to_pylist())]
    else:
        raise DataError(path, None, None, f"has an unknown extension '{path.suffix}'.", "Use .jsonl, .json, .parquet or a datasets directory.")
    if not rows:
        raise DataError(path, None, None, "holds no rows.", "Give a file with at least one example.")
    return rows


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
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
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
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


def _check_messages(path, line, field, msgs, need_assistant: bool) -> None:
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
    _check_messages(path, line, field, value, need_assistant=False)


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
        _check_messages(path, line, "messages", d["messages"], need_assistant=True)
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
