"""Contamination: how much of each probe set a model's training data already contains.

As GPT-3's contamination study (Brown et al. 2020, appendix C): text is lowercased and split into word
tokens, and a probe row is contaminated when one of its n-grams (13 by default) also occurs in the
training data. Text fields are matched one by one, never across a field's end:

- training rows: every message's content, and `prompt`, `completion`, `chosen`, `rejected`, `text`
  (a string or a list of messages);
- probe rows: every message's content, and the answer (`answer` or `meta.answer`).

Most of the built-in world's probe questions are 5 to 13 words long, so they hold no 13-gram at all. A
probe prompt shorter than n words (and at least MIN_WORDS long) therefore counts as contaminated when it
occurs whole, as a run of words, in the training data: a verbatim copy of the question. A short answer
("Paris") is common text, not evidence, and is left out.

The probe side is small, so its n-grams are hashed into a dict, indexed by their first two words; the
training data is streamed past it, and only a window that starts with such a pair is hashed. The demo's SFT
data and its replay (about 480k words) take about half a second.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.errors import PosttrainError

WORD = re.compile(r"\w+")
N = 13
MIN_WORDS = 5  # a probe prompt shorter than n is matched whole from this many words
THRESHOLD = 0.01  # warn when a probe set has more than this share of contaminated rows
EXAMPLES = 3  # overlapping n-grams shown per probe set
TEXT_FIELDS = ("messages", "prompt", "completion", "chosen", "rejected", "text")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def _contents(value) -> list[str]:
    """The text of a field that is a string or a list of messages (or strings)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [m["content"] if isinstance(m, dict) else m for m in value
                if isinstance(m, str) or (isinstance(m, dict) and isinstance(m.get("content"), str))]
    return []


def training_texts(row: dict) -> list[str]:
    return [t for key in TEXT_FIELDS for t in _contents(row.get(key))]


def probe_texts(row: dict) -> tuple[list[str], list[str]]:
    """(prompts, answers) of a probe row."""
    prompts = [t for key in ("messages", "prompt") for t in _contents(row.get(key))]
    meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
    answer = row.get("answer", meta.get("answer"))
    return prompts, [answer] if isinstance(answer, str) else []


@dataclass
class SetResult:
    rows: int
    contaminated: int = 0
    examples: list[dict] = field(default_factory=list)  # {"row": id, "ngram": text}

    @property
    def share(self) -> float:
        return self.contaminated / self.rows if self.rows else 0.0

    def to_json(self) -> dict:
        return {"rows": self.rows, "contaminated": self.contaminated, "share": round(self.share, 6),
                "examples": self.examples}


@dataclass
class Contamination:
    n: int
    threshold: float
    probes: str  # where the probe sets came from
    training_words: int
    sets: dict[str, SetResult]

    @property
    def flagged(self) -> list[str]:
        return [name for name, r in self.sets.items() if r.share > self.threshold]

    @property
    def max_share(self) -> float:
        return max((r.share for r in self.sets.values()), default=0.0)

    def to_json(self) -> dict:
        return {"n": self.n, "min_words": MIN_WORDS, "threshold": self.threshold, "probes": self.probes,
                "training_words": self.training_words, "max_share": round(self.max_share, 6),
                "flagged": self.flagged, "sets": {k: r.to_json() for k, r in self.sets.items()}}

    def warning(self) -> str | None:
        if not self.flagged:
            return None
        worst = ", ".join(f"{k} {self.sets[k].contaminated}/{self.sets[k].rows} rows "
                          f"({self.sets[k].share:.1%}; e.g. \"{self.sets[k].examples[0]['ngram']}\")" for k in self.flagged)
        return (f"the training data contains text of held-out probe rows ({self.n}-gram overlap, "
                f"more than {self.threshold:.1%} of a set): {worst}. Scores on these probes overstate what the model "
                f"learned; remove those rows from the training data (`posttrain contamination` lists them).")


def check(training_rows, probe_sets: dict[str, list[dict]], n: int = N, threshold: float = THRESHOLD,
          probes: str = "") -> Contamination:
    """Overlap of `training_rows` (dicts, or lists of texts) with every probe set (name -> rows)."""
    # (length, hash of the words) -> [(probe set, row index, text)]
    wanted: dict[tuple[int, int], list[tuple[str, int, str]]] = {}
    # A window can match only where its first words begin a wanted n-gram: the lengths wanted after each
    # lead (its first two words; one word when n is 1) are indexed, so most positions of the training text
    # cost one dict lookup instead of a hash per length.
    lead = 1 if n < 2 else 2
    leads: dict[tuple[str, ...], set[int]] = {}
    for name, rows in probe_sets.items():
        for i, row in enumerate(rows):
            prompts, answers = probe_texts(row)
            for text, whole_ok in [*((t, True) for t in prompts), *((t, False) for t in answers)]:
                w = words(text)
                grams = [w[j:j + n] for j in range(len(w) - n + 1)] if len(w) >= n else \
                    [w] if whole_ok and len(w) >= MIN_WORDS else []
                for g in grams:
                    wanted.setdefault((len(g), hash(tuple(g))), []).append((name, i, " ".join(g)))
                    leads.setdefault(tuple(g[:lead]), set()).add(len(g))
    hit: dict[str, dict[int, str]] = {name: {} for name in probe_sets}
    total = 0
    for row in training_rows:
        for text in row if isinstance(row, list) else training_texts(row):
            w = words(text)
            total += len(w)
            for j, key in enumerate(zip(w, w[1:]) if lead == 2 else zip(w)):
                for k in leads.get(key, ()):
                    found = wanted.get((k, hash(tuple(w[j:j + k])))) if j + k <= len(w) else None
                    if found:
                        for name, i, gram in found:
                            hit[name].setdefault(i, gram)
    sets = {}
    for name, rows in probe_sets.items():
        r = SetResult(len(rows), len(hit[name]))
        r.examples = [{"row": rows[i].get("id", i), "ngram": gram} for i, gram in sorted(hit[name].items())[:EXAMPLES]]
        sets[name] = r
    return Contamination(n, threshold, probes, total, sets)


