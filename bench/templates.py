"""The model's chat template on both sides of a bench, and checks that they train on the same tokens.

    load_tokenizer(model)          the tokenizer as posttrain's stages take it (its own template, chat_template=auto)
    template_facts(tok)            what that template and the tokens do that matters here, in words
    trl_chat_template(tok)         the template TRL gets: the model's own, with {% generation %} markers
    derive_marked_template(tok)    that template derived from a per-turn (ChatML-like) template's renders
    check_chats(tok, chats, tmpl)  posttrain's tokens and loss mask == TRL's, and every reply's end of turn trained
    LossTurns, loss_turns(tok, batches)   in collated batches: replies trained up to their end of turn, none on padding
    posttrain_batches(...), trl_batches(...)   each side's batches, as its own collator makes them, for loss_turns
    assistant_turns(data)          assistant messages in a conversational .jsonl file
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


def load_tokenizer(model_dir):
    """The model's tokenizer as posttrain's stages use it: its own chat template (`chat_template=auto`: posttrain's
    ChatML only for a tokenizer without one), pad = EOS where it has no pad token."""
    from posttrain.data.chat import ensure_chat_template
    from posttrain.models import load_tokenizer as posttrain_load_tokenizer

    tok = posttrain_load_tokenizer(model_dir)
    ensure_chat_template(tok, "auto")
    return tok


def template_facts(tok) -> str:
    """What the tokenizer's chat template and tokens do that matters here, in words."""
    probe = "PROBE-USER-TEXT"
    text = tok.apply_chat_template([dict(role="user", content=probe)], tokenize=False)
    facts = ["its own chat template"]
    if "system" in text.split(probe)[0]:
        facts.append("which inserts a default system prompt")
    if tok.pad_token_id == tok.eos_token_id:
        facts.append(f"pad token = EOS ({tok.pad_token!r})")
    return ", ".join(facts)


def trl_chat_template(tok) -> tuple[str, str]:
    """(template with {% generation %} markers, where it came from) for TRL's assistant_only_loss.

    In order: the model's own template if it has the markers ("own"); TRL's training version of it where TRL
    knows the template (`get_training_chat_template`, what SFTTrainer itself swaps in: "trl"); else one derived
    from the model's template (`derive_marked_template`: "derived"). check_chats verifies it on the data.
    """
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    own = tok.chat_template
    if has_generation_markers(own):
        return own, "own"
    try:
        patched = get_training_chat_template(tok)
    except ValueError:  # a template TRL cannot patch
        patched = None
    if patched:
        return patched, "trl"
    return derive_marked_template(tok), "derived"


_PROBE = ("SYSTEM-TEXT-1", "USER-TEXT-1", "ASSISTANT-TEXT-1", "USER-TEXT-2", "ASSISTANT-TEXT-2")


def _split(text: str, parts) -> list[str]:
    """`text` cut around each of `parts` (in order, each once): the len(parts)+1 pieces between them."""
    out, rest = [], text
    for p in parts:
        if rest.count(p) != 1:
            raise ValueError(f"the template does not render the message {p!r} once, verbatim")
        head, rest = rest.split(p)
        out.append(head)
    return out + [rest]


