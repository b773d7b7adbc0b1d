"""`posttrain lineage ARTIFACT_OR_NAME[@VERSION]`: the chain from the base model to a model, in words.

For an artifact directory, or a release of the registry (NAME: its latest version; NAME@VERSION), it
checks the audit trail first (the ledger verifies, records the artifact, the weights on disk are the
recorded ones and, for a release, the released ones) and then prints, root first, one block per model:
its stage, artifact id and weights hash, the data it was trained on (with sha256), the written policies
by hash, the contamination check, the gate outcomes, and its releases with their deployment configuration.
Everything comes from the artifact's lineage ledger (and the registry row for a release).
"""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.errors import PosttrainError


def resolve(target: str, registry_option: str | None) -> tuple[Path, dict | None]:
    """(artifact directory, registry row or None) of an artifact path or NAME[@VERSION]."""
    from posttrain.governance import registry as reg
    from posttrain.governance.release import check_artifact

    if Path(target).expanduser().exists():
        return check_artifact(target)[0], None
    name, _, version = target.partition("@")
    path = reg.registry_path(registry_option)
    if not path.is_file():
        raise PosttrainError(f"{target} is neither an artifact directory nor a release: there is no release registry at "
                             f"{path}. Give an artifact directory, or --registry (or ${reg.ENV}) the registry it was "
                             f"released into.")
    with reg.reading(path) as conn:
        row = reg.find(conn, name, version or None)
        if row is None:
            known = reg.versions(conn, name)
            names = reg.names(conn)
    if row is None:
        if known:
            raise PosttrainError(f"{name} has no version {version!r} in {path}; its versions: "
                                 f"{', '.join(r['version'] for r in known)}. Give NAME@VERSION with one of them.")
        raise PosttrainError(f"{target} is neither an artifact directory nor a release name in {path} (released names: "
                             f"{', '.join(names) or 'none'}). Give an artifact directory or NAME[@VERSION].")
    d = Path(row["artifact_path"])
    where = f"{row['name']}@{row['version']} (registry {path})"
    if not (d / "provenance.json").is_file():
        raise PosttrainError(f"{where} points at {d}, which no longer holds the artifact. Restore it there (the "
                             f"released weights are sha256 {row['weights_sha256']}).")
    d, prov, _ = check_artifact(d)
    if prov.get("weights_sha256") != row["weights_sha256"] or prov.get("artifact_id") != row["artifact_id"]:
        raise PosttrainError(f"{where} released {row['artifact_id']} with weights sha256 {row['weights_sha256'][:16]}, "
                             f"but {d} now holds {prov.get('artifact_id')} with weights sha256 "
                             f"{str(prov.get('weights_sha256'))[:16]}: another model was written there since. Restore the "
                             f"released artifact there; the registry row names the weights it must have.")
    return d, row


def _short(sha, n: int = 16) -> str:
    return str(sha or "-")[:n]


def _deployment(dep: dict) -> str:
    parts = [f"system prompt {json.dumps(dep['system_prompt'])}" if dep.get("system_prompt") else "",
             "generation " + ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(dep["generation"].items()))
             if dep.get("generation") else ""]
    return "; ".join(p for p in parts if p) or "defaults (no system prompt or generation settings recorded)"


def _release_line(e: dict) -> str:
    gates = e.get("gates") or {}
    outcome = e.get("gate_outcome") or gates.get("outcome")
    counted = f" ({gates.get('passed')} of {gates.get('total')} passed)" if gates.get("total") else ""
    forced = f"; FORCED: {e.get('reason')}" if e.get("forced") else ""
    return (f"release {e.get('name')}@{e.get('version')} at {e.get('released_utc')}: weights sha256 "
            f"{e.get('weights_sha256')}, gates {outcome}{counted}{forced}\n      deployment: "
            f"{_deployment(e.get('deployment') or {})}")


def describe(d: Path, row: dict | None = None) -> str:
    """The lineage of the (checked) artifact at `d`, root first."""
    from posttrain.artifacts import read_provenance
    from posttrain.governance import ledger
    from posttrain.governance.card import Lineage
    from posttrain.governance.gate_run import latest
    from posttrain.governance.gates import describe as gate_text

    prov = read_provenance(d) or {}
    entries = ledger.read(d / ledger.LEDGER)
    lin = Lineage(prov, entries)
    head = f"lineage of {row['name']}@{row['version']}: " if row else "lineage of "
    lines = [f"{head}{prov.get('artifact_id')} ({d}), weights sha256 {prov.get('weights_sha256')}",
             f"ledger {d / ledger.LEDGER}: {len(entries)} entries, chain intact", ""]
    for i, e in enumerate(lin.chain, 1):
        aid = e.get("artifact_id")
        if e["kind"] == "model":
            lines.append(f"{i}. base model {e.get('name')}" + (f" ({aid}, stage {e.get('stage')})" if aid else "") +
                         f": weights sha256 {_short(e.get('weights_sha256'))}")
        else:
            name = f" (recipe {e.get('recipe')}, stage '{e['name']}')" if e.get("name") else ""
            lines.append(f"{i}. {e.get('stage')}{name}: {aid}, weights sha256 {_short(e.get('weights_sha256'))}, from "
                         f"{e.get('parent_id') or e.get('parent') or '-'}")
        used = [x for x in lin.data() if x.get("used_by") == (aid or e.get("name"))]
        if used:
            lines.append("   data: " + "; ".join(f"{x.get('file')} ({x.get('role')}, {x.get('rows')} rows) sha256 "
                                               f"{x.get('file_sha256')}" for x in used))
        policies = e.get("policies")
        if policies:
            lines.append("   policies: " + ", ".join(f"{k} sha256 {v}" for k, v in policies.items()))
        elif e["kind"] == "stage_run":
            lines.append("   policies: none recorded for its data")
        c = e.get("contamination")
        if c:
            flagged = f", above threshold: {', '.join(c['flagged'])}" if c.get("flagged") else ""
            lines.append(f"   contamination: {c.get('n')}-gram overlap with the probe sets of {c.get('probes')}, "
                         f"at most {c.get('max_share', 0):.1%} of a set{flagged}")
        weights = e.get("weights_sha256")
        for g in latest(entries, aid, weights) if aid else []:
            lines.append(f"   {g.get('stage')}: {gate_text({**g, 'name': g.get('gate')})}")
        for r in [x for x in entries if x["kind"] == "release" and x.get("artifact_id") == aid and aid]:
            lines.append(f"   {_release_line(r)}")
    return "\n".join(lines)