# ---------------------------------------------------------------- where the probe sets come from


def _world_probe_dir(data_path) -> Path | None:
    """The probes/ folder of the world a data file belongs to (the file's folder or the one above it)."""
    p = Path(data_path)
    for folder in (p.parent, p.parent.parent):
        if (folder / "manifest.json").is_file() and (folder / "probes").is_dir():
            return folder / "probes"
    return None


def read_probe_files(paths) -> dict[str, list[dict]]:
    """Probe sets from files, world directories or probes/ folders: set name (file stem) -> rows."""
    from posttrain.data.formats import read_rows

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            folder = p / "probes" if (p / "probes").is_dir() else p
            found = sorted(folder.glob("*.jsonl"))
            if not found:
                raise PosttrainError(f"--probes {p} holds no probe set (*.jsonl, or a probes/ folder of them). Give a "
                                     f"world directory from `posttrain world build`, its probes/ folder, or .jsonl files.")
            files += found
        else:
            files.append(p)
    return {f.stem: [r.data for r in read_rows(f)] for f in files}


def probe_sets_for(data_path) -> tuple[dict[str, list[dict]], str]:
    """(probe sets, where from): the world next to the data when there is one, else the built-in world's
    (seed 0, what `posttrain eval` measures by default), built in memory."""
    folder = _world_probe_dir(data_path) if data_path else None
    if folder is not None:
        return read_probe_files([folder]), f"{folder.parent.name}/probes"
    from posttrain.world.probes import build_probe_sets

    return build_probe_sets(0), "the built-in world (seed 0)"


def check_files(data_paths, probe_paths=None, n: int = N, threshold: float = THRESHOLD) -> Contamination:
    """Overlap of the training files with the probe sets of `probe_paths` (default: probe_sets_for the first)."""
    from posttrain.data.formats import read_rows

    if probe_paths:
        sets, where = read_probe_files(probe_paths), ", ".join(Path(p).name for p in probe_paths)
    else:
        sets, where = probe_sets_for(data_paths[0])
    rows = (r.data for p in data_paths for r in read_rows(p))
    return check(rows, sets, n=n, threshold=threshold, probes=where)


def stage_check(data_paths, n: int, threshold: float) -> dict | None:
    """What a training stage records (provenance metrics["contamination"]); warns above the threshold.
    n == 0: off. Data that cannot be read as rows (a datasets directory without the package...) is skipped."""
    from posttrain.console import notice

    paths = [p for p in data_paths if p and Path(p).is_file()]
    if n == 0 or not paths:
        return None
    result = check_files(paths, n=n, threshold=threshold)
    warning = result.warning()
    if warning:
        notice(f"contamination: {warning}")
    return {**result.to_json(), "files": [Path(p).name for p in paths]}


def table(result: Contamination) -> str:
    from posttrain.console import table as render

    rows = [[name, r.rows, r.contaminated, f"{r.share:.1%}", "OVER" if name in result.flagged else "ok",
             "; ".join(f"{e['row']}: \"{e['ngram']}\"" for e in r.examples) or "-"]
            for name, r in result.sets.items()]
    return render(rows, ["probe set", "rows", "contaminated", "share", f"> {result.threshold:.1%}", "examples"])


def card_section(prov: dict) -> list[str]:
    """The model card's contamination section, from the stage's provenance."""
    c = (prov.get("metrics") or {}).get("contamination")
    if not isinstance(c, dict) or not isinstance(c.get("sets"), dict):
        return []
    out = ["## Contamination check", "",
           f"{c.get('n')}-gram overlap (lowercased words; a probe prompt shorter than that matched whole) between the "
           f"training data ({', '.join(c.get('files') or [])}; {c.get('training_words')} words) and the probe sets of "
           f"{c.get('probes')}: the share of probe rows whose text the training data contains.", "",
           "| probe set | rows | contaminated | share | example |", "|---|---|---|---|---|"]
    for name, r in c["sets"].items():
        example = "; ".join(f"`{e['ngram']}`" for e in r.get("examples", [])[:1]) or "-"
        out.append(f"| {name} | {r.get('rows')} | {r.get('contaminated')} | {r.get('share', 0):.1%} | {example} |")
    flagged = c.get("flagged") or []
    out += ["", f"Above the {c.get('threshold', THRESHOLD):.1%} threshold: {', '.join(flagged)}: scores on these "
                f"probes overstate what the model learned." if flagged else
            f"No probe set above the {c.get('threshold', THRESHOLD):.1%} threshold."]
    return out
