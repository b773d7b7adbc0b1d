"""Governance (issue 12, parts 1 and 2): the ledger's hash chain and what `verify` says about each kind of
tampering; the lineage ledger and model card a stage writes (parsed by huggingface_hub, loaded by
transformers); evals in the card; a recipe's run ledger through reruns; `posttrain audit` and `posttrain card`."""

import json
import shutil

import pytest
import yaml

from posttrain.artifacts import parent_record, read_provenance, sha256_file
from posttrain.cli import main
from posttrain.governance import ledger, targets
from posttrain.governance.card import write_model_card
from posttrain.governance.record import record_eval
from posttrain.world.policies import CONSTITUTION, HAZARD_POLICY
from posttrain.world.build import WORLD_VERSION

SFT_SETS = ["--no-progress", "--set", "model.device=cpu", "--set", "model.dtype=fp32", "--set", "train.max_steps=1",
            "--set", "train.batch_size=4", "--set", "data.max_length=256"]


# ---------------------------------------------------------------- the ledger


def make_ledger(path, n=5):
    for i in range(n):
        ledger.append(path, "data", file=f"f{i}.jsonl", file_sha256=f"{i:064x}", rows=10 + i, role="train")
    return path


def rewrite(path, lines):
    path.write_bytes(b"".join(lines))


def edited(lines, i, rehash):
    entry = json.loads(lines[i])
    entry["rows"] = 999
    if rehash:
        entry["sha256"] = ledger.entry_sha256(entry)
    return lines[:i] + [json.dumps(entry).encode() + b"\n"] + lines[i + 1:]


def forged(lines, after):
    """An entry slipped in after line `after` (0-based), well formed and chained to the entry above it."""
    above = json.loads(lines[after])
    entry = {"seq": above["seq"] + 1, "time": above["time"], "kind": "data", "file": "forged.jsonl",
             "file_sha256": "f" * 64, "rows": 1, "role": "train", "prev": above["sha256"]}
    entry["sha256"] = ledger.entry_sha256(entry)
    return lines[:after + 1] + [json.dumps(entry).encode() + b"\n"] + lines[after + 1:]


# (case, how the five lines are changed, the problems verify must report, in order)
TAMPERING = [
    ("edited", lambda L: edited(L, 2, rehash=False), ["line 3 (seq 3, data): edited: what it says no longer matches"]),
    ("edited-and-rehashed", lambda L: edited(L, 2, rehash=True),
     ["line 3 (seq 3, data): edited or replaced: the next entry (line 4) chains to a different entry"]),
    ("removed", lambda L: L[:2] + L[3:], ["line 3 (seq 4, data): seq 3 missing between line 2 and line 3"]),
    ("two-removed", lambda L: L[:1] + L[3:], ["line 2 (seq 4, data): seq 2 to 3 missing between line 1 and line 2"]),
    ("reordered", lambda L: L[:1] + [L[2], L[1]] + L[3:],
     ["line 2 (seq 3, data): out of order: it follows seq 2 (line 3), not the entry above it (seq 1, line 1)",
      "line 3 (seq 2, data): out of order: it follows seq 1 (line 1), not the entry above it (seq 3, line 2)",
      "line 4 (seq 4, data): out of order: it follows seq 3 (line 2), not the entry above it (seq 2, line 3)"]),
    ("inserted", lambda L: forged(L, 1), ["line 3 (seq 3, data): inserted: no entry chains to it"]),
    ("duplicated", lambda L: L[:3] + [L[2]] + L[3:], ["line 4 (seq 3, data): a second copy of line 3"]),
    ("first-removed", lambda L: L[1:], ["line 1 (seq 2, data): the first entry should be seq 1 with no prev"]),
    ("cut-off", lambda L: L[:4] + [L[4][:40]], ["line 5: is an incomplete last entry (40 bytes, no line end)"]),
    ("line-end-cut", lambda L: L[:4] + [L[4].rstrip(b"\n")], ["line 5 (seq 5, data): has no line end"]),
    ("garbage-line", lambda L: L[:2] + [b"hello\n"] + L[2:],
     ["line 3: is not a ledger entry"]),  # the entries around it still chain
]


