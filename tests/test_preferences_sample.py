"""`posttrain preferences sample`: pair choices and agreement on hand-made labels, tiny end-to-end runs whose
rows DPO reads, the recipe stage, and the errors a user meets."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from posttrain.cli import main
from posttrain.feedback.pairs import Agreement, extremes, gold_agreement, preferred_first, two_distinct

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------- pure choices


def test_extremes_pairs_best_with_worst_and_drops_ties():
    assert extremes([0.3, 1.0, 0.85, 0.3]) == (1, 0)  # the first of equal worsts
    assert extremes([0.5, 0.5, 0.5]) is None
    assert extremes([0.3, 0.4], margin=0.15) is None and extremes([0.3, 0.5], margin=0.15) == (1, 0)


def test_two_distinct_draws_two_different_texts_or_none():
    assert two_distinct(["a", "a", "a"], random.Random(0)) is None
    seen = set()
    for seed in range(30):
        i, j = two_distinct(["x", "x", "y", "z"], random.Random(seed))
        assert i != j and {i, j} <= {0, 2, 3}  # index 1 repeats index 0's text: never drawn
        seen.add(frozenset((i, j)))
    assert len(seen) == 3


def test_preferred_first_and_the_margin():
    assert preferred_first(0.7) is True and preferred_first(0.2) is False and preferred_first(0.5) is None
    assert preferred_first(0.54, margin=0.05) is None and preferred_first(0.56, margin=0.05) is True


def test_gold_agreement_counts_hand_made_labels():
    # (gold score of the labeller's chosen, of its rejected): 3 agree, 1 disagrees, 2 gold ties.
    a = gold_agreement([(1.0, 0.3), (0.85, 0.7), (1.0, 0.0), (0.3, 1.0), (0.3, 0.3), (1.0, 1.0)])
    assert (a.agree, a.disagree, a.gold_ties, a.judged) == (3, 1, 2, 4)
    d = a.as_dict()
    assert d["rate"] == 0.75 and d["ci95"][0] < 0.75 < d["ci95"][1] and d["gold_ties"] == 2
    assert Agreement().rate is None and Agreement().as_dict()["ci95"] is None


# ---------------------------------------------------------------- end to end on a tiny model

QUESTIONS = [("What is the capital of France?", "Paris"), ("What is the capital of Japan?", "Tokyo"),
             ("What is the capital of Italy?", "Rome"), ("What is the chemical symbol of gold?", "Au"),
             ("What is two plus two?", "four")]


@pytest.fixture
def prompts(tmp_path):
    """Five prompt rows with world-style meta, in the preference format of the world (offline pair included)."""
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": a + "."}],
             "rejected": [{"role": "assistant", "content": "No idea."}],
             "meta": {"task": "fact", "answer": a, "aliases": [], "pair": "fact_wrong", "chosen_score": 1.0,
                      "rejected_score": 0.3, "id": k}} for k, (q, a) in enumerate(QUESTIONS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def length_score(tmp_path, monkeypatch):
    """A module:function labeller (longer is better), so a tiny random model's samples rarely tie."""
    code = "def score(prompt, response, meta):\n    return float(len(response))\n"
    (tmp_path / "prefs_length_score.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "prefs_length_score:score"


def sample(model, prompts, out, label, *extra):
    return main(["preferences", "sample", str(model), "--prompts", str(prompts), "--out", str(out), "--label", label,
                 "--limit", "4", "--n", "2", "--max-new-tokens", "16", "--dtype", "fp32", "--device", "cpu",
                 "--no-progress", *extra])


def read_as_dpo_data(model, path):
    """The rows as `posttrain dpo` reads them: pairs of token sequences."""
    from posttrain.config import load_config
    from posttrain.models import load_tokenizer
    from posttrain.stages.dpo import DPOConfig
    from posttrain.stages.reward import read_preferences

    cfg = load_config(DPOConfig, overrides={"data.eval_fraction": 0.0, "data.max_length": 512})
    return read_preferences(load_tokenizer(model), path, cfg)


def test_sample_with_a_scoring_labeller_writes_dpo_rows_and_agreement(tiny_llama_dir, prompts, length_score, tmp_path):
    out = tmp_path / "prefs.jsonl"
    assert sample(tiny_llama_dir, prompts, out, length_score) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    summary = json.loads((tmp_path / "prefs.summary.json").read_text())
    assert summary["rows"] == 4 and summary["samples"] == 8 and summary["n"] == 2
    assert summary["pairs"] == len(rows) >= 1
    assert summary["pairs"] + summary["dropped_ties"] + summary["dropped_identical"] == 4
    source = [json.loads(line) for line in prompts.read_text().splitlines()]
    for row in rows:
        meta = row["meta"]
        original = source[meta["id"]]
        assert row["prompt"] == original["prompt"] and meta["answer"] == original["meta"]["answer"]
        assert not {"pair"} & set(meta)  # the offline pair's description is not carried over
        assert meta["labeller"] == length_score and len(meta["scores"]) == 2
        assert meta["chosen_score"] == len(row["chosen"][0]["content"]) > meta["rejected_score"] == len(
            row["rejected"][0]["content"])
        assert {"gold_chosen", "gold_rejected"} <= set(meta)  # the world meta lets gold grade every pair
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
    agreement = summary["agreement_with_gold"]
    kept = [(r["meta"]["gold_chosen"], r["meta"]["gold_rejected"]) for r in rows]
    assert agreement == gold_agreement(kept).as_dict()
    data = read_as_dpo_data(tiny_llama_dir, out)
    assert len(data.train) + data.stats["identical"] + data.stats["too_long"] == len(rows)


def test_sample_with_the_ai_judge_records_its_soft_label(tiny_llama_dir, prompts, tmp_path):
    out = tmp_path / "ai.jsonl"
    assert sample(tiny_llama_dir, prompts, out, f"ai:{tiny_llama_dir}", "--seed", "1") == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    summary = json.loads((tmp_path / "ai.summary.json").read_text())
    assert summary["pairs"] == len(rows) and summary["ai_judge"]["judged"] == 4 - summary["dropped_identical"]
    assert summary["pairs"] + summary["dropped_ties"] + summary["dropped_identical"] == 4
    from posttrain.feedback.ai_judge import parse_principles
    from posttrain.world.policies import CONSTITUTION

    for row in rows:
        meta = row["meta"]
        assert meta["labeller"] == f"ai:{tiny_llama_dir}" and meta["principle"] in parse_principles(CONSTITUTION)
        assert meta["probability"] > 0.5
        assert meta["probability"] == pytest.approx((meta["p_chosen_shown_a"] + meta["p_chosen_shown_b"]) / 2)
        assert "chosen_score" not in meta  # the offline pair's gold scores would describe other responses
    assert rows and len(read_as_dpo_data(tiny_llama_dir, out).train) == len(rows)


def test_the_recipe_stage_writes_preferences_that_a_later_stage_can_name(tiny_llama_dir, prompts, length_score,
                                                                         tmp_path):
    import yaml

    from posttrain.recipes import Runner, load_recipe

    recipe = {"name": "prefs", "base": str(tiny_llama_dir), "stages": [
        {"name": "prefs", "stage": "preferences", "data": str(prompts), "n": 2, "label": length_score, "limit": 3,
         "max_new_tokens": 8},
        {"name": "prefs_again", "stage": "preferences", "data": "@prefs/preferences.jsonl", "n": 2,
         "label": f"ai:{tiny_llama_dir}", "max_new_tokens": 8}]}
    path = tmp_path / "prefs.yaml"
    path.write_text(yaml.safe_dump(recipe))
    outputs = Runner(load_recipe(path), tmp_path / "run", progress=False).run()
    first = outputs["prefs"] / "preferences.jsonl"
    summary = json.loads((outputs["prefs"] / "preferences.summary.json").read_text())
    assert summary["rows"] == 3 and summary["pairs"] == len(first.read_text().splitlines())
    again = json.loads((outputs["prefs_again"] / "preferences.summary.json").read_text())
    assert again["rows"] == summary["pairs"]  # the second stage read the first one's pairs as its prompts


def test_the_iterative_dpo_recipe_loads_and_chains_its_stages():
    from posttrain.recipes import _refs, load_recipe

    recipe = load_recipe(ROOT / "recipes" / "iterative_dpo.yaml")
    kinds = [(s.name, s.kind) for s in recipe.stages]
    assert [k for _, k in kinds] == ["world", "sft", "eval", "preferences", "dpo", "preferences", "dpo", "eval"]
    raw = {s.name: s.raw for s in recipe.stages}
    assert raw["dpo1"]["data"] == "@prefs1/preferences.jsonl" and raw["dpo2"]["data"] == "@prefs2/preferences.jsonl"
    assert _refs({"label": "ai:@sft", "data": "@world/x.jsonl", "fn": "module:function"}) == ["@sft", "@world/x.jsonl"]


def test_a_recipe_label_naming_no_earlier_stage_is_refused(tmp_path):
    import yaml

    from posttrain.errors import ConfigError
    from posttrain.recipes import load_recipe

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"base": "m", "stages": [
        {"name": "p", "stage": "preferences", "data": "x.jsonl", "label": "ai:@judge"}]}))
    with pytest.raises(ConfigError, match=r"reference '@judge' names no earlier stage"):
        load_recipe(path)