def derive_marked_template(tok) -> str:
    """The tokenizer's chat template rewritten with {% generation %} around each assistant reply.

    For templates that render every turn as PREFIX(role) + content + END(role), as ChatML and its variants do: the
    text before the first turn (with a system message, and without one, where a template may insert a default
    system prompt), the user prefix and end, the assistant's end and the generation prompt are read off renders of
    probe chats, and written into a template that renders the same text with the markers around each reply and
    its end (content + <|im_end|>\\n in ChatML), as TRL's own training templates place them. Raises ValueError
    when the template's renders do not have that shape; check_chats then verifies the result on the real data.
    """
    s, u1, a1, u2, a2 = _PROBE

    def render(messages, gen=False):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)

    conv = [dict(role="user", content=u1), dict(role="assistant", content=a1),
            dict(role="user", content=u2), dict(role="assistant", content=a2)]
    # With a system message the render is x0 S x1 U1 x2 A1 x3 U2 x4 A2 x5: x0 = the start + the system prefix,
    # x1 = the system end + the user prefix, x2 = x4 = the user end + the generation prompt, x3 = the assistant
    # end + the user prefix, x5 = the assistant end. Without one it is y0 U1 x2 A1 x3 U2 x4 A2 x5, where y0 = the
    # start (a default system turn, say) + the user prefix.
    x0, x1, x2, x3, x4, x5 = _split(render([dict(role="system", content=s)] + conv), _PROBE)
    y0, *y_rest = _split(render(conv), _PROBE[1:])
    first = render(conv[:1])
    prompt = render(conv[:1], True)
    gen_prompt = prompt[len(first):]
    assistant_end = x5
    user_prefix = x3[len(assistant_end):]
    shape_ok = (y_rest == [x2, x3, x4, x5] and prompt.startswith(first) and gen_prompt and x2 == x4
                and x2.endswith(gen_prompt) and x3.startswith(assistant_end)
                and x1.endswith(user_prefix) and y0.endswith(user_prefix))
    if not shape_ok:
        raise ValueError("the chat template does not render each turn as prefix + content + end (ChatML-like), so "
                         "no generation-marked version can be derived from it; give TRL one by hand.")

    def q(text):  # a Jinja string literal
        return json.dumps(text, ensure_ascii=False)

    user_end = x2[:len(x2) - len(gen_prompt)]
    system_end = x1[:len(x1) - len(user_prefix)]
    head_other = y0[:len(y0) - len(user_prefix)]  # before a first turn that is not a system message
    return "\n".join([  # every tag trims the whitespace around it: the newlines only make the template readable
        "{%- set prefix = {'user': " + q(user_prefix) + ", 'assistant': " + q(gen_prompt) + "} -%}",
        "{%- set end = {'system': " + q(system_end) + ", 'user': " + q(user_end) + "} -%}",
        "{%- for message in messages -%}",
        "  {%- if loop.first and message['role'] == 'system' -%}{{ " + q(x0) + " }}",
        "  {%- elif loop.first -%}{{ " + q(head_other) + " + prefix[message['role']] }}",
        "  {%- else -%}{{ prefix[message['role']] }}{%- endif -%}",
        "  {%- if message['role'] == 'assistant' -%}",
        "    {%- generation -%}{{ message['content'] + " + q(assistant_end) + " }}{%- endgeneration -%}",
        "  {%- else -%}{{ message['content'] + end[message['role']] }}{%- endif -%}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}{{ " + q(gen_prompt) + " }}{%- endif -%}",
    ])


def end_of_turn_ids(tok) -> set[int]:
    """EOS and the end-of-turn markers the tokenizer has (<|im_end|>, <|eot_id|>...), as posttrain counts them."""
    from posttrain.data.chat import end_of_turn_token_ids

    return set(end_of_turn_token_ids(tok))


@dataclass
class LossTurns:
    """Runs of consecutive loss tokens (one per assistant reply) in collated batches, counted."""

    turns: int = 0  # runs of loss tokens
    ended: int = 0  # runs whose last non-blank token is an end-of-turn token (EOS / <|im_end|>)
    on_padding: int = 0  # loss tokens at padding positions (pad and EOS may be the same id)

    def problems(self, expected_turns: int) -> str | None:
        """None when each of the `expected_turns` replies is one run, trained up to its end-of-turn token."""
        if self.turns == expected_turns == self.ended and not self.on_padding:
            return None
        return (f"{self.turns} trained spans for {expected_turns} assistant turns, {self.ended} ending on an "
                f"end-of-turn token, {self.on_padding} loss tokens on padding")


