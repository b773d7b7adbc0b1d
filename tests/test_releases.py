"""Named releases and lineage (issue 12, part 3): `posttrain release` writes the registry row, a `release` ledger
entry and the card's Releases section, each with the weights hash, gate outcome and deployment configuration;
it refuses a taken name@version, failed gates (unless forced with a reason, which is recorded) and a tampered
audit trail, writing nothing; `posttrain lineage` prints the chain back to the base model for an artifact or
NAME[@VERSION], and never confuses two models released under one name."""

import json
import shutil

import pytest

from posttrain.artifacts import read_provenance, sha256_file
from posttrain.cli import main
from posttrain.governance import ledger
from posttrain.governance import registry as reg

SFT_SETS = ["--no-progress", "--set", "model.device=cpu", "--set", "model.dtype=fp32", "--set", "train.max_steps=1",
            "--set", "train.batch_size=4", "--set", "data.max_length=256"]


@pytest.fixture(scope="module")
def models(tiny_llama_dir, tmp_path_factory):
    """A world, sft from the tiny model on its data, and sft2 from sft: (root, sft, sft2)."""
    from posttrain.world.build import build_world

    root = tmp_path_factory.mktemp("rel")
    build_world(0, root / "world", 0.02, probe_n=4)
    for parent, out in ((tiny_llama_dir, root / "sft"), (root / "sft", root / "sft2")):
        assert main(["sft", "--model", str(parent), "--data", str(root / "world" / "sft.jsonl"), "--out", str(out),
                     *SFT_SETS]) == 0
    return root, root / "sft", root / "sft2"


def artifact(src, dst, *gates):
    """A copy of `src` with gate outcomes (name, passed) about it appended to its ledger."""
    shutil.copytree(src, dst)
    prov = read_provenance(dst)
    for name, passed in gates:
        ledger.append(dst / "ledger.jsonl", "gate", artifact_id=prov["artifact_id"], weights_sha256=prov["weights_sha256"],
                      system="model", stage="eval_sft", gate=name, passed=passed, probe="harmful_refusal",
                      metric="refusal_rate", value=0.9 if passed else 0.6, threshold=0.8, op=">=", fatal=False)
    return dst


def rows(path):
    with reg.reading(path) as conn:
        return reg.versions(conn, "world-assistant")


def test_a_release_is_recorded_in_the_registry_the_ledger_and_the_card(models, tmp_path, capsys):
    _, sft, _ = models
    a = artifact(sft, tmp_path / "a", ("refuses harm", True))
    prov = read_provenance(a)
    registry = tmp_path / "registry.sqlite"
    assert main(["release", str(a), "--name", "world-assistant", "--version", "1.0", "--registry", str(registry),
                 "--system-prompt", "You answer questions about the world.", "--set", "generation.temperature=0.7",
                 "--set", "generation.max_new_tokens=64"]) == 0
    out = capsys.readouterr().out
    assert f"released world-assistant@1.0: {prov['artifact_id']} (weights sha256 {prov['weights_sha256']}), gates passed (1 of 1 passed)" in out
    [row] = rows(registry)
    assert (row["artifact_id"], row["weights_sha256"], row["artifact_path"]) == (prov["artifact_id"], prov["weights_sha256"], str(a))
    assert (row["gate_outcome"], row["forced"], row["reason"]) == ("passed", False, None)
    assert row["deployment"] == {"system_prompt": "You answer questions about the world.",
                                 "generation": {"max_new_tokens": 64, "temperature": 0.7}}
    entry = ledger.read(a / "ledger.jsonl")[-1]
    assert (entry["kind"], entry["name"], entry["version"], entry["weights_sha256"]) == (
        "release", "world-assistant", "1.0", prov["weights_sha256"])
    assert entry["deployment"] == row["deployment"] and row["ledger_entry_sha256"] == entry["sha256"]
    assert ledger.verify(a / "ledger.jsonl") == [] and main(["audit", "verify", str(a)]) == 0
    card = (a / "README.md").read_text()
    assert "## Releases" in card and f"| `world-assistant@1.0` | {row['released_utc']} | `{prov['weights_sha256']}` | passed | no |" in card
    assert 'system prompt: "You answer questions about the world."' in card


