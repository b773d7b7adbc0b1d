"""What `posttrain audit verify PATH` checks, for a ledger file, an artifact or a run directory.

- a ledger file: its chain (ledger.verify);
- an artifact: its lineage ledger's chain, that the ledger records this artifact's own stage run with the
  weights hash of provenance.json, and that the weights on disk still have that hash;
- a run directory (`posttrain run --out`): the run's ledger and every artifact's lineage as above, and that
  the run's ledger records each artifact's stage run (an entry cut from the end of one ledger is still in
  the other).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.artifacts import parent_record, read_provenance
from posttrain.errors import PosttrainError
from posttrain.governance import ledger
from posttrain.governance.ledger import LEDGER
from posttrain.outputs import resolved

WHAT = "Give a ledger file (ledger.jsonl), an artifact directory or a run directory of `posttrain run`."


@dataclass
class Checked:
    path: Path  # the ledger file
    label: str  # what it is the ledger of
    entries: int = 0
    problems: list[str] = field(default_factory=list)


def _run_state(path: Path) -> bool:
    from posttrain.recipes import STATE

    return (path / STATE).is_file()


def ledgers(path) -> list[tuple[Path, str, Path | None]]:
    """(ledger file, label, artifact directory or None) of everything PATH holds; an error when it holds none."""
    p = Path(path)
    resolved(p, "PATH")  # a symbolic-link loop is named, not a traceback
    if not p.exists():
        raise PosttrainError(f"{path} does not exist. {WHAT}")
    if p.is_file():
        if not ledger.looks_like_ledger(p):
            raise PosttrainError(f"{path} is not a posttrain ledger: its first line is not a ledger entry (a JSON "
                                 f"object with seq, kind, prev and sha256). {WHAT}")
        return [(p, "ledger", None)]
    if not p.is_dir():
        raise PosttrainError(f"{path} is neither a file nor a directory. {WHAT}")
    if _run_state(p):
        if not (p / LEDGER).is_file():
            raise PosttrainError(f"{path} is a run directory without {LEDGER}: it was written before posttrain kept "
                                 f"audit trails, or the ledger was removed. Rerun the recipe into a new --out to get one.")
        found = [(p / LEDGER, "run", None)]
        for d in sorted(q for q in p.iterdir() if q.is_dir() and (q / "provenance.json").is_file()):
            found.append((d / LEDGER, f"artifact {d.name}", d))
        return found
    if (p / "provenance.json").is_file():
        if not (p / LEDGER).is_file():
            raise PosttrainError(f"{path} is an artifact without {LEDGER}: it was written before posttrain kept audit "
                                 f"trails, or the ledger was removed. Retrain it to get one.")
        return [(p / LEDGER, "artifact", p)]
    if (p / LEDGER).is_file():
        return [(p / LEDGER, "ledger", None)]
    raise PosttrainError(f"{path} holds no {LEDGER} and is neither an artifact (provenance.json) nor a run "
                         f"directory. {WHAT}")


def artifact_problems(d: Path, entries: list[dict]) -> list[str]:
    prov = read_provenance(d) or {}
    aid, weights = prov.get("artifact_id"), prov.get("weights_sha256")
    problems = []
    if not any(e["kind"] == "stage_run" and e.get("artifact_id") == aid and e.get("weights_sha256") == weights
               for e in entries):
        problems.append(f"no stage_run entry records this artifact ({aid}, weights sha256 {str(weights)[:16]}): its "
                        f"own entries were removed, or the ledger belongs to another artifact")
    on_disk = parent_record(d)["weights_sha256"]
    if on_disk != weights:
        problems.append(f"the weights on disk (sha256 {on_disk[:16]}) are not the weights provenance.json and the "
                        f"ledger record ({str(weights)[:16]}): the weights were changed after the stage wrote them")
    return problems


def check(path) -> list[Checked]:
    """Every ledger under PATH, checked."""
    out, run_entries, artifacts = [], None, []
    for file, label, artifact in ledgers(path):
        c = Checked(file, label)
        if not file.is_file():
            c.problems.append(f"holds no {LEDGER} (the artifact was written before posttrain kept audit trails, or "
                              f"its ledger was removed)")
            out.append(c)
            continue
        c.problems = ledger.verify(file)
        entries = ledger.read(file, strict=False)
        c.entries = len(entries)
        if artifact is not None:
            c.problems += artifact_problems(artifact, entries)
            artifacts.append(artifact)
        if label == "run":
            run_entries = entries
        out.append(c)
    if run_entries is not None:
        recorded = {e.get("artifact_id") for e in run_entries if e["kind"] == "stage_run"}
        for d in artifacts:
            aid = (read_provenance(d) or {}).get("artifact_id")
            if aid not in recorded:
                out[0].problems.append(f"no stage_run entry for artifact {d.name} ({aid}): the run's entries for it "
                                       f"were removed")
    return out


def describe(e: dict) -> str:
    """The key facts of an entry, on one line (`posttrain audit show`)."""
    k = e["kind"]
    sha = lambda key, n=12: str(e.get(key) or "-")[:n]  # noqa: E731
    if k == "stage_run":
        name = f" ({e['name']})" if e.get("name") else ""
        return (f"{e.get('stage')}{name} -> {e.get('artifact_id')} weights {sha('weights_sha256')} from "
                f"{e.get('parent_id') or e.get('parent') or '-'}; config {sha('config_sha256')}; data {', '.join(e.get('data') or []) or '-'}")
    if k == "model":
        return (f"{e.get('name')} ({e.get('role')}): {e.get('artifact_id') or 'no artifact id'}, stage "
                f"{e.get('stage') or '-'}, weights {sha('weights_sha256')}")
    if k == "data":
        return f"{e.get('file')} ({e.get('role')}, {e.get('rows')} rows) sha256 {sha('file_sha256')} for {e.get('used_by')}"
    if k == "policy":
        return f"{e.get('name')} {e.get('version')} sha256 {sha('file_sha256')}"
    if k == "synthetic_data":
        extra = f"seed {e.get('seed')}" if e.get("seed") is not None else f"labeller {e.get('labeller')}"
        return f"{e.get('source')}: {e.get('generator')}, {extra}, output sha256 {sha('output_sha256')}"
    if k in ("reward_model", "judge"):
        what = e.get("artifact_id") or e.get("name")
        return f"{e.get('type') or e.get('role')} {what} for {e.get('used_by')}"
    if k == "eval":
        probes = e.get("probes") or {}
        shown = ", ".join(f"{p} {v.get('value'):.3f}" if isinstance(v.get("value"), (int, float)) else f"{p} n/a"
                          for p, v in list(probes.items())[:4])
        more = f" (+{len(probes) - 4} more)" if len(probes) > 4 else ""
        return (f"{e.get('name') or e.get('report')}: {e.get('artifact_id') or e.get('model')} weights "
                f"{sha('weights_sha256')} ({e.get('system')}); {shown}{more}; report {sha('report_sha256')}")
    if k == "gate":
        from posttrain.governance.gates import describe as gate_text

        about = f"about {e.get('artifact_id')} ({e.get('system')})"
        return f"{e.get('stage')}: {gate_text({**e, 'name': e.get('gate')})}; {about}"
    if k == "release":
        forced = f", forced: {e.get('reason')}" if e.get("forced") else ""
        return (f"{e.get('name')}@{e.get('version')}: {e.get('artifact_id')} weights {sha('weights_sha256')}; gates "
                f"{e.get('gate_outcome')}{forced}; deployment {json.dumps(e.get('deployment'), sort_keys=True)}")
    rest = {key: v for key, v in ledger.facts(e).items() if key != "kind"}
    return ", ".join(f"{key} {v}" for key, v in rest.items())