def loss_turns(tok, batches, counts: LossTurns | None = None) -> LossTurns:
    """Count, over `batches` of (input_ids [B, T], loss [B, T] bool, padding [B, T] bool or None), the trained
    spans and whether each ends on an end-of-turn token (trailing blank tokens such as "\\n" skipped): when the
    pad token is EOS, a mask built from token ids instead of positions would drop the reply's last token."""
    counts = counts or LossTurns()
    end_ids, blank = end_of_turn_ids(tok), {}

    def is_blank(i):
        if i not in blank:
            blank[i] = i not in end_ids and tok.decode([i]).strip() == ""
        return blank[i]

    for ids, loss, pad in batches:
        ids, loss = ids.tolist(), loss.tolist()
        if pad is not None:
            counts.on_padding += sum(a and b for row_l, row_p in zip(loss, pad.tolist()) for a, b in zip(row_l, row_p))
        for row, mask in zip(ids, loss):
            t = 0
            while t < len(row):
                if not mask[t]:
                    t += 1
                    continue
                start = t
                while t < len(row) and mask[t]:
                    t += 1
                last = t - 1
                while last > start and is_blank(row[last]):
                    last -= 1
                counts.turns += 1
                counts.ended += row[last] in end_ids
    return counts


def posttrain_batches(rows, batch_size: int, pad_id: int):
    """(input_ids, loss, padding) of posttrain's packed rows, collated as its trainer collates them, for loss_turns."""
    import torch

    from posttrain.data.packing import collate

    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        b = collate(chunk, pad_id)
        width = b["input_ids"].shape[1]
        yield b["input_ids"], b["loss_mask"].bool(), torch.tensor([[t >= len(r) for t in range(width)] for r in chunk])


def trl_batches(dataset, collator, batch_size: int):
    """(input_ids, labels != -100, padding) of a TRL trainer's prepared dataset through its own collator."""
    for i in range(0, len(dataset), batch_size):
        b = collator([dataset[j] for j in range(i, min(i + batch_size, len(dataset)))])
        yield b["input_ids"], b["labels"] != -100, (b["attention_mask"] == 0) if "attention_mask" in b else None


@dataclass
class ChatCheck:
    """check_chats' findings over a list of chats."""

    lengths: list[int] = field(default_factory=list)  # tokens per chat
    differ: list[int] = field(default_factory=list)  # chats whose TRL tokens or assistant mask differ from posttrain's
    turns: LossTurns = field(default_factory=LossTurns)
    assistant_turns: int = 0
    first_problem: str = ""

    @property
    def problems(self) -> str | None:
        if self.differ:
            return (f"{len(self.differ)} of {len(self.lengths)} chats tokenize or mask differently for TRL "
                    f"(first: chat {self.differ[0]}: {self.first_problem})")
        return self.turns.problems(self.assistant_turns)


def check_chats(tok, chats: list[list[dict]], template: str) -> ChatCheck:
    """Both sides train on the same tokens with the same loss mask: for every chat, posttrain's `tokenize_chat`
    (the model's own template, assistant spans found by offsets) against transformers' rendering of `template`
    with `return_assistant_tokens_mask` (what TRL's SFTTrainer runs); and every assistant reply's mask runs up to
    its end-of-turn token (<|im_end|>, which may also be EOS and pad)."""
    import torch

    from posttrain.data.chat import tokenize_chat

    check, ours_masks = ChatCheck(), []
    for i, messages in enumerate(chats):
        ours = tokenize_chat(tok, messages)
        trl = tok.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        check.lengths.append(len(ours.input_ids))
        check.assistant_turns += sum(m["role"] == "assistant" for m in messages)
        if ours.input_ids != list(trl["input_ids"]) or ours.loss_mask != list(trl["assistant_masks"]):
            if not check.differ:
                same_text = tok.decode(ours.input_ids) == tok.decode(trl["input_ids"])
                check.first_problem = ("same text, different assistant masks" if same_text else
                                       f"different text: {tok.decode(trl['input_ids'])[:200]!r}")
            check.differ.append(i)
        ours_masks.append((torch.tensor([ours.input_ids]), torch.tensor([ours.loss_mask]).bool(), None))
    loss_turns(tok, ours_masks, check.turns)
    return check


def assistant_turns(data_path) -> int:
    """Assistant messages in a conversational .jsonl file."""
    return sum(m["role"] == "assistant" for line in Path(data_path).read_text().splitlines()
               for m in json.loads(line)["messages"])
