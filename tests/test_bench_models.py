"""Benchmark models (bench/make_model.py) and the chat-template handling the benches share (bench/common.py).

Tiny models with each template x pad variant: they load with plain transformers, the SmolLM2 template
inserts its default system prompt only when a chat has none, pad="eos" makes pad and EOS <|im_end|>, and
posttrain's assistant mask equals TRL's generation-marked mask (the check sft_vs_trl.py runs), also in
batches as each side's collator pads them (a pad that is EOS must not take the reply's last token's loss).
Run with OMP_NUM_THREADS=1; a few seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402  (bench/common.py)
import make_model  # noqa: E402  (bench/make_model.py)

VARIANTS = [(t, p) for t in make_model.TEMPLATES for p in make_model.PADS]

CHATS = [
    [dict(role="user", content="What is the capital of France?"),
     dict(role="assistant", content="The capital of France is Paris.")],
    [dict(role="system", content="Answer in one word."), dict(role="user", content="Capital of Japan?"),
     dict(role="assistant", content="Tokyo.")],
    [dict(role="user", content="Two plus two?"), dict(role="assistant", content="Four."),
     dict(role="user", content="And three plus five?\n\nShow the sum."),
     dict(role="assistant", content="3 + 5 = 8.\n")],
    [dict(role="system", content="Be brief."), dict(role="user", content="Hello!"),
     dict(role="assistant", content="Hello! How can I help you today?"), dict(role="user", content="Nothing."),
     dict(role="assistant", content="Alright.")],
]
TURNS = sum(m["role"] == "assistant" for c in CHATS for m in c)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_models")
    return {(t, p): make_model.make_bench_model(root / f"{t}-{p}", "tiny", t, p) for t, p in VARIANTS}


@pytest.mark.parametrize("template,pad", VARIANTS)
def test_loads_with_plain_transformers(models, template, pad):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = models[template, pad]
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path))
    assert (path / "model.safetensors").exists()
    assert model.config.vocab_size == len(tok)
    assert (model.config.eos_token_id, model.config.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
    assert model.generation_config.eos_token_id == tok.eos_token_id
    ids = tok.apply_chat_template(CHATS[0], tokenize=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tok)) and torch.isfinite(logits).all()


def test_weights_are_seeded(tmp_path):
    from safetensors.torch import load_file

    a = load_file(make_model.make_bench_model(tmp_path / "a", "tiny", seed=3) / "model.safetensors")
    b = load_file(make_model.make_bench_model(tmp_path / "b", "tiny", seed=3) / "model.safetensors")
    c = load_file(make_model.make_bench_model(tmp_path / "c", "tiny", seed=4) / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_135m_shape_is_smollm2_135m():
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(make_model.BASE))
    with torch.device("meta"):  # no weights: the shape only
        model = LlamaForCausalLM(make_model.model_config("135m", tok))
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
            c.intermediate_size, c.vocab_size) == (576, 30, 9, 3, 1536, 49152)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 134.5


@pytest.mark.parametrize("pad", make_model.PADS)
def test_smollm2_template_inserts_the_default_system_prompt(models, pad):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(models["smollm2", pad]))
    default = make_model.SMOLLM2_SYSTEM_PROMPT
    without = tok.apply_chat_template(CHATS[0], tokenize=False)
    assert without.startswith(f"<|im_start|>system\n{default}<|im_end|>\n<|im_start|>user\n")
    assert without.count(default) == 1
    given = tok.apply_chat_template(CHATS[1], tokenize=False)
    assert default not in given and given.startswith("<|im_start|>system\nAnswer in one word.<|im_end|>\n")
    prompt = tok.apply_chat_template(CHATS[0][:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    chatml = AutoTokenizer.from_pretrained(str(models["chatml", pad]))
    assert default not in chatml.apply_chat_template(CHATS[0], tokenize=False)


@pytest.mark.parametrize("template", make_model.TEMPLATES)
def test_pad_eos_makes_pad_and_eos_the_end_of_turn_token(models, template):
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(str(models[template, "eos"]))
    assert eos.pad_token == eos.eos_token == "<|im_end|>" and eos.pad_token_id == eos.eos_token_id
    own = AutoTokenizer.from_pretrained(str(models[template, "own"]))
    assert (own.eos_token, own.pad_token) == ("<|endoftext|>", "<|pad|>") and own.pad_token_id != own.eos_token_id


@pytest.mark.parametrize("template,pad", VARIANTS)
def test_posttrain_and_trl_masks_select_the_same_tokens(models, template, pad):
    from posttrain.data.chat import tokenize_chat

    tok = common.load_tokenizer(models[template, pad])
    marked, source = common.trl_chat_template(tok)
    assert source == "derived"
    for chat in CHATS:  # the marked template renders the model's own text, with or without the generation prompt
        for gen in (False, True):
            assert (tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen, chat_template=marked)
                    == tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen))
    check = common.check_chats(tok, CHATS, marked)  # what sft_vs_trl.py runs on every chat of its data
    assert check.problems is None, check.problems
    assert check.turns.ended == check.assistant_turns == TURNS
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    for chat in CHATS:  # each reply's <|im_end|> carries loss; the user's and system's do not
        ours = tokenize_chat(tok, chat)
        ends = [m for i, m in zip(ours.input_ids, ours.loss_mask) if i == im_end]
        default_system = template == "smollm2" and chat[0]["role"] != "system"
        roles = [m["role"] for m in chat] + (["system"] if default_system else [])
        assert sorted(ends) == sorted(int(r == "assistant") for r in roles)


@pytest.mark.parametrize("template,pad", VARIANTS)
def test_collated_batches_train_each_reply_to_its_end_of_turn(models, template, pad):
    """Both sides' collators, padded and packed: every reply's last token keeps its loss, padding has none, even
    where the pad id is the end-of-turn id; a mask made from token ids instead would be caught."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from posttrain.data.chat import tokenize_chat
    from posttrain.data.packing import Example, pack_examples, unpacked_rows

    tok = common.load_tokenizer(models[template, pad])
    marked, _ = common.trl_chat_template(tok)
    examples = [Example(c.input_ids, c.loss_mask) for c in (tokenize_chat(tok, m) for m in CHATS)]
    rows, packed = unpacked_rows(examples), pack_examples(examples, 128)
    for shaped in (rows, packed):
        counts = common.loss_turns(tok, common.posttrain_batches(shaped, 2, tok.pad_token_id))
        assert counts.problems(TURNS) is None, counts.problems(TURNS)

    trl_rows = []
    for m in CHATS:
        out = tok.apply_chat_template(m, chat_template=marked, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        trl_rows.append(dict(input_ids=list(out["input_ids"]),
                             labels=[i if a else -100 for i, a in zip(out["input_ids"], out["assistant_masks"])]))
    for padding_free in (False, True):
        collator = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=padding_free)
        counts = common.loss_turns(tok, common.trl_batches(trl_rows, collator, 2))
        assert counts.problems(TURNS) is None, counts.problems(TURNS)

    # The mistake the check is there for: labels masked by token id (pad id) rather than by position.
    collator = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)
    by_id = []
    for ids, loss, padding in common.trl_batches(trl_rows, collator, 2):
        by_id.append((ids, loss & (ids != tok.pad_token_id), padding))
    counts = common.loss_turns(tok, by_id)
    assert (counts.problems(TURNS) is None) == (pad == "own")


def test_known_and_unsupported_templates():
    """A template TRL knows gets TRL's own training version; one that is not per-turn cannot be derived; a
    ChatML variant with quotes, backslashes and non-ASCII text in its default system prompt is."""
    from trl.chat_template_utils import qwen2_5_chat_template

    tok = common.load_tokenizer(make_model.BASE)
    odd = 'Tu es \\"Émile\\" 😀 \\\\ \t'
    tok.chat_template = make_model.SMOLLM2_TEMPLATE.replace(make_model.SMOLLM2_SYSTEM_PROMPT, odd)
    marked, source = common.trl_chat_template(tok)
    assert source == "derived" and common.check_chats(tok, CHATS, marked).problems is None
    assert "Émile" in tok.apply_chat_template(CHATS[0], tokenize=False, chat_template=marked)
    tok.chat_template = qwen2_5_chat_template
    assert common.trl_chat_template(tok)[1] == "trl"
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
                         "{% else %}{{ m['content'] }}</s>{% endif %}{% endfor %}")
    with pytest.raises(ValueError, match="prefix \\+ content \\+ end"):
        common.derive_marked_template(tok)