def test_lineage_prints_the_chain_by_name_and_by_path(models, tmp_path, capsys):
    root, sft, _ = models
    a = artifact(sft, tmp_path / "a", ("refuses harm", True))
    registry = tmp_path / "registry.sqlite"
    assert main(["release", str(a), "--name", "world-assistant", "--version", "1.0", "--registry", str(registry),
                 "--set", "generation.temperature=0.7"]) == 0
    capsys.readouterr()
    printed = {}
    for target in ("world-assistant@1.0", "world-assistant", str(a)):
        assert main(["lineage", target, "--registry", str(registry)]) == 0
        printed[target] = capsys.readouterr().out
    text = printed["world-assistant@1.0"]
    prov = read_provenance(a)
    assert text == printed["world-assistant"] and text.startswith(f"lineage of world-assistant@1.0: {prov['artifact_id']}")
    assert printed[str(a)].startswith(f"lineage of {prov['artifact_id']}")
    lines = text.splitlines()
    assert lines[3].startswith("1. base model tiny_llama") and lines[4].startswith(f"2. sft: {prov['artifact_id']}")
    assert "data: sft.jsonl (train, " in text and sha256_file(root / "world" / "sft.jsonl") in text
    assert f"hazard_policy sha256 {sha256_file(root / 'world' / 'policy' / 'hazard_policy.md')}" in text
    assert "contamination: 13-gram overlap with the probe sets of world/probes" in text
    assert "eval_sft: gate 'refuses harm': harmful_refusal refusal_rate 0.900, needs >= 0.800: passed" in text
    assert "release world-assistant@1.0 at " in text and "deployment: generation temperature=0.7" in text


def test_a_taken_version_is_refused_and_nothing_is_written(models, tmp_path, capsys):
    _, sft, _ = models
    a = artifact(sft, tmp_path / "a")
    registry = tmp_path / "registry.sqlite"
    assert main(["release", str(a), "--name", "world-assistant", "--version", "1.0", "--registry", str(registry)]) == 0
    assert "has no recorded release gates" in capsys.readouterr().err
    files = {p: p.read_bytes() for p in (registry, a / "ledger.jsonl", a / "README.md")}
    assert main(["release", str(a), "--name", "world-assistant", "--version", "1.0", "--registry", str(registry)]) == 2
    err = capsys.readouterr().err
    assert "world-assistant@1.0 is already released in" in err and "give a new --version (the latest of " \
        "world-assistant is 1.0)" in err
    assert {p: p.read_bytes() for p in files} == files


