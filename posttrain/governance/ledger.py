"""The audit trail: an append-only JSONL ledger whose entries are chained by hash.

One entry per line:

    {"seq": 3, "time": "2026-11-27T13:48:54Z", "kind": "stage_run", ...facts..., "prev": "<sha256 of entry 2>",
     "sha256": "<sha256 of this entry without its sha256 field>"}

(A fact that is itself a hash is named for what it hashes: a data file's `file_sha256`, a report's
`report_sha256`; `sha256` is always the entry's own.)

Hashes are taken over the canonical JSON of an entry (sorted keys, no spaces, UTF-8), so how a line
is laid out does not matter, what it says does. Changing an entry breaks its own hash; changing and
rehashing it breaks the next entry's `prev`; removing, inserting or reordering entries breaks `seq`
and `prev`. `verify` says which of these happened and where (line and seq). Entries are only ever
appended (append + fsync, under a lock); a write cut off by a crash leaves a partial last line, which
`verify` reports and `append` refuses to build on.

A ledger cannot prove that its last entries were not cut off cleanly: copies can. The run ledger and
every later artifact's lineage ledger hold copies of the facts, and `posttrain audit verify` on an
artifact or a run directory checks that each artifact's own stage run is recorded (docs/governance.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from posttrain.errors import PosttrainError

LEDGER = "ledger.jsonl"
RESERVED = ("seq", "time", "kind", "prev", "sha256")

# kind -> (fields every entry of the kind has, what it records)
KINDS: dict[str, tuple[tuple[str, ...], str]] = {
    "model": (("name", "weights_sha256", "role"),
              "a model that entered the lineage without a ledger of its own (the base; a reference or value model)"),
    "stage_run": (("stage", "artifact_id", "weights_sha256", "parent_id", "config_sha256"),
                  "a training stage that wrote an artifact: its parent, config hash and data"),
    "data": (("file", "file_sha256", "rows", "role"), "a data file a stage read, by content hash"),
    "policy": (("name", "file_sha256", "version"),
               "a written policy the data was made against (hazard policy, constitution, labelling instructions)"),
    "synthetic_data": (("generator", "source"),
                       "generated data: generator, seed, prompt/constitution hashes, filters"),
    "reward_model": (("artifact_id", "weights_sha256"), "a reward model a stage trained against or labelled with"),
    "judge": (("name", "type"), "a judge or verifier: the gold judge, a function, an AI judge (artifact id)"),
    "eval": (("artifact_id", "weights_sha256", "report_sha256", "probes"),
             "a probe-suite report of a model: its hash and every metric with its 95% interval"),
    "red_team": (("artifact_id", "finding"), "a red-team finding about a model"),
    "gate": (("artifact_id", "gate", "passed"), "a release gate's outcome"),
    "release": (("name", "version", "artifact_id", "weights_sha256"), "a named release of an artifact"),
    "update": (("artifact_id", "what"), "a later change to a released model or its deployment configuration"),
}


class LedgerError(PosttrainError):
    """A ledger cannot be read or appended to; the message names the file, the line and the fix."""


def canonical(entry: dict) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def entry_sha256(entry: dict) -> str:
    """The hash an entry carries: of its canonical JSON without the `sha256` field."""
    return hashlib.sha256(canonical({k: v for k, v in entry.items() if k != "sha256"})).hexdigest()


def _clean(value):
    """JSON-ready facts: non-finite floats become null (strict JSON), tuples lists, other objects strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def facts(entry: dict) -> dict:
    """What an entry says, without its place in a chain (seq, time, prev, sha256); `kind` included."""
    return {k: v for k, v in entry.items() if k not in ("seq", "time", "prev", "sha256")}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextmanager
