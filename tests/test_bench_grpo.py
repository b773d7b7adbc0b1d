"""bench/grpo_vs_trl.py: its options, TRL's reward function, the iteration clock, and a 2-iteration run of each side.

Both sides run in this process (not the bench's subprocesses) on a tiny model with SmolLM2's template and pad = EOS:
each reports a time for every iteration, a steady-state median, its time split, a reward per iteration, and TRL's
side proves it tokenized every prompt as posttrain does and stops on the same tokens. Run with OMP_NUM_THREADS=1;
about 20 seconds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402  (bench/common.py)
import grpo_vs_trl as bench  # noqa: E402  (bench/grpo_vs_trl.py)
import make_model  # noqa: E402  (bench/make_model.py)

pytest.importorskip("trl")


def test_options():
    a = bench.parse_args([])
    assert (a.prompts_per_step, a.group_size, a.max_new_tokens, a.steps, a.warmup_steps) == (4, 8, 32, 4, 1)
    assert (a.batch_size, a.loss_type, a.lr, a.temperature, a.side) == (32, "dapo", 1e-5, 1.0, None)
    assert bench.parse_args(["--prompts-per-step", "3", "--group-size", "2", "--batch-size", "2"]).batch_size == 2
    for bad in (["--group-size", "1"], ["--batch-size", "5"], ["--loss-type", "sapo"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


def test_reward_is_posttrains_numeric_verifier():
    completions = [[dict(role="assistant", content=t)] for t in ("7 + 5 = 12", "The answer is 13.", "no idea")]
    assert bench.numeric_reward(completions, ["12", "12", "12"], trainer_state=None) == [1.0, 0.0, 0.0]


def test_iteration_seconds_run_from_step_end_to_step_end():
    clock = common.StepClock(lambda: 0)
    clock.ticks = [(10.5, 0, 0.0), (12.0, 0, 0.0), (12.25, 0, 0.0)]
    assert bench.iteration_seconds(clock, 10.0) == [0.5, 1.5, 0.25]


def test_world_prompts():
    rows = bench.prompt_rows(None)  # the world's arithmetic rows, without its refusal rows (1 in 4)
    assert len(rows) == 1500 and all(set(r) == {"prompt", "answer"} and r["answer"].lstrip("-").isdigit() for r in rows)
    assert rows[0]["prompt"][0]["role"] == "user"


def test_a_prompt_file_row_without_an_answer_is_named(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "1 + 1?", "answer": 2}\n\n{"prompt": "Hi"}\n')
    with pytest.raises(SystemExit, match=r"p.jsonl, line 3: the row has no 'answer'"):
        bench.prompt_rows(str(path))
    path.write_text('{"prompt": "1 + 1?", "answer": 2}\n')
    assert bench.prompt_rows(str(path)) == [{"prompt": [{"role": "user", "content": "1 + 1?"}], "answer": "2"}]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both sides, 2 iterations of the same 2 prompts x G 2 (a pool of P prompts, the bench's default)."""
    root = tmp_path_factory.mktemp("grpo_bench")
    model = make_model.make_bench_model(root / "tiny", "tiny", "smollm2", "eos")
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in bench.prompt_rows(None)[:2]))
    args = bench.parse_args(["--model", str(model), "--steps", "2", "--warmup-steps", "1", "--prompts-per-step", "2",
                             "--group-size", "2", "--max-new-tokens", "6", "--dtype", "fp32", "--data", str(data)])
    return args, {common.OURS: bench.run_posttrain(args), bench.TRL: bench.run_trl(args)}


@pytest.mark.parametrize("side", bench.SIDES)
def test_each_side_reports_its_iterations(runs, side):
    r = runs[1][side]
    assert r["iterations"] == 2 and r["timed_steps"] == 1
    assert len(r["iteration_s"]) == 2 and all(t > 0 for t in r["iteration_s"])
    assert r["median_s"] == r["iteration_s"][1] and abs(r["timed_s"] - r["median_s"]) < 1e-6
    assert set(r["split"]) == {"generate", "reward", "update", "other"} and r["split"]["generate"] > 0
    assert r["split"]["update"] > 0 and len(r["rewards"]) == 2 and 0 <= r["final_reward"] <= 1
    assert all(1 <= n <= 6 for n in r["completion_lengths"])  # mean tokens per completion, stop token included
    assert r["params"] > 0 and r["train_peak_mb"] > 0
    if side == bench.TRL:
        assert r["checked"] == "prompt token ids of all 2 rows, stop tokens [3]"  # <|im_end|>, also pad and EOS


def test_both_sides_train_on_the_same_prompt_tokens(runs):
    """Each iteration's prompt + completion tokens minus its completions leave G x the prompts' tokens, the same on
    both sides: they answered the same prompts, tokenized alike."""
    from posttrain.data.chat import render_generation_prompt

    args, res = runs
    tok = common.load_tokenizer(args.model)
    prompts = [r["prompt"] for r in bench.prompt_rows(args.data)]
    want = args.group_size * sum(len(tok(render_generation_prompt(tok, p), add_special_tokens=False)["input_ids"])
                                 for p in prompts)
    for r in res.values():
        assert [round(x) for x in r["prompt_tokens"]] == [want, want]


def test_report_has_both_sides_and_their_ratio(runs):
    args, res = runs
    env = dict(device="CPU (1 threads)", torch="t", transformers="x", trl="y", dtype="fp32", matmul_peak_flops=1e14)
    summary = {s: bench.summarise([dict(r, tokens_per_s=r["timed_tokens"] / r["timed_s"])], 1e14)
               for s, r in res.items()}
    pt = summary[common.OURS]
    assert pt["steps_per_s"] == pytest.approx(1 / pt["median_s"]) and 0 < pt["mfu"] < 1
    text = bench.report(summary, env, args)
    assert "| posttrain | " in text and "| trl | " in text
    assert f"posttrain / trl: steps/s x{pt['steps_per_s'] / summary[bench.TRL]['steps_per_s']:.2f}" in text
    assert "the same 2 on both sides every iteration" in text and "stop tokens [3]" in text
