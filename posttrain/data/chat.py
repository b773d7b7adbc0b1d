"""Chat templates and the assistant-only loss mask.

The mask is computed from character offsets of the rendered template, never by
guessing token strings: for each assistant turn we render the conversation up
to the turn with the generation prompt (P) and up to the end of the turn (Q);
the characters in [len(P), len(Q)) are the assistant's, end-of-turn marker
included. Tokens whose first character falls in such a span carry loss.
This works for any template that renders a conversation prefix as a prefix of
the full rendering, which we check rather than assume.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from posttrain.errors import PosttrainError

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant", "tool")

# End-of-turn markers of common chat formats (ChatML, Llama 3, Gemma, Phi-3).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")

HOW_TO_ADD_TEMPLATE = (
    "Add one by setting `tokenizer.chat_template = open('template.jinja').read()` and "
    "`tokenizer.save_pretrained(DIR)`, or pass `--set data.chat_template=PATH.jinja`, or "
    "`--set data.chat_template=default` to use posttrain's ChatML template."
)


def default_template() -> str:
    return resources.files("posttrain.templates").joinpath("chatml.jinja").read_text()


def ensure_chat_template(tokenizer, choice: str = "auto") -> str:
    """Give `tokenizer` a chat template according to `choice` and return which one it got.

    choice: "auto" (the tokenizer's own, else posttrain's default ChatML),
    "own" (the tokenizer's own; an error if it has none), "default", or a path to a .jinja file.
    """
    own = getattr(tokenizer, "chat_template", None)
    if choice == "own":
        if not own:
            raise PosttrainError(f"the tokenizer has no chat template. {HOW_TO_ADD_TEMPLATE}")
        return "own"
    if choice == "auto":
        if own:
            return "own"
        log.warning("tokenizer has no chat template; using posttrain's default ChatML template")
        tokenizer.chat_template = default_template()
        return "default"
    if choice == "default":
        tokenizer.chat_template = default_template()
        return "default"
    path = Path(choice)
    if not path.exists():
        raise PosttrainError(
            f"chat_template '{choice}' is neither auto/own/default nor an existing .jinja file."
        )
    tokenizer.chat_template = path.read_text()
    return str(path)


def _render(tokenizer, messages, add_generation_prompt: bool, tools: list[dict] | None = None) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise PosttrainError(f"the tokenizer has no chat template. {HOW_TO_ADD_TEMPLATE}")
    extra = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt, **extra)


def render_messages(tokenizer, messages: list[dict], add_generation_prompt: bool, tools: list[dict] | None = None) -> str:
    """The chat template's text of `messages`; `tools` (function schemas) go to templates that render them."""
    return _render(tokenizer, messages, add_generation_prompt, tools)


def end_of_turn_token_ids(tokenizer) -> tuple[int, ...]:
    """The tokens that end a model's turn: the tokenizer's EOS and whichever end-of-turn markers it has.

    A chat model ends its reply with the template's marker (<|im_end|> in ChatML), never
    with EOS, so stopping on EOS alone runs every reply to the token limit. The engine
    stops on these, and a chat-trained artifact lists them as eos for plain `generate`.
    """
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    vocab = tokenizer.get_vocab()
    ids += [vocab[t] for t in END_OF_TURN_TOKENS if t in vocab]
    return tuple(dict.fromkeys(ids))


def stop_generation_at_end_of_turn(model, tokenizer) -> None:
    """Set `model.generation_config` so plain transformers `generate` stops where a chat turn ends.

    Saved with the model as generation_config.json: eos_token_id lists every end-of-turn
    token (see `end_of_turn_token_ids`), and pad_token_id is set, so a chat-trained
    artifact stops after its reply without posttrain's engine.
    """
    gc = model.generation_config
    gc.eos_token_id = list(end_of_turn_token_ids(tokenizer))
    gc.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def render_generation_prompt(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> str:
    """The text a model continues to write the next assistant turn."""
    return _render(tokenizer, messages, add_generation_prompt=True, tools=tools)


def render_chat(tokenizer, messages: list[dict]) -> str:
    return _render(tokenizer, messages, add_generation_prompt=False)


@dataclass
class TokenizedChat:
    input_ids: list[int]
    loss_mask: list[int]  # 1 where the token is predicted with loss


def assistant_char_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Render `messages` and return (text, [(start, end), ...]) of every assistant turn."""
    full = render_chat(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not (full.startswith(before) and full.startswith(upto) and upto.startswith(before)):
            raise PosttrainError(
                "the chat template does not render a conversation prefix as a prefix of the whole "
                "conversation (some templates rewrite earlier turns), so assistant tokens cannot be "
                "located by offsets. Use a template without that behaviour, or train on the final "
                "turn only by splitting conversations."
            )
        spans.append((len(before), len(upto)))
    return full, spans


def tokenize_chat(tokenizer, messages: list[dict], assistant_only: bool = True) -> TokenizedChat:
    """Tokenize a conversation; loss_mask marks assistant tokens (or every token if not assistant_only)."""
    text, spans = assistant_char_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    if not assistant_only:
        return TokenizedChat(ids, [1] * len(ids))
    mask = []
    for start, end in enc["offset_mapping"]:
        inside = any(s <= start < e for s, e in spans) if end > start else False
        mask.append(1 if inside else 0)
    return TokenizedChat(ids, mask)


def tokenize_prompt_completion(tokenizer, prompt: str, completion: str, completion_only: bool = True) -> TokenizedChat:
    """Raw text pair: loss on the completion (plus EOS) only."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    mask = ([0] * len(p) if completion_only else [1] * len(p)) + [1] * len(c)
    return TokenizedChat(p + c, mask)