def test_an_intact_ledger_is_a_hash_chain(tmp_path):
    path = make_ledger(tmp_path / "ledger.jsonl")
    entries = ledger.read(path)
    assert ledger.verify(path) == []
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0]["prev"] is None
    assert all(e["prev"] == p["sha256"] for p, e in zip(entries, entries[1:]))
    assert all(e["sha256"] == ledger.entry_sha256(e) for e in entries)
    assert [e["rows"] for e in entries] == [10, 11, 12, 13, 14] and entries[2]["file_sha256"] == f"{2:064x}"


@pytest.mark.parametrize("case,change,expected", TAMPERING, ids=[t[0] for t in TAMPERING])
def test_verify_names_each_tampering(tmp_path, case, change, expected):
    path = make_ledger(tmp_path / "ledger.jsonl")
    rewrite(path, change(path.read_bytes().splitlines(keepends=True)))
    problems = ledger.verify(path)
    assert len(problems) == len(expected), problems
    for problem, fragment in zip(problems, expected):
        assert problem.startswith(fragment), (problem, fragment)


def test_append_refuses_to_build_on_a_cut_line_and_checks_fields(tmp_path):
    path = make_ledger(tmp_path / "ledger.jsonl", 2)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ledger.LedgerError, match="the last line is incomplete"):
        ledger.append(path, "judge", name="gold", type="programmatic")
    with pytest.raises(ValueError, match="missing fields"):
        ledger.append(tmp_path / "other.jsonl", "data", file="x")
    with pytest.raises(ValueError, match="reserved fields"):
        ledger.append(tmp_path / "other.jsonl", "judge", name="gold", type="x", sha256="0")
    assert not (tmp_path / "other.jsonl").exists()


def test_the_same_policy_or_eval_is_recorded_once(tmp_path):
    path = tmp_path / "ledger.jsonl"
    policy = {"kind": "policy", "name": "constitution", "file_sha256": "a" * 64, "version": "world-2.1", "text": "x"}
    data = {"kind": "data", "file": "d.jsonl", "file_sha256": "b" * 64, "rows": 3, "role": "train"}
    assert len(ledger.append_facts(path, [policy, data])) == 2
    assert [e["kind"] for e in ledger.append_facts(path, [policy, data])] == ["data"]  # a second use is an event
    assert [e["kind"] for e in ledger.read(path)] == ["policy", "data", "data"] and ledger.verify(path) == []


# ---------------------------------------------------------------- a stage's lineage ledger and card


def fake_report(values: dict, n: int = 40) -> dict:
    """An eval report (posttrain.evals.report format) with these headline values: probe -> (metric, value, ci)."""
    probes = {name: {"version": "1", "metric": metric, "value": value, "ci95": list(ci), "n": n,
                     "higher_is_better": name != "over_refusal", "secondary": {}, "samples": []}
              for name, (metric, value, ci) in values.items()}
    return {"format": "posttrain.eval_report", "format_version": 1, "source": "builtin:seed=0", "n": n, "probes": probes}


@pytest.fixture(scope="module")
def lineage(tiny_llama_dir, tmp_path_factory):
    """A world, a base (the tiny model, with an eval report of its own), sft from it on the world's data,
    and sft2 from sft: (root folder, base, sft, sft2)."""
    from posttrain.world.build import build_world

    root = tmp_path_factory.mktemp("gov")
    build_world(0, root / "world", 0.02, probe_n=4)
    base = root / "base"
    shutil.copytree(tiny_llama_dir, base)
    (base / "eval_report.json").write_text(json.dumps(fake_report({
        "harmful_refusal": ("refusal_rate", 0.9, (0.77, 0.96)), "over_refusal": ("refusal_rate", 0.02, (0.0, 0.1))})))
    for parent, out in ((base, root / "sft"), (root / "sft", root / "sft2")):
        assert main(["sft", "--model", str(parent), "--data", str(root / "world" / "sft.jsonl"), "--out", str(out),
                     *SFT_SETS]) == 0
    return root, base, root / "sft", root / "sft2"


