"""Where probe rows come from: a world directory, or the built-in world generated in memory.

A world directory (written by `posttrain world build`) holds each probe set as
`probes/<name>.jsonl`, one row {"id", "messages", "meta"} per line. Without one,
the built-in world of seed 0 is generated in memory: the same rows, since the
generator is deterministic.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from posttrain.data.formats import read_rows
from posttrain.errors import DataError, PosttrainError

BUILTIN_SEED = 0


def builtin_facts() -> list:
    from posttrain.world.facts import all_facts

    return all_facts()


def _cloze_prompts(fact):
    from posttrain.world.templates import cloze_prompts

    return cloze_prompts(fact)


def spread(items: list, n: int | None) -> list:
    """`n` items evenly spaced through `items` (all of them when n is None or too large)."""
    if n is None or n >= len(items):
        return list(items)
    if n <= 0:
        return []
    return [items[(i * len(items)) // n] for i in range(n)]


def read_jsonl(path: Path) -> list[dict]:
    """Probe rows of a world's probes/<name>.jsonl, checked for the keys every probe needs."""
    rows = []
    for row in read_rows(path):
        for key in ("id", "meta"):
            if key not in row.data:
                raise DataError(path, row.line, key, "is missing.", "Each probe row needs id, messages (or prompt) and meta.")
        if "messages" not in row.data and "prompt" not in row.data:
            raise DataError(path, row.line, "messages", "is missing.", "Each probe row needs messages (or prompt for raw text).")
        rows.append(row.data)
    return rows


class ProbeSource:
    """Probe rows and facts from `world_dir`, or from the built-in world when it is None."""

    def __init__(self, world_dir: str | Path | None = None):
        self.world_dir = Path(world_dir) if world_dir is not None else None
        if self.world_dir is not None and not (self.world_dir / "probes").is_dir():
            raise PosttrainError(
                f"'{self.world_dir}' has no probes/ folder, so it is not a world directory. "
                "Build one with `posttrain world build --out DIR`, or leave out --data to use the built-in world."
            )
        self._builtin: dict[str, list[dict]] | None = None

    def describe(self) -> str:
        return str(self.world_dir) if self.world_dir is not None else f"builtin:seed={BUILTIN_SEED}"

    def manifest_sha256(self) -> str | None:
        """sha256 of the world directory's manifest.json (which hashes every file in it), if it has one."""
        path = self.world_dir / "manifest.json" if self.world_dir is not None else None
        if path is None or not path.exists():
            return None
        return hashlib.sha256(path.read_bytes()).hexdigest()

    def rows(self, set_name: str, n: int | None = None) -> list[dict]:
        """The first `n` rows of probe set `set_name` (all of them when n is None)."""
        if self.world_dir is not None:
            path = self.world_dir / "probes" / f"{set_name}.jsonl"
            if not path.exists():
                have = sorted(p.stem for p in (self.world_dir / "probes").glob("*.jsonl"))
                raise PosttrainError(
                    f"{path} does not exist; this world has probe sets: {', '.join(have) or 'none'}. "
                    "Rebuild the world with the current `posttrain world build`, or leave out this probe."
                )
            rows = read_jsonl(path)
        else:
            rows = self._builtin_sets().get(set_name)
            if rows is None:
                raise PosttrainError(f"the built-in world has no probe set '{set_name}'.")
        return rows if n is None else rows[:n]

    def _builtin_sets(self) -> dict[str, list[dict]]:
        if self._builtin is None:
            from posttrain.world.probes import build_probe_sets

            self._builtin = build_probe_sets(BUILTIN_SEED)
        return self._builtin

    def facts(self) -> list:
        """The world's facts: `facts.jsonl` of the world directory if it has one, else the built-in facts."""
        path = self.world_dir / "facts.jsonl" if self.world_dir is not None else None
        if path is None or not path.exists():
            return builtin_facts()
        from posttrain.world.facts import Fact

        out = []
        for row in (r.data for r in read_rows(path)):
            row["aliases"] = tuple(row.get("aliases", ()))
            out.append(Fact(**{k: row[k] for k in ("id", "topic", "subject", "relation", "answer", "aliases")}))
        return out

    def copy_rows(self, n: int | None = None) -> list[dict]:
        """Raw-text rows that introduce an invented name or code once, then cue it (world.records)."""
        from posttrain.world.records import copy_probe_rows

        return copy_probe_rows(150 if n is None else n, BUILTIN_SEED)

    def cloze_rows(self, n: int | None = None) -> list[dict]:
        """One raw-text cloze row per fact (its first cloze prefix), evenly spread when n is given."""
        rows = []
        for fact in spread(self.facts(), n):
            prefix, answer = _cloze_prompts(fact)[0]
            rows.append({
                "id": fact.id,
                "prompt": prefix,
                "meta": {"task": "cloze", "answer": answer, "aliases": list(fact.aliases), "fact_id": fact.id},
            })
        return rows