def test_failed_gates_need_force_and_a_reason_which_are_recorded(models, tmp_path, capsys):
    _, sft, _ = models
    a = artifact(sft, tmp_path / "a", ("refuses harm", True), ("refuses harm", False))  # the latest outcome counts
    registry = tmp_path / "registry.sqlite"
    before = (a / "ledger.jsonl").read_bytes()
    args = ["release", str(a), "--name", "world-assistant", "--version", "1.0", "--registry", str(registry)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "failed 1 of its 1 release gates: eval_sft: gate 'refuses harm': harmful_refusal refusal_rate 0.600, " \
           "needs >= 0.800: FAILED (not fatal)" in err and "--force --reason TEXT" in err
    assert main(args + ["--force"]) == 2
    assert "--force needs --reason TEXT" in capsys.readouterr().err
    assert not registry.exists() and (a / "ledger.jsonl").read_bytes() == before
    assert main(args + ["--force", "--reason", "a teaching model; its refusals are measured, not relied on"]) == 0
    assert "released despite 1 failed gate(s), forced" in capsys.readouterr().err
    [row] = rows(registry)
    assert (row["gate_outcome"], row["forced"], row["reason"]) == (
        "failed", True, "a teaching model; its refusals are measured, not relied on")
    assert row["gates"]["failed"] == ["eval_sft: gate 'refuses harm': harmful_refusal refusal_rate 0.600, needs >= "
                                      "0.800: FAILED (not fatal)"]
    entry = ledger.read(a / "ledger.jsonl")[-1]
    assert (entry["forced"], entry["reason"], entry["gate_outcome"]) == (True, row["reason"], "failed")
    assert "| failed | yes: a teaching model; its refusals are measured, not relied on |" in (a / "README.md").read_text()


def test_one_name_two_models_are_never_confused(models, tmp_path, capsys):
    _, sft, sft2 = models
    a, b = artifact(sft, tmp_path / "a"), artifact(sft2, tmp_path / "b")
    registry = tmp_path / "registry.sqlite"
    for path, version in ((a, "1.0"), (b, "2.0")):
        assert main(["release", str(path), "--name", "world-assistant", "--version", version, "--registry",
                     str(registry)]) == 0
    wa, wb = read_provenance(a)["weights_sha256"], read_provenance(b)["weights_sha256"]
    assert wa != wb
    assert f"world-assistant@1.0 (the latest before) is weights sha256 {wa[:16]}; world-assistant@2.0 is weights " \
           f"sha256 {wb[:16]}" in capsys.readouterr().err
    assert [(r["version"], r["weights_sha256"]) for r in rows(registry)] == [("1.0", wa), ("2.0", wb)]
    for target, weights in (("world-assistant", wb), ("world-assistant@1.0", wa)):
        assert main(["lineage", target, "--registry", str(registry)]) == 0
        assert capsys.readouterr().out.splitlines()[0].endswith(f"weights sha256 {weights}")
    shutil.rmtree(a)
    shutil.copytree(b, a)  # another model now sits where 1.0 was released
    assert main(["lineage", "world-assistant@1.0", "--registry", str(registry)]) == 2
    err = capsys.readouterr().err
    assert f"world-assistant@1.0 (registry {registry}) released {read_provenance(sft)['artifact_id']}" in err
    assert "another model was written there since" in err


def test_a_tampered_audit_trail_is_refused(models, tmp_path, capsys):
    _, sft, _ = models
    a = artifact(sft, tmp_path / "a")
    registry = tmp_path / "registry.sqlite"
    assert main(["release", str(a), "--name", "world-assistant", "--version", "1.0", "--registry", str(registry)]) == 0
    lines = (a / "ledger.jsonl").read_bytes().splitlines(keepends=True)
    entry = json.loads(lines[2])
    entry["tampered"] = True
    (a / "ledger.jsonl").write_bytes(b"".join(lines[:2] + [json.dumps(entry).encode() + b"\n"] + lines[3:]))
    capsys.readouterr()
    assert main(["release", str(a), "--name", "world-assistant", "--version", "1.1", "--registry", str(registry)]) == 2
    assert "its audit trail does not hold (line 3 (seq 3" in capsys.readouterr().err
    assert main(["lineage", "world-assistant@1.0", "--registry", str(registry)]) == 2
    assert "edited: what it says no longer matches its sha256" in capsys.readouterr().err
    assert [r["version"] for r in rows(registry)] == ["1.0"]


def test_the_default_registry_comes_from_the_environment(models, tmp_path, monkeypatch, capsys):
    _, sft, _ = models
    a = artifact(sft, tmp_path / "a")
    monkeypatch.setenv("POSTTRAIN_REGISTRY", str(tmp_path / "env" / "registry.sqlite"))
    assert main(["release", str(a), "--name", "world-assistant", "--version", "3"]) == 0
    assert [r["version"] for r in rows(tmp_path / "env" / "registry.sqlite")] == ["3"]
    assert main(["lineage", "world-assistant@3"]) == 0


def test_a_force_is_recorded_only_where_it_overrode_a_gate(models, tmp_path, capsys):
    _, sft, _ = models
    a = artifact(sft, tmp_path / "a", ("refuses harm", True))
    registry = tmp_path / "registry.sqlite"
    assert main(["release", str(a), "--name", "world-assistant", "--version", "1", "--registry", str(registry),
                 "--force", "--reason", "just in case"]) == 0
    assert "--force had nothing to override (no gate failed)" in capsys.readouterr().err
    [row] = rows(registry)
    assert (row["gate_outcome"], row["forced"], row["reason"]) == ("passed", False, None)
    assert ledger.read(a / "ledger.jsonl")[-1]["forced"] is False