def test_a_stage_writes_its_lineage_ledger(lineage):
    root, base, sft, _ = lineage
    prov = read_provenance(sft)
    assert ledger.verify(sft / "ledger.jsonl") == []
    entries = ledger.read(sft / "ledger.jsonl")
    assert [e["kind"] for e in entries] == ["model", "eval", "synthetic_data", "policy", "policy", "data", "stage_run"]
    start, base_eval, world, hazard, constitution, data, run = entries
    assert (start["name"], start["role"], start["weights_sha256"]) == ("base", "start", parent_record(base)["weights_sha256"])
    assert base_eval["probes"]["harmful_refusal"]["value"] == 0.9 and base_eval["weights_sha256"] == start["weights_sha256"]
    assert (world["source"], world["generator"], world["seed"]) == ("posttrain world build", WORLD_VERSION, 0)
    assert (hazard["name"], hazard["text"], hazard["file_sha256"]) == (
        "hazard_policy", HAZARD_POLICY, sha256_file(root / "world" / "policy" / "hazard_policy.md"))
    assert constitution["text"] == CONSTITUTION
    assert (data["file"], data["file_sha256"], data["role"], data["used_by"]) == (
        "sft.jsonl", sha256_file(root / "world" / "sft.jsonl"), "train", prov["artifact_id"])
    assert (run["artifact_id"], run["weights_sha256"], run["parent_weights_sha256"]) == (
        prov["artifact_id"], prov["weights_sha256"], start["weights_sha256"])
    # the new files are not weights: the artifact's weights hash (and id) still cover the weights alone
    assert parent_record(sft)["weights_sha256"] == prov["weights_sha256"]


def test_a_child_artifact_carries_its_parents_ledger_byte_for_byte(lineage):
    _, _, sft, sft2 = lineage
    parent_lines = (sft / "ledger.jsonl").read_bytes().splitlines(keepends=True)
    child_lines = (sft2 / "ledger.jsonl").read_bytes().splitlines(keepends=True)
    assert child_lines[:len(parent_lines)] == parent_lines
    assert ledger.verify(sft2 / "ledger.jsonl") == []
    added = [json.loads(x)["kind"] for x in child_lines[len(parent_lines):]]
    assert added == ["data", "stage_run"]  # the world and its policies are recorded once per lineage
    assert json.loads(child_lines[-1])["parent_id"] == read_provenance(sft)["artifact_id"]
    assert main(["audit", "verify", str(sft2)]) == 0


def test_the_card_parses_in_huggingface_hub_and_the_model_still_loads(lineage):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, _, sft, sft2 = lineage
    prov = read_provenance(sft2)
    text = (sft2 / "README.md").read_text()
    card = ModelCard.load(sft2 / "README.md")
    assert card.data.base_model == "base"  # the root of the lineage, not the parent
    assert card.data.datasets == [f"sft.jsonl@sha256:{sha256_file(root / 'world' / 'sft.jsonl')}"]
    assert (card.data.license, card.data.pipeline_tag, card.data.tags) == ("other", "text-generation", ["posttrain", "sft"])
    assert card.data.eval_results is None  # not evaluated yet
    assert "Do not edit" in text.split("---")[1] and prov["weights_sha256"] in text
    assert HAZARD_POLICY.strip() in text and CONSTITUTION.strip() in text
    assert sha256_file(root / "world" / "policy" / "hazard_policy.md") in text
    assert f"| 3 | sft | `{prov['artifact_id']}` | `{read_provenance(sft)['artifact_id']}` |" in text
    assert AutoModelForCausalLM.from_pretrained(sft2).config.vocab_size == len(AutoTokenizer.from_pretrained(sft2))


def test_an_eval_puts_probe_results_with_intervals_into_the_card(lineage, tmp_path):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    _, _, sft, _ = lineage
    art = tmp_path / "sft"
    shutil.copytree(sft, art)
    report = tmp_path / "report.json"
    report.write_text(json.dumps(fake_report({
        "harmful_refusal": ("refusal_rate", 0.6, (0.45, 0.73)), "over_refusal": ("refusal_rate", 0.04, (0.01, 0.12))})))
    before = art.joinpath("ledger.jsonl").read_bytes()
    record_eval(report, art, name="eval_sft", recipe="mine")
    assert art.joinpath("ledger.jsonl").read_bytes().startswith(before) and ledger.verify(art / "ledger.jsonl") == []
    card = ModelCard.load(art / "README.md")
    results = {r.dataset_name.split(" ")[0]: r for r in card.data.eval_results}
    assert results["harmful_refusal"].metric_value == 0.6
    assert results["harmful_refusal"].metric_args == {"n": 40, "ci95_low": 0.45, "ci95_high": 0.73}
    name, parsed = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert name == read_provenance(art)["artifact_id"] and len(parsed) == 2
    text = (art / "README.md").read_text()
    # against the parent's own eval_report.json: 0.9 -> 0.6 is outside its interval [0.77, 0.96]
    assert "| harmful_refusal | refusal_rate | 0.900 | 0.600 | [0.450, 0.730] | -0.300 * | 40 |" in text
    assert "harmful-request refusal: measured 0.600, goal >= 0.950: missed by 0.350 (assistant target)" in text
    assert "harmful_refusal refusal_rate fell against the parent (0.900): measured 0.600, goal >= 0.770" in text
    record_eval(report, art, name="eval_sft", recipe="mine")  # the same report again adds nothing
    assert sum(e["kind"] == "eval" for e in ledger.read(art / "ledger.jsonl")) == 2  # base's and this one


