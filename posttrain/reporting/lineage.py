"""How the stages of a run connect: the pipeline map's nodes and edges, and each eval's parent eval.

- A trained artifact's parent is its provenance's `parent` (matched by artifact id, else by folder
  name); a parent outside the run (the base model) becomes an external node.
- An eval evaluates the model its report names: `@stage`, a path, or a wrapper around a stage such as
  "best-of-4 of @sft by @reward" (the first @ is the model, the others are references).
- Data files link to the world that wrote them (same sha256 in its manifest); options and bon.json
  paths that point into the run directory (e.g. reward.model: runs/demo/reward) are references.
- The parent eval of an eval of model M is an eval of M's parent; for a wrapper (best-of-n of M),
  an eval of M itself: "what did this stage change" is measured against the model it started from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from posttrain.reporting.rundir import Metric, Run, Stage

_REF = re.compile(r"@([^\s/@]+)")
ROLES = ("model", "reference", "data")  # strongest first: one edge per pair keeps the strongest


@dataclass
class Node:
    key: str  # a stage name, or "ext:NAME" for a model outside the run
    label: str
    kind: str
    detail: str  # artifact id, probes count...
    problem: bool = False


@dataclass
class Edge:
    src: str
    dst: str
    role: str  # model, reference or data
    label: str


def _ext(name: str) -> str:
    return f"ext:{name}"


def _in_run(run: Run, value: str) -> tuple[str, bool] | None:
    """(stage name, whether it names a file inside the stage folder) for a path into the run directory."""
    parts, names = Path(value).parts, {s.name for s in run.stages}
    for i in range(len(parts) - 1):
        if parts[i] == run.path.name and parts[i + 1] in names:
            return parts[i + 1], i + 2 < len(parts)
    return None


def eval_target(run: Run, st: Stage) -> tuple[str | None, list[str], bool]:
    """(node key of the evaluated model, other referenced stages, whether the eval is of the model itself)."""
    model = (st.model or "").strip()
    names = {s.name for s in run.stages}
    refs = [r for r in _REF.findall(model) if r in names]
    if refs:
        return refs[0], refs[1:], model == f"@{refs[0]}"
    if not model:
        return None, [], False
    hit = _in_run(run, model)
    if hit and not hit[1]:
        return hit[0], [], True
    return _ext(Path(model).name or model), [], True


def parent_key(run: Run, st: Stage) -> str | None:
    if not st.parent:
        return None
    pid, ppath = st.parent.get("artifact_id"), str(st.parent.get("path") or "")
    for other in run.stages:
        if pid and other.artifact_id == pid:
            return other.name
    for other in run.stages:
        if other.name == Path(ppath).name and other.artifact_id and not pid:
            return other.name
    return _ext(Path(ppath).name or str(pid))


def edges(run: Run) -> list[Edge]:
    found: dict[tuple[str, str], Edge] = {}

    def add(src, dst, role, label):
        if src is None or src == dst:
            return
        old = found.get((src, dst))
        if old is None or ROLES.index(role) < ROLES.index(old.role):
            found[(src, dst)] = Edge(src, dst, role, label if old is None else f"{label}; {old.label}")
        elif label not in old.label:
            old.label += f"; {label}"

    worlds = {sha: s.name for s in run.stages for sha in s.files.values() if isinstance(sha, str)}
    world_files = {Path(f).name: s.name for s in run.stages for f in s.files}
    for st in run.stages:
        if st.kind == "eval":
            model, others, _ = eval_target(run, st)
            add(model, st.name, "model", "evaluated")
            for r in others:
                add(r, st.name, "reference", "used by the eval")
            continue
        add(parent_key(run, st), st.name, "model", f"parent of {st.kind}")
        for d in st.data:
            src = worlds.get(d.get("sha256")) or world_files.get(str(d.get("path")))
            add(src, st.name, "data", f"data: {d.get('path')} ({d.get('role', 'train')})")
        options = [*_flat(st.config).items(), *st.refs.items()]
        for key, value in options:
            hit = _in_run(run, value) if isinstance(value, str) else None
            if hit:
                role = "data" if hit[1] else ("model" if key == "artifact" else "reference")
                add(hit[0], st.name, role, key)
    return list(found.values())


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def nodes(run: Run, links: list[Edge]) -> list[Node]:
    out = []
    external = [e.src for e in links if e.src.startswith("ext:")]
    for key in dict.fromkeys(external):
        ids = {str(s.parent.get("artifact_id")) for s in run.stages if s.parent and parent_key(run, s) == key
               and s.parent.get("artifact_id")}
        out.append(Node(key, key[4:], "external", ", ".join(sorted(ids)) or "model"))
    for st in run.stages:
        detail = st.artifact_id or (f"{len(st.probes)} probes" if st.kind == "eval" else str(st.facts.get("generator", "")))
        out.append(Node(st.name, st.name, st.kind, detail, bool(st.problems)))
    return out


def layout(all_nodes: list[Node], links: list[Edge]) -> dict[str, tuple[int, int]]:
    """(column, row) of each node: the column is the longest chain of edges leading to it."""
    depth = {n.key: 0 for n in all_nodes}
    for _ in range(len(all_nodes)):  # longest path by relaxation; a (damaged) cycle stops after n rounds
        changed = False
        for e in links:
            if e.src in depth and e.dst in depth and depth[e.dst] < depth[e.src] + 1:
                depth[e.dst], changed = depth[e.src] + 1, True
        if not changed:
            break
    order = {n.key: i for i, n in enumerate(all_nodes)}
    pos: dict[str, tuple[int, int]] = {}
    for col in range(max(depth.values(), default=0) + 1):
        keys = [k for k in depth if depth[k] == col]

        def centre(k):  # rows of the nodes feeding it: fewer crossing arrows
            rows = [pos[e.src][1] for e in links if e.dst == k and e.src in pos]
            return (sum(rows) / len(rows) if rows else -1, order[k])

        for row, k in enumerate(sorted(keys, key=centre)):
            pos[k] = (col, row)
    return pos


def parent_evals(run: Run) -> dict[str, str]:
    """eval stage -> the eval it is compared with (see the module docstring); evals without one are absent."""
    evals = [s for s in run.stages if s.kind == "eval"]
    plain: dict[str, list[str]] = {}
    for e in evals:
        model, _, is_plain = eval_target(run, e)
        if model and is_plain:
            plain.setdefault(model, []).append(e.name)
    by_name = {s.name: s for s in run.stages}
    out = {}
    for i, e in enumerate(evals):
        model, _, is_plain = eval_target(run, e)
        if model is None:
            continue
        base = parent_key(run, by_name[model]) if is_plain and model in by_name else (None if is_plain else model)
        cands = [c for c in plain.get(base, []) if c != e.name]
        earlier = [c for c in cands if [x.name for x in evals].index(c) < i]
        if cands:
            out[e.name] = (earlier or cands)[-1]
    return out


def verdict(parent: Metric | None, child: Metric) -> str | None:
    """How `child` compares with `parent`: 'worse' / 'better' beyond the parent's 95% interval (the rule of
    evals.report.regressions), 'beyond' its interval with no known direction, 'within' it, or None."""
    if parent is None or parent.value is None or child.value is None or parent.ci95 is None:
        return None
    lo, hi = parent.ci95
    if lo <= child.value <= hi:
        return "within"
    if parent.higher_is_better is None:
        return "beyond"
    return "better" if (child.value > hi) == parent.higher_is_better else "worse"
