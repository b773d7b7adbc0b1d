"""Reading a run directory (`posttrain run RECIPE --out DIR`) into plain records for the report.

A stage folder is recognised by what posttrain wrote into it: provenance.json (a trained artifact),
eval_report.json (an eval), manifest.json (a world), bon.json (best-of-n) or
tokenizer_provenance.json. Stages come in the run's order (recipe_state.json), then the rest by
name. RUN_DIR may also be one stage folder. Files are read defensively: anything unreadable or of
an unexpected shape becomes a line in the stage's `problems` (shown on the page and as a notice),
never an exception, so that a damaged run still gets a report that says what is damaged.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.errors import PosttrainError

MARKERS = {"provenance.json": None, "eval_report.json": "eval", "manifest.json": "world", "bon.json": "bon",
           "tokenizer_provenance.json": "tokenizer"}
STATE = "recipe_state.json"
MAX_BYTES = 200 * 2**20  # a stage file larger than this is not read (posttrain writes a few MB at most)
OUTCOME_SKIP = ("id", "prompt_sha256", "response", "response_2")


@dataclass
class Metric:
    probe: str
    name: str
    value: float | None
    ci95: tuple[float, float] | None
    n: int | None
    headline: bool
    higher_is_better: bool | None  # known for headline metrics only


@dataclass
class Probe:
    name: str
    description: str
    metrics: list[Metric]
    samples: list[dict]  # {"id", "prompt_sha256", "response", "response_2", "outcome": {key: scalar}}


@dataclass
class Stage:
    name: str
    kind: str  # the provenance's stage (sft, dpo, ppo...), or eval, world, bon, tokenizer
    path: Path
    artifact_id: str | None = None
    parent: dict | None = None  # provenance: {"path": folder name, "artifact_id": ...}
    data: list[dict] = field(default_factory=list)  # provenance data records: path, sha256, rows, role
    config: dict = field(default_factory=dict)
    facts: dict = field(default_factory=dict)  # a few headline facts for the stage table
    model: str | None = None  # eval: the model as its report names it ("@sft", a path, "best-of-4 of @sft by @reward")
    refs: dict = field(default_factory=dict)  # other inputs named by path (bon.json: artifact, reward)
    probes: dict[str, Probe] = field(default_factory=dict)
    metrics_lines: list[dict] = field(default_factory=list)
    gates: list = field(default_factory=list)
    files: dict = field(default_factory=dict)  # manifest: file name -> sha256
    images: dict[str, Path] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


@dataclass
class Run:
    path: Path
    stages: list[Stage]
    images: dict[str, Path]  # run-level PNGs (the over-optimisation plot)
    prompts: dict[str, str]  # prompt sha256 -> prompt text (from the world's probe sets)
    reads: list[Path]  # every file read: --out must not be one of them


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _ci(v) -> tuple[float, float] | None:
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(_num(x) is not None for x in v):
        return float(v[0]), float(v[1])
    return None


def _int(v) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


class Reader:
    """Reads files, remembering each (for --out checks) and turning failures into problem lines."""

    def __init__(self):
        self.reads: list[Path] = []

    def text(self, path: Path, problems: list[str]) -> str | None:
        self.reads.append(path)
        try:
            if not path.is_file():  # a pipe or device would block or never end
                problems.append(f"{path}: not a regular file, not read")
                return None
            if path.stat().st_size > MAX_BYTES:
                problems.append(f"{path}: larger than {MAX_BYTES // 2**20} MB, not read")
                return None
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            problems.append(f"{path}: not valid UTF-8 (byte offset {e.start}), not read")
        except OSError as e:
            problems.append(f"{path}: cannot be read ({e.strerror or e})")
        return None

    def json(self, path: Path, problems: list[str], want=dict):
        text = self.text(path, problems)
        if text is None:
            return None
        try:
            data = json.loads(text)
        except ValueError as e:
            problems.append(f"{path}: not valid JSON ({e}); the file was left out")
            return None
        if not isinstance(data, want):
            problems.append(f"{path}: expected a JSON {want.__name__}, found {type(data).__name__}; left out")
            return None
        return data

    def jsonl(self, path: Path, problems: list[str]) -> list[dict]:
        text = self.text(path, problems)
        rows, bad = [], 0
        for line in (text or "").splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad += 1
        if bad:
            problems.append(f"{path}: {bad} line(s) are not JSON objects; left out")
        return rows


def _probe(name: str, p, problems: list[str], where: Path) -> Probe | None:
    if not isinstance(p, dict):
        problems.append(f"{where}: probe '{name}' is not a JSON object; left out")
        return None
    metrics = [Metric(name, str(p.get("metric", "value")), _num(p.get("value")), _ci(p.get("ci95")), _int(p.get("n")),
                      True, p.get("higher_is_better") if isinstance(p.get("higher_is_better"), bool) else None)]
    secondary = p.get("secondary") if isinstance(p.get("secondary"), dict) else {}
    for m, e in secondary.items():
        if isinstance(e, dict):
            metrics.append(Metric(name, str(m), _num(e.get("value")), _ci(e.get("ci95")), _int(e.get("n")), False, None))
    samples = []
    for s in p.get("samples") if isinstance(p.get("samples"), list) else []:
        if not isinstance(s, dict):
            continue
        samples.append({
            "id": str(s.get("id", "")), "prompt_sha256": str(s.get("prompt_sha256", "")),
            "response": s["response"] if isinstance(s.get("response"), str) else None,
            "response_2": s["response_2"] if isinstance(s.get("response_2"), str) else None,
            "outcome": {k: v for k, v in s.items() if k not in OUTCOME_SKIP and isinstance(v, (bool, int, float, str))
                        and not (isinstance(v, str) and len(v) > 40)},
        })
    return Probe(name, str(p.get("description", "")), metrics, samples)


def _gates(value, where: Path, problems: list[str]) -> list:
    if value is None:
        return []
    if isinstance(value, dict):  # {name: {...}} is accepted too
        value = [{"name": k, **v} if isinstance(v, dict) else {"name": k, "value": v} for k, v in value.items()]
    if not isinstance(value, list):
        problems.append(f"{where}: 'gates' is not a list; shown as recorded")
        return [value]
    return value


def read_stage(folder: Path, reader: Reader) -> Stage | None:
    """The stage a folder holds, or None when posttrain wrote nothing recognisable there."""
    present = [m for m in MARKERS if (folder / m).is_file()]
    if not present:
        return None
    marker = present[0]
    st = Stage(folder.name, MARKERS[marker] or "artifact", folder)
    doc = reader.json(folder / marker, st.problems)
    doc = doc or {}
    if marker == "provenance.json":
        st.kind = str(doc.get("stage") or "artifact")
        st.artifact_id = str(doc["artifact_id"]) if doc.get("artifact_id") is not None else None
        st.parent = doc.get("parent") if isinstance(doc.get("parent"), dict) else None
        st.data = [d for d in doc.get("data") or [] if isinstance(d, dict)] if isinstance(doc.get("data"), list) else []
        st.config = doc.get("config") if isinstance(doc.get("config"), dict) else {}
        m = doc.get("metrics") if isinstance(doc.get("metrics"), dict) else {}
        st.facts = {"steps": _int(m.get("steps")), "train loss": _num(m.get("train_loss")),
                    "eval loss": _num(m.get("eval_loss")), "wall time (s)": _num(doc.get("wall_time_s")),
                    "created": _when(doc.get("created_unix"))}
        if (folder / "metrics.jsonl").is_file():
            st.metrics_lines = [r for r in reader.jsonl(folder / "metrics.jsonl", st.problems) if _int(r.get("step")) is not None]
    elif marker == "eval_report.json":
        st.model = str(doc.get("model")) if doc.get("model") is not None else None
        probes = doc.get("probes") if isinstance(doc.get("probes"), dict) else {}
        if doc and not isinstance(doc.get("probes"), dict):
            st.problems.append(f"{folder / marker}: 'probes' is not a JSON object; no probe results shown")
        st.probes = {str(k): p for k, v in probes.items() if (p := _probe(str(k), v, st.problems, folder / marker))}
        st.facts = {"model": st.model, "source": doc.get("source"), "n": _int(doc.get("n")),
                    "wall time (s)": _num(doc.get("wall_time_s")), "created": doc.get("created_utc")}
    elif marker == "manifest.json":
        files = doc.get("files") if isinstance(doc.get("files"), dict) else {}
        st.files = {str(k): v.get("sha256") for k, v in files.items() if isinstance(v, dict)}
        st.facts = {"generator": doc.get("generator"), "seed": doc.get("seed"), "files": len(files)}
    elif marker == "bon.json":
        st.refs = {k: doc[k] for k in ("artifact", "reward", "prompts_file") if isinstance(doc.get(k), str)}
        st.facts = {"n": doc.get("n"), "prompts": doc.get("prompts")}
    if marker in ("provenance.json", "eval_report.json"):
        st.gates = _gates(doc.get("gates"), folder / marker, st.problems)
    st.facts = {k: v for k, v in st.facts.items() if v is not None and isinstance(v, (str, int, float, list))}
    st.images = {p.name: p for p in sorted(folder.glob("*.png")) if p.is_file()}
    return st


def _when(unix) -> str | None:
    if _num(unix) is None:
        return None
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(unix))


def _order(run_dir: Path, reader: Reader, problems: list[str]) -> list[str]:
    names: list[str] = []
    if (run_dir / STATE).is_file():
        state = reader.json(run_dir / STATE, problems) or {}
        for key in ("done", "started"):
            if isinstance(state.get(key), dict):
                names += [n for n in state[key] if isinstance(n, str) and n not in names and "/" not in n
                          and n and not n.startswith(".")]
        for n in names:
            if not any((run_dir / n / m).is_file() for m in MARKERS):
                problems.append(f"{run_dir / n}: stage '{n}' of {STATE} holds none of {', '.join(MARKERS)} "
                                f"(it did not finish, or its folder was removed); left out")
    try:
        others = sorted(p.name for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise PosttrainError(f"{run_dir} cannot be listed ({e.strerror or e}). Check its permissions.") from None
    return names + [n for n in others if n not in names]


def prompt_texts(run: Run, reader: Reader) -> dict[str, str]:
    """sha256 of each probe prompt (as eval reports record it) -> its text, from the world's probes/ folders."""
    from posttrain.evals.report import prompt_sha256

    out = {}
    for st in run.stages:
        for f in sorted((st.path / "probes").glob("*.jsonl")) if st.kind == "world" else []:
            for row in reader.jsonl(f, st.problems):
                if isinstance(row.get("messages"), list) and all(isinstance(m, dict) for m in row["messages"]):
                    text = "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in row["messages"])
                elif isinstance(row.get("prompt"), str):
                    text = row["prompt"]
                else:
                    continue
                try:
                    out[prompt_sha256(row)] = text
                except (TypeError, ValueError):
                    continue
    return out


