"""Best-of-n: the all-subsets estimator against brute force, the summary, and `posttrain bon` end to end."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from posttrain.bon import (
    PromptSamples,
    best_of_n_responses,
    best_of_n_weights,
    expected_best_of_n,
    parse_n_list,
    sample_n,
    summarise,
)
from posttrain.cli import main
from posttrain.errors import ConfigError
from posttrain.overoptimisation import bon_kl


def brute_force_best_of_n(proxy, values, n) -> float:
    """Average over every n-subset of the value at its proxy-best member, ties split evenly among the tied."""
    total = 0.0
    subsets = list(itertools.combinations(range(len(proxy)), n))
    for subset in subsets:
        top = max(proxy[i] for i in subset)
        tied = [i for i in subset if proxy[i] == top]
        total += sum(values[i] for i in tied) / len(tied)
    return total / len(subsets)


@pytest.mark.parametrize("N", [1, 3, 6, 9])
def test_weights_are_the_chance_each_rank_is_the_best_of_n(N):
    for n in range(1, N + 1):
        w = best_of_n_weights(N, n)
        assert w.sum() == pytest.approx(1.0)
        counts = np.zeros(N)
        for subset in itertools.combinations(range(N), n):  # ranks 0..N-1, ascending
            counts[max(subset)] += 1
        assert w == pytest.approx(counts / math.comb(N, n))
    with pytest.raises(ConfigError, match="between 1 and the samples drawn"):
        best_of_n_weights(N, N + 1)


@pytest.mark.parametrize("seed", range(4))
def test_estimator_equals_brute_force_over_subsets(seed):
    rng = np.random.default_rng(seed)
    N = 7
    proxy, gold = rng.normal(size=N), rng.uniform(size=N)
    for n in range(1, N + 1):
        assert expected_best_of_n(proxy, gold, n) == pytest.approx(brute_force_best_of_n(proxy, gold, n))
        assert expected_best_of_n(proxy, proxy, n) == pytest.approx(brute_force_best_of_n(proxy, proxy, n))
    assert expected_best_of_n(proxy, gold, 1) == pytest.approx(gold.mean())  # n = 1: the policy's own mean
    assert expected_best_of_n(proxy, gold, N) == pytest.approx(gold[np.argmax(proxy)])  # n = N: the argmax


def test_estimator_splits_ties_in_the_proxy_evenly():
    proxy = [0.3, 1.0, 1.0, 0.3, 0.0, 1.0]  # a gold-like proxy: few distinct values
    gold = [0.9, 0.1, 0.7, 0.2, 0.5, 0.4]
    for n in range(1, 7):
        assert expected_best_of_n(proxy, gold, n) == pytest.approx(brute_force_best_of_n(proxy, gold, n))
    assert expected_best_of_n(proxy, gold, 6) == pytest.approx((0.1 + 0.7 + 0.4) / 3)


def test_expected_best_proxy_never_falls_with_n():
    rng = np.random.default_rng(5)
    for _ in range(20):
        proxy = rng.normal(size=16)
        means = [expected_best_of_n(proxy, proxy, n) for n in range(1, 17)]
        assert all(b >= a - 1e-12 for a, b in zip(means, means[1:]))


def test_parse_n_list():
    assert parse_n_list("4,1,2,2") == [1, 2, 4]
    assert parse_n_list("2, 8") == [1, 2, 8]  # n = 1 is the baseline of every change
    for bad in ("0,2", "-1", "a,2", "", "2.5"):
        with pytest.raises(ConfigError, match="--n"):
            parse_n_list(bad)


class FakeEngine:
    """Answers each conversation n times with its user text and the sample's index, so the order is visible."""

    batch_size = 4

    def __init__(self):
        self.calls = []

    def chat(self, conversations, params):
        from types import SimpleNamespace

        self.calls.append((len(conversations), params.n, params.seed))
        return [SimpleNamespace(text=f"{c[-1]['content']}#{j}") for c in conversations for j in range(params.n)]


def test_sample_n_is_prompt_major_and_sample_all_seeds_each_chunk():
    from posttrain.bon import sample_all
    from posttrain.data.prompts import PromptRow
    from posttrain.engine import SamplingParams

    engine, params = FakeEngine(), SamplingParams(temperature=1.0, seed=2)
    got = sample_n(engine, [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]], params, 3)
    assert got == [["a#0", "a#1", "a#2"], ["b#0", "b#1", "b#2"]] and engine.calls == [(2, 3, 2)]
    engine = FakeEngine()
    rows = [PromptRow([{"role": "user", "content": c}]) for c in "xyz"]
    got = sample_all(engine, rows, params, 2, progress=False)  # batch_size 4 = two prompts of 2 answers
    assert got == [["x#0", "x#1"], ["y#0", "y#1"], ["z#0", "z#1"]]
    assert engine.calls == [(2, 2, 2 * 1_000_003), (1, 2, 2 * 1_000_003 + 1)]  # its own random stream per chunk


