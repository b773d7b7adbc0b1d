"""Artifact directories: weights, tokenizer, provenance.json, metrics.jsonl.

Artifacts are written atomically: everything goes into a temporary sibling
directory which is renamed into place at the end, so a crash never leaves a
half-written model. The artifact id is a hash of its content and inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from posttrain import __version__

PROVENANCE = "provenance.json"
METRICS = "metrics.jsonl"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_path(path: str | Path) -> str:
    """Hash of a file, or of a directory's files (names and contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def git_commit() -> str | None:
    """HEAD of the git repository posttrain's code lives in, or None (installed package, no git, no commits)."""
    pkg = Path(__file__).resolve().parent
    try:
        top = subprocess.run(["git", "-C", str(pkg), "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=10)
        if top.returncode != 0 or not (Path(top.stdout.strip()) / "posttrain" / "__init__.py").exists():
            return None
        head = subprocess.run(["git", "-C", str(pkg), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() or None if head.returncode == 0 else None


def library_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "tokenizers", "safetensors", "peft", "datasets"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def read_provenance(artifact: str | Path) -> dict | None:
    p = Path(artifact) / PROVENANCE
    return json.loads(p.read_text()) if p.exists() else None


def parent_record(model_path: str | Path) -> dict:
    """How a stage names its parent: the parent's artifact id if it is one, else a content hash."""
    prov = read_provenance(model_path)
    weights = sorted(Path(model_path).glob("*.safetensors"))
    weights_hash = hashlib.sha256("".join(sha256_file(w) for w in weights).encode()).hexdigest()
    return {
        "path": Path(model_path).name,
        "artifact_id": prov.get("artifact_id") if prov else None,
        "weights_sha256": weights_hash,
    }


def data_record(path: str | Path, rows: int | None) -> dict:
    return {"path": Path(path).name, "sha256": sha256_path(path), "rows": rows}


def artifact_id(stage: str, weights_sha: str, inputs: dict) -> str:
    blob = json.dumps({"stage": stage, "weights": weights_sha, "inputs": inputs}, sort_keys=True, default=str)
    return f"{stage}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


@contextlib.contextmanager
def atomic_dir(out: str | Path):
    """Yield a temporary directory that becomes `out` only if the block finishes.

    An existing `out` is replaced (moved aside, then deleted) only after the new one is complete;
    callers decide beforehand whether it may be (posttrain.outputs.check_output). A save killed
    midway leaves `.NAME.tmp-PID-*` (or `.NAME.old-PID`), which the next run cleans up.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{int(time.time() * 1000)}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)


def write_json_atomic(path: str | Path, data) -> Path:
    """Write JSON to a temporary file in the same folder, then rename it over `path`.

    A crash mid-write leaves the old file intact instead of a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_artifact(
    out: str | Path,
    *,
    stage: str,
    model,
    tokenizer,
    config: dict,
    parent: dict | None,
    data: list[dict],
    seeds: dict,
    metrics: dict,
    metrics_lines: list[dict],
    wall_time_s: float,
    extra_files: dict[str, str] | None = None,
    resumes: list[dict] | None = None,
    finalize=None,
    extra: dict | None = None,
) -> dict:
    """Write model + tokenizer + provenance atomically to `out`; return the provenance.

    finalize(tmp, provenance): writes what is derived from the provenance (the lineage ledger, the model card)
    into the temporary directory, so that the artifact appears with them or not at all. extra: more top-level
    provenance keys (a recipe's gate outcomes: "gates").
    """
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        weights_sha = hashlib.sha256("".join(sha256_file(w) for w in sorted(tmp.glob("*.safetensors"))).encode()).hexdigest()
        inputs = {"parent": parent, "data": data, "config": config, "seeds": seeds}
        prov = {
            "artifact_id": artifact_id(stage, weights_sha, inputs),
            "stage": stage,
            "created_unix": int(time.time()),
            "parent": parent,
            "data": data,
            "config": config,
            "seeds": seeds,
            "posttrain_version": __version__,
            "git_commit": git_commit(),
            "libraries": library_versions(),
            "weights_sha256": weights_sha,
            "wall_time_s": round(wall_time_s, 2),
            "metrics": metrics,
            # Each resume: the step it continued from, and every setting it changed (--allow-change) from -> to.
            "resumes": resumes or [],
            **(extra or {}),
        }
        with open(tmp / METRICS, "w") as f:
            for line in metrics_lines:
                f.write(json.dumps(line) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        write_json_atomic(tmp / PROVENANCE, prov)
        if finalize is not None:
            finalize(tmp, prov)
    return prov
