"""The quick demo end to end: world -> probes on the shipped base -> SFT -> probes, with the summary."""

import json

from posttrain.cli import main
from posttrain.demo import REPO


def test_quick_demo_turns_the_base_into_an_assistant(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "What post-training changed" in printed and "Targets" in printed and "Samples" in printed
    base = json.loads((out / "eval_base" / "eval_report.json").read_text())
    sft = json.loads((out / "eval_sft" / "eval_report.json").read_text())
    assert base["probes"]["cloze_recall"]["value"] >= 0.9  # the shipped base knows its facts
    assert sft["probes"]["instruction_following"]["value"] > base["probes"]["instruction_following"]["value"] + 0.2
    prov = json.loads((out / "sft" / "provenance.json").read_text())
    assert prov["parent"]["artifact_id"] == json.loads((REPO / "models" / "base" / "provenance.json").read_text())["artifact_id"]
    assert {d["role"] for d in prov["data"]} >= {"train", "replay"}
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["quick"] is True and summary["wall_time_s"] > 0