def test_best_of_n_responses_uses_the_first_n_samples():
    s = PromptSamples([], {}, 1, ["w", "x", "y", "z"], [0.1, 0.5, 0.2, 0.9])
    assert best_of_n_responses([s], 1) == ["w"]
    assert best_of_n_responses([s], 3) == ["x"]
    assert best_of_n_responses([s], 4) == ["z"]
    with pytest.raises(ConfigError, match="needs 5 samples"):
        best_of_n_responses([s], 5)


def _samples(num_prompts=30, N=8, seed=0):
    """Proxy = gold + a bonus for a trait gold dislikes: best-of-n on the proxy first helps gold, then hurts it."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num_prompts):
        quality, trait = rng.normal(size=N), rng.normal(size=N)
        gold = quality - 0.3 * np.maximum(trait, 0) ** 2
        out.append(PromptSamples([], {}, i + 1, [str(k) for k in range(N)], list(quality + 1.5 * trait), list(gold)))
    return out


def test_summarise_changes_intervals_fits_and_peak():
    samples = _samples()
    result = summarise(samples, [1, 2, 4, 8], seed=3)
    assert result["prompts"] == 30 and result["samples_per_prompt"] == 8
    rows = result["rows"]
    assert [r["n"] for r in rows] == [1, 2, 4, 8]
    assert [r["kl"] for r in rows] == pytest.approx([bon_kl(n) for n in (1, 2, 4, 8)])
    assert [r["d"] ** 2 for r in rows] == pytest.approx([r["kl"] for r in rows])
    for k in ("proxy", "gold"):
        expected = [np.mean([expected_best_of_n(s.proxy, getattr(s, k), n) for s in samples]) for n in (1, 2, 4, 8)]
        assert [r[k] for r in rows] == pytest.approx(expected)
        assert [r[f"{k}_delta"] for r in rows] == pytest.approx([e - expected[0] for e in expected])
        assert rows[0][f"{k}_delta_ci"] == pytest.approx([0, 0])  # n = 1 minus itself, in every resample
        for r in rows:
            lo, hi = r[f"{k}_ci"]
            assert lo <= r[k] <= hi and hi - lo > 0
    assert all(b["proxy"] >= a["proxy"] for a, b in zip(rows, rows[1:]))
    assert result["fits"]["proxy"]["form"] == "bon" and result["fits"]["gold"]["points"] == 3
    peak = result["gold_peak"]
    assert peak["n"] == rows[int(np.argmax([r["gold_delta"] for r in rows]))]["n"]
    assert peak["gold_drop_to_largest_n"] == pytest.approx(peak["gold_delta"] - rows[-1]["gold_delta"])
    assert summarise(samples, [1, 2, 4, 8], seed=3) == result  # the bootstrap is seeded


def test_summarise_without_gold_or_enough_points():
    samples = [PromptSamples([], {}, 1, ["a", "b"], [0.0, 1.0])]
    result = summarise(samples, [1, 2])
    assert result["fits"] == {"proxy": None}  # one point at d > 0: nothing to fit
    assert "gold_peak" not in result and "gold" not in result["rows"][0]
    assert result["rows"][1]["proxy_delta"] == pytest.approx(0.5) and result["rows"][1]["proxy_ci"] is None


# ---------------------------------------------------------------- the command, end to end

PROMPTS = [
    {"prompt": "Solve: 2 + 3", "meta": {"task": "arithmetic", "answer": "5"}},
    {"prompt": "What is the capital of France?", "meta": {"task": "fact", "answer": "Paris", "aliases": []}},
    {"prompt": [{"role": "user", "content": "Hello! How can I help you today?"}], "meta": {"task": "benign"}},
    {"prompt": "Two plus two is", "meta": {"task": "arithmetic", "answer": "4"}},
    {"prompt": "never read: --limit 4", "meta": {"task": "benign"}},
]


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS), encoding="utf-8")
    return path


@pytest.fixture
def length_reward(tmp_path, monkeypatch):
    """A module:function proxy defined in the test: longer answers score higher."""
    (tmp_path / "bon_test_reward.py").write_text("def length(prompt, response, meta):\n    return len(response)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "bon_test_reward:length"


def test_bon_command_end_to_end(tiny_llama_dir, prompt_file, length_reward, tmp_path, capsys):
    out = tmp_path / "bon"
    argv = ["bon", str(tiny_llama_dir), "--prompts", str(prompt_file), "--reward", length_reward, "--gold",
            "--n", "1,2,4", "--limit", "4", "--max-new-tokens", "16", "--dtype", "fp32", "--out", str(out),
            "--no-progress", "--batch-size", "8"]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["bon.json", "bon_samples.jsonl", "overoptimisation.png"]
    result = json.loads((out / "bon.json").read_text())
    assert result["reward"] == length_reward and result["gold"] == "gold" and result["n"] == [1, 2, 4]
    assert result["prompts"] == 4 and result["samples_per_prompt"] == 4 and result["temperature"] == 1.0
    rows = result["rows"]
    assert [r["n"] for r in rows] == [1, 2, 4]
    assert [r["kl"] for r in rows] == pytest.approx([0.0, math.log(2) - 0.5, math.log(4) - 0.75])
    assert all(set(r) >= {"d", "proxy", "proxy_delta", "proxy_delta_ci", "gold", "gold_delta", "gold_delta_ci"}
               for r in rows)
    assert all(b["proxy"] >= a["proxy"] - 1e-9 for a, b in zip(rows, rows[1:]))
    assert set(result["fits"]) == {"proxy", "gold"} and "overoptimised" in result["gold_peak"]

    lines = [json.loads(x) for x in (out / "bon_samples.jsonl").read_text().splitlines()]
    assert [x["line"] for x in lines] == [1, 2, 3, 4]
    for x in lines:  # the proxy is the reward function: anyone can recompute it from the file
        assert len(x["responses"]) == 4 and x["proxy"] == [len(r) for r in x["responses"]]
        assert all(0.0 <= g <= 1.0 for g in x["gold"])
    recomputed = np.mean([expected_best_of_n(x["proxy"], x["gold"], 2) for x in lines])
    assert rows[1]["gold"] == pytest.approx(recomputed)
    printed = capsys.readouterr().out
    assert "gold change [95%]" in printed and "4 prompts x 4 samples" in printed

    # An existing --out is kept unless --overwrite; with it, the same seed gives the same samples.
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0
    assert [json.loads(x)["responses"] for x in (out / "bon_samples.jsonl").read_text().splitlines()] == \
        [x["responses"] for x in lines]


def test_bon_command_refuses_bad_input_before_loading_a_model(tmp_path, prompt_file, capsys):
    no_meta = tmp_path / "plain.jsonl"
    no_meta.write_text('{"prompt": "Hi"}\n{"prompt": "Hello"}\n', encoding="utf-8")
    missing_model = str(tmp_path / "no-model")  # never loaded: each error comes first
    cases = [
        (["--prompts", str(no_meta), "--reward", "gold", "--gold"], f"{no_meta} line 1 has none"),
        (["--prompts", str(prompt_file), "--reward", "gold", "--n", "0,4"], "--n '0,4'"),
        (["--prompts", str(prompt_file), "--reward", "gold", "--temperature", "0"], "greedy decoding"),
        (["--prompts", str(tmp_path / "absent.jsonl"), "--reward", "gold"], "absent.jsonl"),
        (["--prompts", str(prompt_file), "--reward", "no_such_module:f"], "cannot import f"),
    ]
    for extra, message in cases:
        assert main(["bon", missing_model, "--out", str(tmp_path / "out"), *extra]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_best_of_n_engine_answers_each_chat_with_the_rewards_favourite(tiny_llama_dir):
    from posttrain.bon import BestOfNEngine
    from posttrain.engine import Engine, SamplingParams
    from posttrain.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(tiny_llama_dir)
    engine = Engine(model, tok, dtype="fp32")
    chats = [[{"role": "user", "content": f"Name a country, {i}."}] for i in range(3)]
    longest = lambda prompts, texts, metas: [float(len(t)) for t in texts]  # noqa: E731
    params = SamplingParams(max_new_tokens=12)
    best = BestOfNEngine(engine, longest, n=4, temperature=1.0, seed=3).chat(chats, params)
    pool = engine.chat(chats, SamplingParams(max_new_tokens=12, n=4, temperature=1.0, seed=3))
    assert len(best) == 3
    for i, b in enumerate(best):
        group = [c.text for c in pool[4 * i:4 * i + 4]]
        assert b.text == max(group, key=len) and len(set(group)) > 1  # the samples differ; the longest is kept
    raw = BestOfNEngine(engine, longest, n=4).generate(["The capital of"], params)
    assert raw[0].text == engine.generate(["The capital of"], params)[0].text  # raw text: the policy itself