def test_demo_targets_come_from_the_demo_module():
    from posttrain.demo import TARGETS

    label = next(t[0] for t in TARGETS if t[1:5] == ("eval_sft", "instruction_following", "answer_rate", ">="))
    sft = {"instruction_following": {"metric": "answer_rate", "value": 0.9, "ci95": [0.8, 0.95], "higher_is_better": True}}
    found = targets.missed("sft", {}, {"eval_sft": sft}, {"eval_sft"}, True, sft, {})
    measured = [(f.label, round(f.missed_by, 3), f.source) for f in found if f.measured is not None]
    assert measured == [(label, 0.05, "demo target")]
    not_measured = [f.label for f in found if f.measured is None]  # eval_sft's other targets: named, not hidden
    assert len(not_measured) == sum(t[1] == "eval_sft" for t in TARGETS) - 1 and label not in not_measured
    assert "not measured" in found[-1].text()
    assert targets.missed("reward", {"heldout_accuracy": 0.8}, {}, set(), True, {}, {})[0].measured == 0.8


# ---------------------------------------------------------------- a recipe's run ledger


def recipe(base, n=2):
    evals = {"stage": "eval", "probes": ["harmful_refusal"], "n": n, "source": "@world", "batch_size": 4}
    return {"name": "gov", "base": str(base), "stages": [
        {"name": "world", "stage": "world", "seed": 0, "scale": 0.02, "probe_n": 4},
        {"name": "eval_base", **evals},
        {"name": "sft", "stage": "sft", "data": "@world/sft.jsonl", "config": {
            "model": {"dtype": "fp32", "device": "cpu"}, "data": {"max_length": 256},
            "train": {"max_steps": 1, "batch_size": 4}}},
        {"name": "eval_sft", **evals, "n": n},
    ]}


def run_recipe(tmp, base, **kw):
    path = tmp / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(base, **kw)))
    assert main(["run", str(path), "--out", str(tmp / "run"), "--no-progress"]) == 0
    return tmp / "run"


def kinds(path):
    return [e["kind"] for e in ledger.read(path)]


