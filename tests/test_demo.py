"""The quick demo end to end: world -> probes on the base -> SFT -> probes -> reward model, DPO, PPO, best-of-n
and GRPO without and with the calculator -> probes, the over-optimisation plot and GRPO's training curves."""

import json
import re

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
    assert summary["stages_reused"] == [] and summary["wall_time_target"] in ("met", "MISSED")
    assert re.search(r"whole demo wall time \(quick mode\) +<= 3 min +\d+\.\d min +(met|MISSED) *\n", printed)  # the table pads "met"
    # the preference branch: a reward model from SFT (not a policy), and DPO from SFT, not from the reward model
    reward = json.loads((out / "reward" / "provenance.json").read_text())
    dpo = json.loads((out / "dpo" / "provenance.json").read_text())
    sft_id = prov["artifact_id"]
    assert reward["parent"]["artifact_id"] == sft_id and dpo["parent"]["artifact_id"] == sft_id
    assert 0 <= reward["metrics"]["heldout_accuracy"] <= 1 and reward["metrics"]["heldout_pairs"] > 100
    assert summary["reward_model"]["heldout_accuracy"] == reward["metrics"]["heldout_accuracy"]
    assert json.loads((out / "eval_dpo" / "eval_report.json").read_text())["probes"].keys() == base["probes"].keys()
    assert "Reward model" in printed and "worse than SFT" in printed and "dpo (chat)" in printed
    # the RLHF branch: PPO from SFT against the reward model, best-of-n from SFT against it, both measured with gold
    ppo = json.loads((out / "ppo" / "provenance.json").read_text())
    assert ppo["parent"]["artifact_id"] == sft_id and ppo["config"]["reward"]["model"] == str(out / "reward")
    curve = ppo["metrics"]["overoptimisation"]["points"]
    assert curve[0]["iteration"] == 0 and curve[-1]["iteration"] == ppo["metrics"]["steps"] and "gold" in curve[0]
    bon = json.loads((out / "bon" / "bon.json").read_text())
    assert [r["n"] for r in bon["rows"]] == [1, 2, 4] and "gold" in bon["rows"][0]
    assert bon["rows"][-1]["proxy"] >= bon["rows"][0]["proxy"]  # the estimator's best-of-n proxy never falls with n
    assert (out / "overoptimisation.png").stat().st_size > 10_000
    flaw = summary["reward_model"]["flaw"]
    assert 0 <= flaw["accuracy_when_better_is_shorter"] <= 1 and flaw["better_is_shorter_pairs"] > 0
    assert set(summary["overoptimisation"]) >= {"plot", "bon", "ppo"}
    bon_report = json.loads((out / "eval_bon" / "eval_report.json").read_text())
    assert {"harmful_refusal", "over_refusal", "gold_reward"} <= set(bon_report["probes"])
    assert bon_report["model"].startswith("best-of-4 of @sft")
    assert "Over-optimisation" in printed and "ppo (chat)" in printed and "best-of-4" in printed
    # the RLVR branch: GRPO from SFT on the world's arithmetic, and GRPO from SFT with the calculator
    for name, data in (("grpo", "rlvr.jsonl"), ("grpo_tools", "rlvr_tools.jsonl")):
        grpo = json.loads((out / name / "provenance.json").read_text())
        assert grpo["parent"]["artifact_id"] == sft_id and grpo["data"][0]["path"].endswith(data)
        assert "pass@1_last" in grpo["metrics"] and (out / f"{name}_curves.png").stat().st_size > 10_000
    assert json.loads((out / "grpo_tools" / "provenance.json").read_text())["config"]["tools"]["names"] == ["calculator"]
    tools_report = json.loads((out / "eval_grpo_tools" / "eval_report.json").read_text())
    assert {"tool_arithmetic", "large_arithmetic", "harmful_refusal", "over_refusal"} <= set(tools_report["probes"])
    assert "reasoning" in json.loads((out / "eval_grpo" / "eval_report.json").read_text())["probes"]
    assert "tool_call_rate" in tools_report["probes"]["tool_arithmetic"]["secondary"]
    assert set(summary["rlvr"]) >= {"grpo", "grpo_tools", "eval_sft", "eval_grpo_tools"}
    assert "RL from verifiable rewards" in printed and "GRPO + calculator" in printed


def test_the_wall_time_target_is_judged_only_when_every_stage_ran_now():
    from posttrain.demo import wall_time_row

    assert wall_time_row(170, True, []) == ["whole demo wall time (quick mode)", "<= 3 min", "2.8 min", "met"]
    assert wall_time_row(181, True, [])[-1] == "MISSED"
    assert wall_time_row(24.4 * 60, False, []) == ["whole demo wall time", "<= 15 min", "24.4 min", "MISSED"]
    assert wall_time_row(60, False, ["world", "sft"])[-1] == "- (2 stages from an earlier run)"
    assert wall_time_row(60, False, ["sft"])[-1] == "- (1 stage from an earlier run)"