def _locked(f):
    try:
        import fcntl
    except ImportError:  # not POSIX: appends are still whole lines, only not serialised between processes
        yield
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _last_entry(path: Path, data: bytes) -> dict | None:
    if not data:
        return None
    if not data.endswith(b"\n"):
        raise LedgerError(f"{path}: the last line is incomplete (a write was cut off), so nothing can be appended "
                          f"after it. Run `posttrain audit verify {path}`, then restore the ledger from a copy (the "
                          f"run's ledger.jsonl or a later artifact's lineage).")
    line_no = data.count(b"\n")
    last = data.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    try:
        entry = json.loads(last.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        entry = None
    if not isinstance(entry, dict) or not isinstance(entry.get("seq"), int) or "sha256" not in entry:
        raise LedgerError(f"{path}, line {line_no}: is not a ledger entry, so nothing can be appended after it. Run "
                          f"`posttrain audit verify {path}` to see what happened to the file.")
    return entry


def append(path, kind: str, **fields) -> dict:
    """Append one entry of `kind` to the ledger at `path` (created if absent) and return it.

    The line is written whole and fsynced under an exclusive lock; `prev` is the last entry's sha256.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown ledger kind {kind!r}; known: {', '.join(KINDS)}")
    reserved = [k for k in fields if k in RESERVED]
    missing = [k for k in KINDS[kind][0] if k not in fields]
    if reserved or missing:
        raise ValueError(f"ledger entry of kind {kind!r}: reserved fields {reserved}, missing fields {missing}")
    body = json.loads(json.dumps(_clean(fields), allow_nan=False))  # exactly what a reader will parse back
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f, _locked(f):
        f.seek(0)
        last = _last_entry(path, f.read())
        entry = {"seq": last["seq"] + 1 if last else 1, "time": _now(), "kind": kind, **body,
                 "prev": last["sha256"] if last else None}
        entry["sha256"] = entry_sha256(entry)
        f.seek(0, os.SEEK_END)
        f.write(json.dumps(entry, ensure_ascii=False, allow_nan=False).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
    return entry


def append_facts(path, entries: list[dict], skip_known: bool = True) -> list[dict]:
    """Append the facts of `entries` (taken from another ledger) as new entries of this one.

    skip_known: leave out entries whose identity (policies by hash, evals by report hash...) is already here,
    so that recording the same policy or eval twice adds nothing.
    """
    known = {identity(e) for e in read(path)} if skip_known and Path(path).exists() else set()
    written = []
    for e in entries:
        key = identity(e)
        if key is not None and key in known:
            continue
        known.add(key)
        body = facts(e)
        written.append(append(path, body.pop("kind"), **body))
    return written


def identity(entry: dict):
    """What makes two entries record the same thing (None: every entry is an event of its own)."""
    kind = entry.get("kind")
    if kind == "policy":
        return kind, entry.get("file_sha256")
    if kind == "eval":
        return kind, entry.get("report_sha256"), entry.get("weights_sha256")
    if kind == "synthetic_data":
        return kind, entry.get("source"), entry.get("output_sha256")
    if kind == "model":
        return kind, entry.get("weights_sha256"), entry.get("role")
    if kind in ("reward_model", "judge"):  # once per use: which stage or data it served
        return kind, entry.get("name"), entry.get("weights_sha256"), entry.get("role"), entry.get("used_by")
    return None


# ---------------------------------------------------------------- reading and verifying


def _lines(path: Path) -> tuple[list[bytes], bool]:
    """The file's lines, and whether the last one lacks its line end (a cut-off write)."""
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise LedgerError(f"{path} is a directory, not a ledger file.") from None
    partial = bool(raw) and not raw.endswith(b"\n")
    lines = raw.split(b"\n")
    return (lines if partial else lines[:-1]), partial


def _parse(line: bytes) -> dict | None:
    try:
        entry = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    ok = isinstance(entry, dict) and isinstance(entry.get("seq"), int) and isinstance(entry.get("kind"), str) \
        and "prev" in entry and isinstance(entry.get("sha256"), str)
    return entry if ok else None


def read(path, strict: bool = True) -> list[dict]:
    """Every entry of a ledger, in file order. strict: an unreadable line is an error naming it (see `verify`);
    otherwise it is left out (to show or cross-check what can still be read)."""
    path = Path(path)
    lines, partial = _lines(path)
    out = []
    for i, line in enumerate(lines, 1):
        entry = _parse(line)
        if entry is None or (partial and i == len(lines)):
            if not strict:
                continue
            raise LedgerError(f"{path}, line {i}: is not a complete ledger entry. Run `posttrain audit verify {path}` "
                              f"to see what happened to the file.")
        out.append(entry)
    return out


def looks_like_ledger(path) -> bool:
    """Whether the file's first line is a ledger entry (tampering aside): tells a ledger from another file."""
    try:
        with open(path, "rb") as f:
            first = f.readline(1 << 20)
    except OSError:
        return False
    return _parse(first.rstrip(b"\n")) is not None


def _where(line: int, entry: dict) -> str:
    return f"line {line} (seq {entry.get('seq')}, {entry.get('kind')})"


def verify(path) -> list[str]:
    """Problems of the ledger at `path`, one string each naming the line and seq; [] when the chain is intact."""
    path = Path(path)
    lines, partial = _lines(path)
    problems, entries = [], []
    for i, line in enumerate(lines, 1):
        cut = partial and i == len(lines)
        entry = _parse(line)
        if entry is None:
            problems.append(f"line {i}: is an incomplete last entry ({len(line)} bytes, no line end): a write was "
                            f"cut off (a crash or a full disk)" if cut else
                            f"line {i}: is not a ledger entry (not a JSON object with seq, kind, prev and sha256): "
                            f"the file was edited or damaged")
            continue
        if cut:
            problems.append(f"{_where(i, entry)}: has no line end: the write was cut off or the file edited")
        if entry["sha256"] != entry_sha256(entry):
            problems.append(f"{_where(i, entry)}: edited: what it says no longer matches its sha256")
        entries.append((i, entry))
    problems += _chain_problems(entries)
    return problems


def _chain_problems(entries: list[tuple[int, dict]]) -> list[str]:
    problems = []
    by_sha: dict[str, tuple[int, dict]] = {}
    for i, e in entries:
        by_sha.setdefault(e["sha256"], (i, e))
    referenced = {e["prev"] for _, e in entries}
    for k, (i, e) in enumerate(entries):
        first_copy = by_sha[e["sha256"]][0]
        if first_copy != i:
            problems.append(f"{_where(i, e)}: a second copy of line {first_copy}: an entry was duplicated")
            continue
        if k == 0:
            if e["prev"] is not None or e["seq"] != 1:
                problems.append(f"{_where(i, e)}: the first entry should be seq 1 with no prev: entries before it "
                                f"were removed")
            continue
        pi, pe = entries[k - 1]
        if e["prev"] == pe["sha256"]:
            if e["seq"] != pe["seq"] + 1:
                problems.append(f"{_where(i, e)}: follows seq {pe['seq']} (line {pi}) but is numbered {e['seq']}: "
                                f"its seq was changed")
            continue
        if k >= 2 and e["prev"] == entries[k - 2][1]["sha256"] and pe["sha256"] not in referenced:
            problems.append(f"{_where(pi, pe)}: inserted: no entry chains to it, and the entry after it "
                            f"(line {i}) chains to line {entries[k - 2][0]}")
            continue
        if e["prev"] in by_sha:
            j, target = by_sha[e["prev"]]
            problems.append(f"{_where(i, e)}: out of order: it follows seq {target['seq']} (line {j}), not the "
                            f"entry above it (seq {pe['seq']}, line {pi}): entries were reordered")
            continue
        if e["seq"] > pe["seq"] + 1:
            gap = f"seq {pe['seq'] + 1}" + (f" to {e['seq'] - 1}" if e["seq"] - 1 > pe["seq"] + 1 else "")
            problems.append(f"{_where(i, e)}: {gap} missing between line {pi} and line {i}: entries were removed")
            continue
        problems.append(f"{_where(pi, pe)}: edited or replaced: the next entry (line {i}) chains to a different "
                        f"entry {e['prev'][:12]}")
    return problems


def copy_lineage(src, dst) -> int:
    """Start the ledger `dst` as a byte copy of `src` (its chain intact); return the number of entries."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data)
    return data.count(b"\n")