def test_a_recipe_keeps_a_run_ledger_that_survives_reruns(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    from huggingface_hub import ModelCard

    from posttrain.recipes import Runner, load_recipe

    monkeypatch.setenv("POSTTRAIN_CPU_DTYPE", "fp32")
    run = run_recipe(tmp_path, tiny_llama_dir)
    assert kinds(run / "ledger.jsonl") == ["synthetic_data", "policy", "policy", "eval", "model", "data", "stage_run",
                                          "eval"]
    assert kinds(run / "sft" / "ledger.jsonl") == ["model", "eval", "synthetic_data", "policy", "policy", "data",
                                                   "stage_run", "eval"]
    card = ModelCard.load(run / "sft" / "README.md")  # regenerated after eval_sft: it carries the results
    assert [r.dataset_name.split(" ")[0] for r in card.data.eval_results] == ["harmful_refusal"]
    assert "| harmful_refusal | refusal_rate |" in (run / "sft" / "README.md").read_text()
    files = {p: p.read_bytes() for p in (run / "ledger.jsonl", run / "sft" / "ledger.jsonl", run / "sft" / "README.md")}

    run_recipe(tmp_path, tiny_llama_dir)  # nothing changed: every stage skipped, nothing recorded twice
    assert {p: p.read_bytes() for p in files} == files

    run_recipe(tmp_path, tiny_llama_dir, n=3)  # the evals change: they rerun, sft is skipped
    assert kinds(run / "ledger.jsonl")[8:] == ["eval", "eval"]
    assert kinds(run / "sft" / "ledger.jsonl")[8:] == ["eval"]
    assert kinds(run / "sft" / "ledger.jsonl").count("stage_run") == 1
    capsys.readouterr()
    assert main(["audit", "verify", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"ok: 10 entries, chain intact: run {run / 'ledger.jsonl'}" in out and "ok: 9 entries" in out

    assert main(["audit", "show", str(run / "ledger.jsonl")]) == 0
    shown = capsys.readouterr().out.splitlines()[1:]
    assert len(shown) == 10 and shown[6].split()[0] == "7" and shown[6].split()[2] == "stage_run"

    lines = (run / "ledger.jsonl").read_bytes().splitlines(keepends=True)
    rewrite(run / "ledger.jsonl", edited_eval(lines, 3))
    assert main(["audit", "verify", str(run)]) == 1
    captured = capsys.readouterr()
    assert "FAILED: run" in captured.out and "line 4 (seq 4, eval): edited" in captured.out
    assert captured.err.startswith("posttrain audit: error: 1 problem in 1 ledger")
    with pytest.raises(ledger.LedgerError, match="the run's ledger fails verification"):
        Runner(load_recipe(tmp_path / "r.yaml"), run, progress=False).run()


def edited_eval(lines, i):
    entry = json.loads(lines[i])
    entry["probes"]["harmful_refusal"]["value"] = 1.0  # a better number than was measured
    return lines[:i] + [json.dumps(entry).encode() + b"\n"] + lines[i + 1:]


def test_card_command_regenerates_and_refuses_a_tampered_ledger(lineage, tmp_path, capsys):
    _, _, sft, _ = lineage
    art = tmp_path / "sft"
    shutil.copytree(sft, art)
    (art / "README.md").write_text("hand-edited")
    report = tmp_path / "r.json"
    report.write_text(json.dumps(fake_report({"over_refusal": ("refusal_rate", 0.5, (0.3, 0.7))})))
    assert main(["card", str(art), "--eval", str(report)]) == 0
    text = (art / "README.md").read_text()
    assert "hand-edited" not in text and "| over_refusal | refusal_rate | 0.020 | 0.500 |" in text
    assert write_model_card(art, [str(report)]).read_text() == text  # deterministic
    lines = (art / "ledger.jsonl").read_bytes().splitlines(keepends=True)
    rewrite(art / "ledger.jsonl", lines[:-1])  # the artifact's own stage_run cut off the end
    assert ledger.verify(art / "ledger.jsonl") == []  # a clean cut leaves a valid chain...
    capsys.readouterr()
    assert main(["audit", "verify", str(art)]) == 1  # ...but the artifact is no longer recorded in it
    assert "no stage_run entry records this artifact" in capsys.readouterr().out
    rewrite(art / "ledger.jsonl", edited(lines, 2, rehash=False))
    assert main(["card", str(art)]) == 2
    assert "fails verification (line 3 (seq 3, synthetic_data): edited" in capsys.readouterr().err


def test_sampled_preferences_are_recorded_as_synthetic_data(lineage, tmp_path):
    from posttrain.governance.record import source_facts

    root, _, sft, _ = lineage
    out = tmp_path / "prefs.jsonl"
    assert main(["preferences", "sample", str(sft), "--prompts", str(root / "world" / "preferences.jsonl"),
                 "--out", str(out), "--label", "gold", "--n", "2", "--limit", "3", "--max-new-tokens", "6",
                 "--device", "cpu", "--dtype", "fp32", "--no-progress"]) == 0
    found = source_facts([out])
    assert [f["kind"] for f in found] == ["synthetic_data", "policy", "policy", "synthetic_data", "judge"]
    sampled = found[3]
    assert (sampled["source"], sampled["generator"], sampled["labeller"]) == (
        "posttrain preferences sample", read_provenance(sft)["artifact_id"], "gold")
    assert sampled["output_sha256"] == sha256_file(out)
    assert sampled["prompts_sha256"] == sha256_file(root / "world" / "preferences.jsonl")
    assert sampled["filters"]["n"] == 2 and sampled["filters"]["margin"] == 0.0
    assert (found[4]["name"], found[4]["type"]) == ("gold", "programmatic")
