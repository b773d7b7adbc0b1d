"""The preference benches' fairness checks (bench/common.py, used by bench/reward_vs_trl.py and bench/dpo_vs_trl.py).

posttrain's pairs (read_preferences) and TRL's own preprocessing (RewardTrainer / DPOTrainer._prepare_dataset) give
the same token ids, and for DPO the same answer mask, each answer trained up to its end-of-turn token; TRL's reward
model reads each score at the chat's last token, as posttrain does. Checked with the shipped model's template and
with a tiny model carrying SmolLM2's template (a default system prompt) whose pad token is its EOS (<|im_end|>);
deliberately wrong masks, token ids and pooled positions are caught. Also: the held-out scoring functions agree
with posttrain's own forward passes. Run with OMP_NUM_THREADS=1; well under 30 seconds.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402  (bench/common.py)
import make_model  # noqa: E402  (bench/make_model.py)

pytest.importorskip("trl")

U, A = "user", "assistant"
ROWS = [
    dict(prompt=[dict(role=U, content="What is the capital of France?")],
         chosen=[dict(role=A, content="The capital of France is Paris.")],
         rejected=[dict(role=A, content="The capital of France is Lyon.")]),
    dict(prompt=[dict(role="system", content="Answer in one word."), dict(role=U, content="Capital of Japan?")],
         chosen=[dict(role=A, content="Tokyo.")], rejected=[dict(role=A, content="Well, it depends.")]),
    dict(prompt=[dict(role=U, content="Two plus two?"), dict(role=A, content="Four."),
                 dict(role=U, content="And three plus five?\n\nShow the sum.")],
         chosen=[dict(role=A, content="3 + 5 = 8.\n")], rejected=[dict(role=A, content="I cannot help with that.")],
         meta={"task": "math"}),
]


@pytest.fixture(scope="module")
def world_rows(tmp_path_factory):
    from posttrain.world.build import build_world

    out = tmp_path_factory.mktemp("world")
    build_world(0, out, 0.05)
    return [json.loads(line) for line in (out / "preferences.jsonl").read_text().splitlines()][:40]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    smol = make_model.make_bench_model(tmp_path_factory.mktemp("smol") / "m", "tiny", "smollm2", "eos")
    return {"shipped": common.DEFAULT_MODEL, "smollm2-pad-eos": smol}


def _pairs(tmp_path, tok, rows, kind):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    clean = common.preference_rows(path)
    assert all(set(r) == set(common.PAIR_KEYS) for r in clean)  # meta never reaches TRL
    pairs = common.posttrain_pairs(tok, path, 512)[0]
    return pairs, common.trl_prepared(kind, tok, clean, 512)


def test_template_facts(models):
    assert common.template_facts(common.load_tokenizer(models["shipped"])) == "its own chat template"
    smol = common.template_facts(common.load_tokenizer(models["smollm2-pad-eos"]))
    assert "default system prompt" in smol and "pad token = EOS ('<|im_end|>')" in smol


@pytest.mark.parametrize("name", ["shipped", "smollm2-pad-eos"])
@pytest.mark.parametrize("kind", ["reward", "dpo"])
def test_posttrain_and_trl_train_on_the_same_pairs(tmp_path, models, world_rows, name, kind):
    tok = common.load_tokenizer(models[name])
    pairs, trl_rows = _pairs(tmp_path, tok, ROWS + world_rows, kind)
    check = common.check_pairs(tok, pairs, trl_rows, kind)
    assert check.problems is None, check.problems
    assert check.pairs == len(ROWS) + len(world_rows) and not check.differ and not check.read_elsewhere
    if kind == "dpo":  # every answer is one trained span up to its end-of-turn token
        assert check.turns.turns == check.turns.ended == 2 * check.pairs
    if name == "smollm2-pad-eos":  # the default system prompt is in every sequence that has no system message
        text = tok.decode(pairs[0].chosen.input_ids)
        assert text.startswith(f"<|im_start|>system\n{make_model.SMOLLM2_SYSTEM_PROMPT}<|im_end|>")
        assert tok.decode(pairs[1].chosen.input_ids).count(make_model.SMOLLM2_SYSTEM_PROMPT) == 0


@pytest.mark.parametrize("name", ["shipped", "smollm2-pad-eos"])
def test_trl_collated_batches_train_and_read_the_right_tokens(tmp_path, models, name):
    """In TRL's padded batches: DPO trains each answer up to its end of turn and never padding (pad may be EOS);
    the reward is read at each chat's last real token."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference as DPOCollator
    from trl.trainer.reward_trainer import DataCollatorForPreference as RewardCollator

    tok = common.load_tokenizer(models[name])
    _, dpo_rows = _pairs(tmp_path, tok, ROWS, "dpo")
    batches = [(b["input_ids"], b["completion_mask"].bool(), b["attention_mask"] == 0)
               for b in common.trl_pair_batches(dpo_rows, DPOCollator(pad_token_id=tok.pad_token_id), 3)]
    assert batches[0][2].any()  # there is padding to get wrong
    assert common.loss_turns(tok, batches).problems(2 * len(ROWS)) is None
    _, reward_rows = _pairs(tmp_path, tok, ROWS, "reward")
    collator = RewardCollator(pad_token_id=tok.pad_token_id)
    assert common.reward_read_elsewhere(common.trl_pair_batches(reward_rows, collator, 3), tok.pad_token_id) == 0


