"""The release registry: named, versioned releases of artifacts in one local SQLite file.

One row per release, keyed by (name, version), never updated or deleted by posttrain:

    name, version, artifact_id, weights_sha256, artifact_path, released_utc,
    gate_outcome ("passed", "failed", "none"), gates (JSON: counts and the failed gates),
    forced, reason, deployment (JSON: system prompt and generation settings), ledger_entry_sha256

The file is `--registry FILE`, else $POSTTRAIN_REGISTRY, else ~/.posttrain/registry.sqlite. It is created
by the first release; reading (lineage) never creates it. The weights hash in every row is what tells two
artifacts released under the same name apart.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing, contextmanager
from pathlib import Path

from posttrain.errors import PosttrainError

ENV = "POSTTRAIN_REGISTRY"
SCHEMA_VERSION = 1
COLUMNS = ("name", "version", "artifact_id", "weights_sha256", "artifact_path", "released_utc", "gate_outcome",
           "gates", "forced", "reason", "deployment", "ledger_entry_sha256")
SCHEMA = """
CREATE TABLE IF NOT EXISTS releases (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    artifact_id TEXT NOT NULL,
    weights_sha256 TEXT NOT NULL,
    artifact_path TEXT NOT NULL,
    released_utc TEXT NOT NULL,
    gate_outcome TEXT NOT NULL,
    gates TEXT NOT NULL,
    forced INTEGER NOT NULL,
    reason TEXT,
    deployment TEXT NOT NULL,
    ledger_entry_sha256 TEXT,
    PRIMARY KEY (name, version)
)"""
FIX = "Give --registry a registry file written by `posttrain release` (or a new path to start one)."


def default_path() -> Path:
    return Path(os.environ.get(ENV) or Path.home() / ".posttrain" / "registry.sqlite").expanduser()


def registry_path(option: str | None) -> Path:
    from posttrain.outputs import resolved

    return resolved(option, "--registry") if option else default_path()


def _check_file(path: Path) -> None:
    if path.exists() and not path.is_file():
        raise PosttrainError(f"--registry {path} is not a regular file (a directory, pipe or device). {FIX}")


def _check_schema(conn, path: Path) -> None:
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as e:
        raise PosttrainError(f"--registry {path} is not a SQLite database ({e}). {FIX}") from None
    if tables and (version != SCHEMA_VERSION or "releases" not in tables):
        raise PosttrainError(f"--registry {path} is a SQLite database, but not a posttrain registry (tables: "
                             f"{', '.join(sorted(tables))}; schema version {version}). {FIX}")


@contextmanager
def reading(path: Path):
    """A read-only connection to an existing registry (an error when there is none)."""
    _check_file(path)
    if not path.is_file():
        raise PosttrainError(f"no release registry at {path}: nothing has been released there. Release an artifact "
                             f"with `posttrain release ARTIFACT --name NAME --version V`, or give --registry (or "
                             f"${ENV}) the registry you released into.")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise PosttrainError(f"--registry {path} cannot be opened ({e}). {FIX}") from None
    with closing(conn):
        _check_schema(conn, path)
        yield conn


@contextmanager
def writing(path: Path):
    """A connection inside one exclusive transaction (committed when the block ends, else rolled back); the
    file and its folder are created when absent."""
    _check_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    except sqlite3.Error as e:
        raise PosttrainError(f"--registry {path} cannot be opened ({e}). {FIX}") from None
    with closing(conn):
        _check_schema(conn, path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def _row(cur, values) -> dict:
    row = dict(zip([d[0] for d in cur.description], values))
    for key in ("gates", "deployment"):
        row[key] = json.loads(row[key]) if row.get(key) else {}
    row["forced"] = bool(row.get("forced"))
    return row


def _empty(conn) -> bool:
    """A registry file that no release has written to yet (an empty file is one)."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'releases'").fetchone() is None


def find(conn, name: str, version: str | None = None) -> dict | None:
    """The release name@version, or the latest release of `name` (None: none)."""
    if _empty(conn):
        return None
    if version is None:
        cur = conn.execute("SELECT * FROM releases WHERE name = ? ORDER BY rowid DESC LIMIT 1", (name,))
    else:
        cur = conn.execute("SELECT * FROM releases WHERE name = ? AND version = ?", (name, version))
    values = cur.fetchone()
    return _row(cur, values) if values else None


def versions(conn, name: str) -> list[dict]:
    if _empty(conn):
        return []
    cur = conn.execute("SELECT * FROM releases WHERE name = ? ORDER BY rowid", (name,))
    return [_row(cur, v) for v in cur.fetchall()]


def names(conn) -> list[str]:
    if _empty(conn):
        return []
    return [r[0] for r in conn.execute("SELECT DISTINCT name FROM releases ORDER BY name")]


def insert(conn, row: dict) -> None:
    values = [json.dumps(row[c], sort_keys=True) if c in ("gates", "deployment") else
              int(row[c]) if c == "forced" else row.get(c) for c in COLUMNS]
    conn.execute(f"INSERT INTO releases ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", values)
