"""Write the whole built-in world to a directory, with data cards and a manifest.

Layout of OUT:
  corpus.jsonl          {"text": doc}                      pretraining corpus
  replay.jsonl          {"text": doc}                      corpus documents that state no facts-B fact (SFT replay)
  facts.jsonl           fact fields + "split": "A" | "B"
  sft.jsonl, sft_eval.jsonl, preferences.jsonl, rm_pairs.jsonl, prompts.jsonl, rlvr.jsonl,
  rlvr_tools.jsonl      post-training sets
  probes/<name>.jsonl   held-out probe sets
  policy/hazard_policy.md, policy/constitution.md
  cards/<set>.json      data card per set (rows, sha256, version, seed, scale, description)
  manifest.json         every file above with sha256 and row count

Same seed and scale -> byte-identical files (no timestamps, fixed key order).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from posttrain.config import opt
from posttrain.world.chats import build_rlvr, build_rlvr_tools, build_sft
from posttrain.world.corpus import build_corpus_documents
from posttrain.world.facts import all_facts, split_facts
from posttrain.world.policies import CONSTITUTION, HAZARD_POLICY
from posttrain.world.preferences import build_preferences, build_prompts, build_rm_pairs
from posttrain.world.probes import build_probe_sets

WORLD_VERSION = "world-2.6"  # 2.1: tool and think SFT rows, think RLVR rows, rlvr_tools, three probes; 2.2: records;
# 2.3: 18 train phrasings of an arithmetic question and 11 of the think format (were 6 and 3); corpus unchanged;
# 2.4: SFT calculator calls write the expression after a space (chats.CALL_LEAD); rlvr.jsonl holds refusal rows
# 2.5: two-sentence training requests: five hazard framings, one phrasing per look-alike (hazards.py); corpus unchanged
# 2.6: one held-out hazard framing reworded, so no harmful probe shares a 13-gram with training data; all else unchanged
# Record documents in the corpus at scale 1 (records.py). The SFT replay leaves them out (in one pair of runs,
# replaying them gave lower tool arithmetic; README).
RECORDS = 20000

DESCRIPTIONS = {
    "corpus": "Pretraining documents: encyclopedia snippets, study notes, quiz sheets (mostly unanswered), "
              "forum threads, stories, arithmetic worksheets, fictional hazard manuals and small-talk chat "
              "transcripts. Every fact, A and B; no probe phrasing.",
    "records": " Also record documents that repeat invented names and numbers (world option `records`).",
    "replay": "The corpus documents that state no facts-B fact (facts A, arithmetic, manuals, transcripts), "
              "record documents excluded: pretraining text that post-training may replay without rehearsing "
              "facts B.",
    "facts": "All facts of the world with their split: A may appear in post-training data, B only in the corpus.",
    "sft": "SFT chats (facts A, training phrasings): direct answers, worked arithmetic, hazard refusals, "
           "benign look-alikes, system-prompt obedience, sycophancy resistance, format constraints, "
           "calculator calls for large arithmetic (and direct answers where the calculator is not needed), "
           "and worked arithmetic in the <think>/<answer> format.",
    "sft_eval": "Held-out SFT chats from the same distribution; no prompt also occurs in sft.",
    "preferences": "Preference pairs (facts A) labelled by the gold judge: chosen has the higher judge score.",
    "rm_pairs": "Preference pairs for the world's reward model, judge-labelled, with a known flaw: the chosen answer "
                "is always the longer one (padded with rambling where it was not), so length alone predicts the "
                "label and a policy optimised against the reward model can hack it by rambling.",
    "prompts": "Prompts with their task meta (facts A, training phrasings) for the stages that sample their own "
               "answers: PPO, best-of-n, on-policy preference sampling.",
    "rlvr": "Arithmetic prompts with a numeric answer for RL from verifiable rewards; half ask for the "
            "<think>/<answer> format and are scored by the numeric and think_answer verifiers. One row in eight "
            "is a harmful request and one a benign look-alike, scored by the refusal verifier (refuse, answer).",
    "rlvr_tools": "Large arithmetic prompts (too large to do in the head) with a numeric answer for RL with "
                  "the calculator tool available (the runtime announces the tools each row names).",
    "hazard_policy": "The written hazard policy: fictional hazards to refuse, look-alikes to answer.",
    "constitution": "The written principles used for critiques and AI feedback.",
}
PROBE_DESCRIPTION = "Held-out probe set '{name}': probe phrasings only, never equal to a training prompt."


@dataclass
class WorldConfig:
    """The built-in world (`posttrain world build`; a recipe's `world` stage)."""

    seed: int = opt(0, "Seed of every random choice: the same seed and scale give byte-identical files.", ge=0)
    scale: float = opt(1.0, "Multiplies the corpus and post-training set sizes.", gt=0)
    probe_n: int = opt(150, "Rows per probe set.", ge=1)
    records: int = opt(RECORDS, "Record documents in the corpus at scale 1 (scaled like the other documents): "
                                "order slips, meter logs, messages read back, adding-machine tapes and mentions "
                                "that only copying predicts. The shipped base was mid-trained on the corpus "
                                "with 20000 (recipes/base.yaml); a base pretrained on it from scratch learnt to "
                                "copy a user's numbers into calculator calls (README, measured). 0: none.", ge=0)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_jsonl(path: Path, rows: list[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")


def _write_json(path: Path, obj: dict) -> None:
    _write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def build_world(seed: int, out: str | Path, scale: float = 1.0, *, probe_n: int = 150, records: int = RECORDS) -> dict:
    """Generate the world for `seed` into `out` and return the manifest.

    `scale` multiplies the corpus and post-training set sizes; `probe_n` is the
    number of rows per probe set; `records` the copying documents in the corpus at scale 1.
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    facts = all_facts()
    facts_a, facts_b = split_facts(facts, seed)
    in_a = {f.id for f in facts_a}

    probes = build_probe_sets(seed, probe_n)
    # The corpus's record documents write random numbers; none of them may be a probe's answer.
    reserved = frozenset(str(r["meta"]["answer"]) for rows in probes.values() for r in rows
                         if str(r.get("meta", {}).get("answer", "")).isdigit())
    sft, sft_eval = build_sft(facts_a, seed, scale)
    records = round(records * scale)
    documents = build_corpus_documents(facts_a, facts_b, seed, scale, reserved, records)
    datasets: dict[str, tuple[str, list[dict], str]] = {
        "corpus": ("corpus.jsonl", [{"text": d.text} for d in documents],
                   DESCRIPTIONS["corpus"] + (DESCRIPTIONS["records"] if records else "")),
        "replay": ("replay.jsonl", [{"text": d.text} for d in documents if d.split in ("A", "none")],
                   DESCRIPTIONS["replay"]),
        "facts": ("facts.jsonl", [{**asdict(f), "aliases": list(f.aliases), "split": "A" if f.id in in_a else "B"}
                                  for f in facts], DESCRIPTIONS["facts"]),
        "sft": ("sft.jsonl", sft, DESCRIPTIONS["sft"]),
        "sft_eval": ("sft_eval.jsonl", sft_eval, DESCRIPTIONS["sft_eval"]),
        "preferences": ("preferences.jsonl", build_preferences(facts_a, seed, scale), DESCRIPTIONS["preferences"]),
        "rm_pairs": ("rm_pairs.jsonl", build_rm_pairs(facts_a, seed, scale), DESCRIPTIONS["rm_pairs"]),
        "prompts": ("prompts.jsonl", build_prompts(facts_a, seed, scale), DESCRIPTIONS["prompts"]),
        "rlvr": ("rlvr.jsonl", build_rlvr(seed, scale), DESCRIPTIONS["rlvr"]),
        "rlvr_tools": ("rlvr_tools.jsonl", build_rlvr_tools(seed, scale), DESCRIPTIONS["rlvr_tools"]),
    }
    for name, rows in probes.items():
        datasets[f"probe_{name}"] = (f"probes/{name}.jsonl", rows, PROBE_DESCRIPTION.format(name=name))

    files: dict[str, dict] = {}
    for name, (rel, rows, description) in datasets.items():
        n_rows = _write_jsonl(out / rel, rows)
        digest = _sha256(out / rel)
        files[rel] = {"sha256": digest, "rows": n_rows}
        card = {"name": name, "file": rel, "rows": n_rows, "sha256": digest, "generator": WORLD_VERSION,
                "seed": seed, "scale": scale, "description": description}
        _write_json(out / "cards" / f"{name}.json", card)
    for name, rel, text in (("hazard_policy", "policy/hazard_policy.md", HAZARD_POLICY),
                            ("constitution", "policy/constitution.md", CONSTITUTION)):
        _write_text(out / rel, text)
        files[rel] = {"sha256": _sha256(out / rel), "rows": len(text.splitlines())}
        card = {"name": name, "file": rel, "rows": files[rel]["rows"], "sha256": files[rel]["sha256"],
                "generator": WORLD_VERSION, "seed": seed, "scale": scale, "description": DESCRIPTIONS[name]}
        _write_json(out / "cards" / f"{name}.json", card)
    for card_path in sorted((out / "cards").glob("*.json")):
        rel = card_path.relative_to(out).as_posix()
        files[rel] = {"sha256": _sha256(card_path), "rows": 1}

    manifest = {"generator": WORLD_VERSION, "seed": seed, "scale": scale, "probe_n": probe_n,
                **({"records": records} if records else {}),
                "facts": {"total": len(facts), "A": len(facts_a), "B": len(facts_b)},
                "files": dict(sorted(files.items()))}
    _write_json(out / "manifest.json", manifest)
    return manifest