def test_a_wrong_answer_mask_is_caught(tmp_path, models):
    """A mask built from token ids (pad id = no loss) drops the end-of-turn token when pad = EOS: caught."""
    tok = common.load_tokenizer(models["smollm2-pad-eos"])
    pairs, trl_rows = _pairs(tmp_path, tok, ROWS, "dpo")
    broken = copy.deepcopy(pairs)
    ex = broken[1].chosen
    ex.loss_mask = [m and t != tok.pad_token_id for t, m in zip(ex.input_ids, ex.loss_mask)]
    assert ex.loss_mask != pairs[1].chosen.loss_mask
    check = common.check_pairs(tok, broken, trl_rows, "dpo")
    assert check.differ == [1] and "different answer masks" in check.problems
    # answers that stop before their end-of-turn token on both sides (the same tokens and mask): caught too
    short = copy.deepcopy(pairs)
    rows = [dict(r) for r in trl_rows]
    for p, r in zip(short, rows):
        p.chosen.input_ids, p.chosen.loss_mask = p.chosen.input_ids[:-2], p.chosen.loss_mask[:-2]  # <|im_end|>\n
        r["chosen_ids"] = list(r["chosen_ids"])[:-2]
    unended = common.check_pairs(tok, short, rows, "dpo")
    assert not unended.differ and unended.turns.ended == 3 and "end-of-turn" in unended.problems
    # TRL's prompt boundary one token late: caught too
    shifted = [dict(r) for r in trl_rows]
    shifted[0] = dict(shifted[0], prompt_ids=list(shifted[0]["prompt_ids"]) + [shifted[0]["chosen_ids"][0]],
                      chosen_ids=list(shifted[0]["chosen_ids"])[1:])
    assert common.check_pairs(tok, pairs, shifted, "dpo").differ == [0]


def test_wrong_tokens_and_a_reward_read_on_padding_are_caught(tmp_path, models):
    tok = common.load_tokenizer(models["smollm2-pad-eos"])
    pairs, trl_rows = _pairs(tmp_path, tok, ROWS, "reward")
    other = [dict(r) for r in trl_rows]
    other[2] = dict(other[2], rejected_ids=list(other[2]["rejected_ids"])[:-1])
    assert common.check_pairs(tok, pairs, other, "reward").differ == [2]
    fewer = common.check_pairs(tok, pairs, trl_rows.select(range(2)), "reward")
    assert "posttrain keeps 3 pairs and TRL 2" in fewer.problems
    # chats that end on the pad token (<|im_end|> = EOS = pad, no trailing newline): transformers would read the
    # reward before it, posttrain at it
    cut = copy.deepcopy(pairs)
    for p in cut:
        for ex in (p.chosen, p.rejected):
            ex.input_ids, ex.loss_mask = ex.input_ids[:-1], ex.loss_mask[:-1]
    assert cut[0].chosen.input_ids[-1] == tok.pad_token_id
    ended = [dict(chosen_ids=p.chosen.input_ids, rejected_ids=p.rejected.input_ids) for p in cut]
    check = common.check_pairs(tok, cut, ended, "reward")
    assert check.read_elsewhere == 6 and "pad token" in check.problems
    from trl.trainer.reward_trainer import DataCollatorForPreference

    batches = common.trl_pair_batches(ended, DataCollatorForPreference(pad_token_id=tok.pad_token_id), 3)
    assert common.reward_read_elsewhere(batches, tok.pad_token_id) == 6


def test_heldout_scores_match_posttrain_forward(tmp_path, models):
    """The benches' held-out scoring (plain transformers, one unpadded sequence at a time) gives what posttrain's
    packed forward passes give: summed answer log-probs, and the reward at the last token."""
    import dpo_vs_trl
    import reward_vs_trl

    from posttrain.data.preferences import collate_pairs
    from posttrain.modeling.forward import sequence_logps, sequence_scores
    from posttrain.models import load_model

    path = models["smollm2-pad-eos"]
    tok = common.load_tokenizer(path)
    pairs, _ = _pairs(tmp_path, tok, ROWS, "dpo")
    batch = collate_pairs(pairs, tok.pad_token_id, 512)
    policy = load_model(path, "cpu")
    ours = torch.tensor(dpo_vs_trl.answer_logps(policy, pairs))
    with torch.no_grad():
        packed = sequence_logps(policy, batch, 2 * len(pairs))[0].view(-1, 2)
    assert torch.allclose(ours, packed.double().float(), rtol=1e-4, atol=1e-3)
    zero = dpo_vs_trl.heldout_dpo(policy, pairs, ours.tolist(), 0.1)  # the policy is its own reference
    assert abs(zero["heldout_dpo_loss"] - 0.6931) < 1e-3 and zero["heldout_accuracy"] == 0.0
    torch.manual_seed(0)
    scorer = load_model(path, "cpu", head="score")
    scorer.config.pad_token_id = tok.pad_token_id
    with torch.no_grad():
        scores = sequence_scores(scorer, batch, 2 * len(pairs)).view(-1, 2)
    held = reward_vs_trl.heldout_rewards(scorer, pairs)
    assert abs(held["heldout_margin"] - float((scores[:, 0] - scores[:, 1]).mean())) < 1e-4
    assert held["heldout_accuracy"] == float((scores[:, 0] > scores[:, 1]).float().mean())


def test_split_and_fingerprint(tmp_path, models):
    src = tmp_path / "prefs.jsonl"
    src.write_text("".join(json.dumps(ROWS[i % 3]) + "\n" for i in range(10)))
    train, held = common.split_preferences(src, tmp_path, 3, seed=0)
    assert len(common.preference_rows(train)) == 7 and len(common.preference_rows(held)) == 3
    assert common.split_preferences(src, tmp_path, 3, seed=0) == (train, held)
    from posttrain.models import load_model

    a, b = load_model(models["smollm2-pad-eos"], "cpu"), load_model(models["smollm2-pad-eos"], "cpu")
    assert common.weights_fingerprint(a) == common.weights_fingerprint(b)
