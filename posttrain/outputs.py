"""Where a stage may write. Checked before a model is loaded, so that no run destroys data.

The rules (docs/safety.md):
- `--out` is never `/`, the home directory, the current directory or a parent of it.
- `--out` and its checkpoint folder never are, contain or lie inside an input the stage
  reads (model, data, eval/replay data, config file); `--overwrite` does not change this.
- An existing `--out` (a file, a directory with anything in it, or a finished artifact)
  is replaced only with `--overwrite`; an empty directory counts as absent.
- The nearest existing parent of `--out` is a writable directory with room for the artifact.
- Temporary siblings left by a killed save (`.NAME.tmp-PID-*`, `.NAME.old-PID`) whose
  process is gone are removed at the next start, or restored when they hold the only copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from posttrain.console import notice
from posttrain.errors import OutputError, PosttrainError

# Files that mark a directory as something posttrain wrote completely (written last, atomically).
MARKERS = {"provenance.json": "artifact", "tokenizer_provenance.json": "tokenizer", "manifest.json": "world",
           "eval_report.json": "eval report"}
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)(?:-\d+)?$")


def relation(path: Path, other: Path) -> str | None:
    """How two resolved paths overlap: 'is', 'contains' (other lies under path), 'inside', or None."""
    if path == other:
        return "is"
    if path in other.parents:
        return "contains"
    if other in path.parents:
        return "inside"
    return None


def protected_reason(path: Path) -> str | None:
    """Why replacing `path` would be a disaster regardless of its contents, or None."""
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if path == Path(path.anchor):
        return "the filesystem root"
    if path == cwd or path in cwd.parents:
        return "the current directory" if path == cwd else "a parent of the current directory"
    if path == home or path in home.parents:
        return "the home directory" if path == home else "a parent of the home directory"
    return None


def resolved(path, option: str) -> Path:
    """`path` made absolute, symlinks followed; a symlink loop is an error naming `option` (Python 3.11 and 3.12
    raise RuntimeError for it, which would otherwise end the command with a traceback)."""
    try:
        return Path(path).expanduser().resolve()
    except RuntimeError as e:
        raise PosttrainError(f"{option} {path} is a symbolic link that leads back to itself ({e}), so it names no "
                             f"file or folder. Point it at the path you mean, or remove it.") from None


def refuse_protected(out, option: str = "--out") -> None:
    why = protected_reason(resolved(out, option))
    if why:
        raise OutputError(f"{option} {out} is {why}; replacing it would delete everything in it. "
                          f"Give a new directory for the result, e.g. {option} runs/NAME.")


def describe(path: Path) -> str | None:
    """What posttrain finds at `path`: None when nothing worth keeping is there (absent or empty dir)."""
    if not path.exists() and not path.is_symlink():
        return None
    if not path.is_dir():
        return f"is a file ({path.stat().st_size if path.exists() else 0} bytes)"
    for marker, kind in MARKERS.items():
        if (path / marker).is_file():
            ident = ""
            if marker == "provenance.json":
                try:
                    prov = json.loads((path / marker).read_text())
                    ident = f" {prov.get('artifact_id')}, stage {prov.get('stage')}"
                except (OSError, ValueError):
                    pass
            return f"already holds a finished posttrain {kind}{' (' + ident.strip() + ')' if ident else ''}"
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        return None
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    return f"is a directory that is not a posttrain artifact ({len(entries)} entries: {shown})"


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def check_output(out, *, inputs: dict, overwrite: bool, need_bytes: int | None = None,
                 option: str = "--out", also: dict | None = None) -> Path:
    """Refuse an output path that would destroy data or cannot be written; return it resolved.

    `inputs` maps a label (e.g. '--data') to a path the stage reads; `also` maps a label to
    other paths the stage writes and may delete (its checkpoint folder), checked against inputs.
    """
    raw = str(out)
    refuse_protected(out, option)
    out = Path(out).expanduser().resolve()
    writes = {option: out, **{k: Path(v).expanduser().resolve() for k, v in (also or {}).items()}}
    for label, path in inputs.items():
        if path is None:
            continue
        src = resolved(path, label)
        for wlabel, target in writes.items():
            rel = relation(target, src)
            if rel is None:
                continue
            what = {"is": f"is the {label} path itself", "contains": f"contains {label} {src}",
                    "inside": f"lies inside {label} {src}"}[rel]
            where = f"{option} {raw}" if wlabel == option else f"{wlabel} {target} (written next to {option})"
            raise OutputError(f"{where} {what}: writing there could delete or change an input of this stage. "
                              f"Choose an {option} that neither holds nor lies inside the stage's inputs "
                              f"(--overwrite does not change this).")
    found = describe(out)
    if found and not overwrite:
        raise OutputError(f"{option} {raw} {found}; posttrain never replaces existing data unless asked. "
                          f"Choose another {option}, or pass --overwrite to replace it (its contents are deleted "
                          f"only once the new result is complete).")
    _check_parent(out, raw, option, need_bytes)
    return out


def _check_parent(out: Path, raw: str, option: str, need_bytes: int | None) -> None:
    base = _nearest_existing(out.parent)
    if not base.is_dir():
        raise OutputError(f"{option} {raw} cannot be created: {base} is a file, not a directory. "
                          f"Choose an {option} under a directory.")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {raw} cannot be written: {base} is not writable by this user (or is on a "
                          f"read-only filesystem). Choose an {option} in a writable location.")
    if need_bytes:
        free = shutil.disk_usage(base).free
        if free < need_bytes:
            raise OutputError(f"{option} {raw}: the filesystem of {base} has {_gb(free)} free, but the result needs "
                              f"about {_gb(need_bytes)} (estimated from the model's weights). Free some space or "
                              f"choose an {option} on another disk.")


def model_bytes(model_dir) -> int | None:
    """Size of a model directory's safetensors weights (an estimate of the artifact it becomes)."""
    files = list(Path(model_dir).glob("*.safetensors"))
    return sum(f.stat().st_size for f in files) if files else None


# ---------------------------------------------------------------- stale temporaries


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def stale_temporaries(folder: Path, name_glob: str = "*") -> list[tuple[Path, str, str]]:
    """(path, target name, 'tmp' or 'old') of atomic-write leftovers in `folder` whose process is gone."""
    if not folder.is_dir():
        return []
    found = []
    for p in sorted(folder.glob(f".{name_glob}.*-*")):
        m = _TEMP.match(p.name)
        if m and Path(m["name"]).match(name_glob) and not _pid_alive(int(m["pid"])):
            found.append((p, m["name"], m["kind"]))
    return found


def clean_stale_temporaries(folder, name_glob: str = "*") -> list[str]:
    """Remove leftovers of killed saves in `folder` (restore a moved-aside target that has no replacement).

    Returns what was done, one line each, and prints it.
    """
    done = []
    for path, name, kind in stale_temporaries(Path(folder), name_glob):
        target = path.parent / name
        if kind == "old" and not target.exists():
            os.replace(path, target)  # killed between moving the old target aside and moving the new one in
            msg = f"restored {target} from {path.name}, left by a save that was killed (process gone)"
        else:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            msg = f"removed {path}, a temporary copy left by a save that was killed (process gone)"
        notice(msg)
        done.append(msg)
    return done
