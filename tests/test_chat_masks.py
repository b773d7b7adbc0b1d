"""The assistant-only loss mask is an invariant: exactly the assistant turns carry loss, on any template."""

import pytest

from posttrain.data.chat import ensure_chat_template, tokenize_chat
from posttrain.data.packing import Example, collate, pack_examples
from posttrain.errors import PosttrainError

from conftest import build_tokenizer

LLAMA3_STYLE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}<|im_end|>\n\n{{ m['content'] }}<|endoftext|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant<|im_end|>\n\n{% endif %}"
)
INST_STYLE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% elif m['role'] == 'system' %}<<SYS>>{{ m['content'] }}<</SYS>>"
    "{% elif m['role'] == 'tool' %}[TOOL]{{ m['content'] }}[/TOOL]"
    "{% else %} {{ m['content'] }}<|endoftext|>{% endif %}{% endfor %}"
)
TEMPLATES = {"chatml": None, "llama3_style": LLAMA3_STYLE, "inst_style": INST_STYLE}

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "Call the calculator for 2+2."},
    {"role": "assistant", "content": "Calling it."},
    {"role": "tool", "content": "RESULT 4"},
    {"role": "assistant", "content": "It is 4."},
]


@pytest.fixture(params=list(TEMPLATES))
def tok(request):
    t = build_tokenizer()
    if TEMPLATES[request.param]:
        t.chat_template = TEMPLATES[request.param]
    return t


def masked_text(tok, ids, mask):
    return tok.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False)


def test_only_assistant_tokens_carry_loss(tok):
    tc = tokenize_chat(tok, CHAT)
    text = masked_text(tok, tc.input_ids, tc.loss_mask)
    for m in CHAT:
        if m["role"] == "assistant":
            assert m["content"] in text
        else:  # user, system and tool-injected content carry no loss
            assert m["content"] not in text
    unmasked = tok.decode([i for i, m in zip(tc.input_ids, tc.loss_mask) if not m], skip_special_tokens=False)
    assert "Paris" not in unmasked and "It is 4" not in unmasked


def test_assistant_turn_end_marker_is_learned(tok):
    """The model must learn to stop: the token that ends an assistant turn carries loss."""
    tc = tokenize_chat(tok, CHAT[:3])
    ids = tc.input_ids
    last_target = max(i for i, m in enumerate(tc.loss_mask) if m)
    assert tok.convert_ids_to_tokens(ids[last_target]) in ("<|im_end|>", "<|endoftext|>") or \
        tok.decode(ids[last_target:last_target + 1]).strip() == ""


def test_chatml_each_assistant_im_end_carries_loss_and_other_turns_carry_none():
    """On ChatML, by token id and not by a whitespace fallback: the turn-ending <|im_end|> of every
    assistant turn is a target, and no token of a system, user or tool turn is."""
    tok = build_tokenizer()  # posttrain's default ChatML template
    tc = tokenize_chat(tok, CHAT)
    ids, mask = tc.input_ids, tc.loss_mask
    im_start, im_end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    starts = [i for i, t in enumerate(ids) if t == im_start]
    assert len(starts) == len(CHAT)
    for message, start, stop in zip(CHAT, starts, starts[1:] + [len(ids)]):
        turn = range(start, stop)
        end = next(i for i in turn if ids[i] == im_end)
        if message["role"] == "assistant":
            assert mask[end] == 1, f"the <|im_end|> closing assistant turn '{message['content']}' carries no loss"
            assert mask[start] == 0  # the <|im_start|>assistant header is the prompt, not a target
            content = [i for i in turn if i < end and mask[i]]
            assert tok.decode([ids[i] for i in content]) == message["content"]
        else:
            assert not any(mask[i] for i in turn), f"the {message['role']} turn carries loss"


def test_full_loss_marks_every_token(tok):
    tc = tokenize_chat(tok, CHAT, assistant_only=False)
    assert all(tc.loss_mask) and len(tc.loss_mask) == len(tc.input_ids)


def test_padding_and_example_starts_carry_no_loss():
    tok = build_tokenizer()
    a, b = tokenize_chat(tok, CHAT[:3]), tokenize_chat(tok, CHAT)
    rows = pack_examples([Example(a.input_ids, a.loss_mask), Example(b.input_ids, b.loss_mask)], 1024)
    short = pack_examples([Example(a.input_ids, a.loss_mask)], 1024)
    batch = collate(rows + short, tok.pad_token_id)
    pad = batch["input_ids"].shape[1] - len(short[0])
    assert pad > 0
    assert batch["loss_mask"][1, -pad:].sum() == 0
    starts = (batch["position_ids"] == 0)
    assert (batch["loss_mask"][starts] == 0).all()


def test_missing_template_error_says_how_to_add_one():
    tok = build_tokenizer()
    tok.chat_template = None
    with pytest.raises(PosttrainError, match="chat_template"):
        ensure_chat_template(tok, "own")
    assert ensure_chat_template(tok, "auto") == "default"
    assert "<|im_start|>" in tok.apply_chat_template(CHAT[:2], tokenize=False)