def read_run(run_dir: str | Path) -> Run:
    """Every stage of the run directory `run_dir`; a PosttrainError naming the fix when it is not one."""
    raw = str(run_dir)
    path = Path(run_dir)
    hint = ("Give the directory that `posttrain run RECIPE --out DIR` wrote (e.g. posttrain report runs/demo), "
            "or one stage folder of it.")
    if not path.exists():
        raise PosttrainError(f"RUN_DIR {raw} does not exist. {hint}")
    if not path.is_dir():
        raise PosttrainError(f"RUN_DIR {raw} is a file, not a run directory. {hint}")
    reader, problems = Reader(), []
    single = read_stage(path, reader)
    if single is not None:
        stages = [single]
    else:
        stages = [s for n in _order(path, reader, problems) if (s := read_stage(path / n, reader)) is not None]
    if not stages:
        raise PosttrainError(f"RUN_DIR {raw} holds no posttrain stage: no {STATE} naming a stage folder, and no folder "
                             f"with provenance.json, eval_report.json, manifest.json or bon.json. {hint}")
    if problems:
        stages[0].problems[:0] = problems
    images = {p.name: p for p in sorted(path.glob("*.png")) if p.is_file()} if single is None else {}
    run = Run(path, stages, images, {}, reader.reads)
    run.prompts = prompt_texts(run, reader)
    return run