# ---------------------------------------------------------------- errors


def test_an_unknown_label_is_refused_before_any_model_loads(tiny_llama_dir, prompts, tmp_path, capsys):
    assert sample(tiny_llama_dir, prompts, tmp_path / "o.jsonl", "goldd") == 2
    err = capsys.readouterr().err
    assert "--label 'goldd' names no labeller: give `gold`" in err and "ai:JUDGE_DIR" in err
    assert sample(tiny_llama_dir, prompts, tmp_path / "o.jsonl", f"ai:{tmp_path / 'nojudge'}") == 2
    assert "is not a model directory. Write ai:JUDGE_DIR" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_missing_prompts_and_an_existing_out_are_refused(tiny_llama_dir, prompts, tmp_path, capsys):
    assert sample(tiny_llama_dir, tmp_path / "none.jsonl", tmp_path / "o.jsonl", "gold") == 2
    assert "--prompts " in (err := capsys.readouterr().err) and "none.jsonl does not exist" in err
    out = tmp_path / "o.jsonl"
    out.write_text("keep me\n")
    assert sample(tiny_llama_dir, prompts, out, "gold") == 2
    err = capsys.readouterr().err
    assert "--out" in err and "posttrain never replaces existing data unless asked" in err and "--overwrite" in err
    assert out.read_text() == "keep me\n"
    assert sample(tiny_llama_dir, prompts, prompts, "gold", "--overwrite") == 2  # never the input itself
    assert "is the --prompts path itself" in capsys.readouterr().err


def test_gold_needs_the_world_meta_and_n_needs_two(tiny_llama_dir, tmp_path, capsys):
    bare = tmp_path / "bare.jsonl"
    bare.write_text(json.dumps({"prompt": "Hi"}) + "\n")
    assert sample(tiny_llama_dir, bare, tmp_path / "o.jsonl", "gold") == 2
    err = capsys.readouterr().err
    assert "bare.jsonl, line 1: field 'meta' has no 'task', which --label gold needs" in err
    assert sample(tiny_llama_dir, bare, tmp_path / "o.jsonl", "gold", "--n", "1") == 2
    assert "n: " in (err := capsys.readouterr().err) and ">= 2" in err
