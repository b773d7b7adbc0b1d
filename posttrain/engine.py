"""The one generation engine: chat, evals and RL rollouts all sample through here.

The algorithm, per batch of prompts of similar length:
  1. prefill: left-pad the prompts, run them once, keep the KV cache; with n samples per prompt the
     prompt's cache rows (and last logits) are then copied to its n samples, so a prompt is prefilled once;
  2. step loop: pick one token per row from the last logits (greedy, or sampled
     with temperature / top-k / top-p), record it with its log-probability,
     and feed it back through the cache. A row that finishes leaves the live batch
     (its cache rows are dropped), so late steps compute only the rows still generating.

Every token a row receives is appended in that loop with a mask bit: 1 for a
token the model sampled. A token the runtime injects goes through the same loop
from `Row.forced` with mask 0, so loss masking and tool use share one mechanism.

Tool use (an Engine given a posttrain.tools.ToolRunner): when a row ends its turn with a
<tool_call>, the runner runs the tool and the chat template's rendering of the `tool` message and
of the next assistant prompt is queued on the row as forced tokens; the row goes on sampling after
them, up to the runner's max_calls calls. max_new_tokens counts sampled tokens only; injected ones
count against the context alone. The completion's `text` is the last turn, what a grader reads.

A prompt must leave room for the reply in the model's context (posttrain.context_window): an overlong
one is an error, or cut from the left with `overlong_prompt="truncate"`; one that fits with less room
than max_new_tokens gets a shorter reply budget. Each case is announced on stderr.

Under bf16 autocast the transformer body runs in bf16 but the LM head runs in
fp32 (`head_in_fp32`), so the log-probabilities the engine reports, and samples
from, are the fp32 log-softmax of fp32 logits.
"""

from __future__ import annotations

import inspect
import os
from collections import deque
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from posttrain.console import notice
from posttrain.context_window import (
    OverlongPromptError,
    bounded_ids,
    check_overlong_mode,
    context_length,
    describe,
    fit,
    max_token_chars,
)
from posttrain.data.chat import end_of_turn_token_ids, render_generation_prompt
from posttrain.errors import PosttrainError
from posttrain.modeling.decode import Decoder
from posttrain.models import autocast, head_in_fp32, resolve_dtype


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    """Most tokens generated per prompt; a row that reaches it finishes with reason "length"."""
    temperature: float = 0.0
    """Softmax temperature; 0 means greedy (argmax)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (1 = off)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = off)."""
    stop_strings: tuple[str, ...] = ()
    """Generation of a row stops once its text contains one of these; the text is cut before it."""
    stop_token_ids: tuple[int, ...] | None = None
    """Token ids that end a row. None: the tokenizer's eos plus its chat end-of-turn token if any."""
    seed: int = 0
    """Seed of the engine's own random generator: the same seed gives the same samples."""
    n: int = 1
    """Samples per prompt, returned prompt-major (sample j of prompt i at i * n + j). The prompt is
    prefilled once and its KV cache copied to the n samples."""
    share_prefill: bool = True
    """With n > 1: prefill each prompt once and copy its cache (True), or repeat the prompt n times
    and prefill every copy, as `generate(num_return_sequences=n)` does (False; for comparisons)."""

    def __post_init__(self):
        problems = [
            f"max_new_tokens must be >= 0, got {self.max_new_tokens}" if self.max_new_tokens < 0 else "",
            f"temperature must be >= 0 (0 = greedy), got {self.temperature}" if self.temperature < 0 else "",
            f"top_p must be in (0, 1], got {self.top_p}" if not 0 < self.top_p <= 1 else "",
            f"top_k must be >= 0 (0 = off), got {self.top_k}" if self.top_k < 0 else "",
            f"n (samples per prompt) must be >= 1, got {self.n}" if self.n < 1 else "",
        ]
        if any(problems):
            raise PosttrainError("; ".join(p for p in problems if p) + ".")


@dataclass
class Completion:
    prompt_ids: list[int]
    token_ids: list[int]  # generated ids, the stop token included if one ended the row
    text: str  # decoded without special tokens or the stop token, cut before any stop string
    logprobs: list[float]  # raw model log-softmax (temperature 1, no filtering) of each token in token_ids
    mask: list[int]  # 1 = sampled by the model; 0 = injected by the runtime (tool results)
    finish_reason: str  # "stop" | "length"
    turns: list[tuple[str, str]] = field(default_factory=list)  # (assistant text, tool result) per tool call
    full_text: str = ""  # every token decoded, tool turns included (== text without tools)


@dataclass
class Row:
    """One sequence being generated."""

    prompt_ids: list[int]
    max_new_tokens: int  # the reply budget: params.max_new_tokens, or less where the context leaves less room
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    forced: deque = field(default_factory=deque)  # tokens to inject instead of sampling (mask 0)
    finish_reason: str | None = None
    conversation: list[dict] | None = None  # the messages before the reply (for tool turns)
    room: int = 1 << 30  # most tokens, sampled and injected, the context has room for
    sampled: int = 0  # tokens sampled so far (mask 1)
    turn_start: int = 0  # where the current assistant turn starts in token_ids
    turns: list = field(default_factory=list)  # (assistant text, tool result) of each tool call so far


# A row stops where a turn ends: the same tokens a chat-trained artifact lists as eos for `generate`.
default_stop_token_ids = end_of_turn_token_ids


def pick_tokens(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    """Choose one token per row from logits [B, V]: greedy, or sampled after temperature, top-k and top-p."""
    if params.temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    if params.temperature != 1.0:
        logits = logits / params.temperature
    if params.top_k > 0:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the first always stays).
        drop = probs.cumsum(dim=-1) - probs >= params.top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    return draw(logits.softmax(dim=-1), generator)


def draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row of probs [B, V], by inverse CDF: one uniform number per row, found in the running sum.

    torch.multinomial draws one sample by racing V exponential variates per row, which on a CPU costs more
    than a small model's whole step (73 ms against 3.5 ms here for 32 rows of 49,152 tokens). A token of
    probability 0 (filtered out) does not raise the running sum, so it is never the first entry above u.
    """
    cdf = probs.cumsum(dim=-1)  # on CPU the sum accumulates in double: no drift over a large vocabulary
    total = cdf[:, -1:]
    u = torch.rand(total.shape, generator=generator, device=probs.device, dtype=cdf.dtype) * total
    # u * total can round up to total itself; keep it below, or no entry would lie above it.
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)


class Engine:
    def __init__(self, model, tokenizer, batch_size: int = 32, dtype: str = "auto", overlong_prompt: str = "error",
                 tools=None, fast_decode: bool | None = None):
        """overlong_prompt: what to do with a prompt that leaves no room for a reply in the model's
        context: "error" (raise OverlongPromptError naming it) or "truncate" (keep its last tokens).
        tools: a posttrain.tools.ToolRunner; chat() then renders the tools and runs the model's calls.
        fast_decode: run the steps after the prefill through posttrain.modeling.decode where the model's
        family allows (the same logits up to float rounding, without transformers' per-call overhead).
        None: yes, unless the environment sets POSTTRAIN_FAST_DECODE=0."""
        check_overlong_mode(overlong_prompt)
        self.model, self.tokenizer, self.batch_size, self.tools = model, tokenizer, batch_size, tools
        self.overlong_prompt = overlong_prompt
        self.context = context_length(model, tokenizer)  # None: unknown, prompts are not checked
        self._max_token_chars: int | None = None
        self.device = next(model.parameters()).device
        self.dtype = resolve_dtype(dtype, self.device)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # transformers 5 renamed the cache argument `past_key_values` to `cache`; accept both.
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        forward_args = inspect.signature(type(base).forward).parameters
        self.cache_arg = "cache" if "cache" in forward_args else "past_key_values"
        self.keep_last_logits = "logits_to_keep" in forward_args
        # Decode steps straight from the weights where the family allows (posttrain.modeling.decode);
        # False keeps the transformers forward for every step.
        self.fast_decode = os.environ.get("POSTTRAIN_FAST_DECODE", "1") != "0" if fast_decode is None else fast_decode

    def chat(self, conversations: list[list[dict]], params: SamplingParams, labels: list[str] | None = None
             ) -> list[Completion]:
        """Generate the next assistant turn of each conversation (rendered with the chat template):
        params.n turns per conversation, prompt-major, as `generate`."""
        if self.tools is None:
            prompts = [render_generation_prompt(self.tokenizer, m) for m in conversations]
        else:
            prompts = [render_generation_prompt(self.tokenizer, *self.tools.prompt_messages(m)) for m in conversations]
        names = labels or [_excerpt(f"conversation {i}, last message", str(m[-1].get("content", "")) if m else "")
                           for i, m in enumerate(conversations)]
        if self.tools is None:
            return self.generate(prompts, params, names)
        return self.generate(prompts, params, names, conversations=conversations)

    def encode_prompt(self, prompt: str) -> tuple[list[int], bool]:
        """(ids, whole): the prompt's token ids, or, for a prompt surely longer than the context, those of a
        tail of it still longer than the context (whole=False). Megabytes of text are not tokenised."""
        encode = lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if self.context is None:
            return encode(prompt), True
        if self._max_token_chars is None:
            self._max_token_chars = max_token_chars(self.tokenizer)
        return bounded_ids(encode, prompt, self.context, self._max_token_chars)

    def generate(self, prompts: list[str] | list[list[int]], params: SamplingParams,
                 labels: list[str] | None = None, conversations: list[list[dict]] | None = None) -> list[Completion]:
        """Continue each prompt params.n times: len(prompts) * n completions, sample j of prompt i at i * n + j.
        Strings are tokenized as written (no BOS added: chat templates write their own).

        labels name the prompts in errors and notices (default "prompt 0", "prompt 1", ...).
        conversations: the messages each prompt renders, for tool turns (chat() passes them).
        """
        measured = [self.encode_prompt(p) if isinstance(p, str) else (list(p), True) for p in prompts]
        for i, (p, _) in enumerate(measured):
            if not p:
                raise PosttrainError(f"prompt {i} is empty; give the model at least one token to continue.")
        names = labels or [_excerpt(f"prompt {i}", p) if isinstance(p, str) else f"prompt {i}"
                           for i, p in enumerate(prompts)]
        ids, budgets = self._fit_to_context(prompts, measured, params, names)
        convs = conversations or [None] * len(ids)
        # copies: the rows one prefilled prompt feeds. Without a shared prefill each sample is its own prompt.
        copies = params.n if params.share_prefill else 1
        if copies < params.n:
            ids, budgets = [p for p in ids for _ in range(params.n)], [b for b in budgets for _ in range(params.n)]
            convs = [c for c in convs for _ in range(params.n)]
        stop_ids = params.stop_token_ids
        stop_ids = set(default_stop_token_ids(self.tokenizer) if stop_ids is None else stop_ids)
        generator = torch.Generator(self.device).manual_seed(params.seed)
        # Longest first, so batches hold similar lengths (little padding) and memory peaks early.
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        per_batch = max(1, self.batch_size // copies)  # batch_size counts the rows sampled at once
        results: list[Completion | None] = [None] * (len(ids) * copies)
        was_training = self.model.training
        self.model.eval()
        try:
            # no_grad, not inference_mode: under inference_mode autocast re-casts every weight to bf16 at every
            # step (its cast cache is off there): 59 ms of casts a step on the 135M bench model here, 9 ms without.
            # (The cache keeps only weights that require grad; a frozen model's are still cast at each step.)
            with torch.no_grad(), autocast(self.dtype, self.device), head_in_fp32(self.model, self.device):
                decoder = Decoder.for_model(self.model, self.dtype) if self.fast_decode else None
                for start in range(0, len(order), per_batch):
                    batch = order[start : start + per_batch]
                    rows = [Row(prompt_ids=ids[i], max_new_tokens=budgets[i], conversation=convs[i],
                                room=self.context - len(ids[i]) if self.context else 1 << 30)
                            for i in batch for _ in range(copies)]
                    self._generate_batch(rows, params, stop_ids, generator, copies, decoder)
                    for k, row in enumerate(rows):
                        results[batch[k // copies] * copies + k % copies] = self._completion(row, params, stop_ids)
        finally:
            self.model.train(was_training)
        return results

    def _fit_to_context(self, prompts, measured, params: SamplingParams, names: list[str]):
        """(prompt ids, reply budget) of each prompt, cut or budgeted to fit the context (see the module doc)."""
        truncate, context = self.overlong_prompt == "truncate", self.context
        plans = [fit(len(ids), params.max_new_tokens, context, truncate) for ids, _ in measured]
        overlong = [i for i, plan in enumerate(plans) if plan is None]
        if overlong:
            i = overlong[0]
            ids, whole = measured[i]
            size = (f"is {len(ids)} tokens long" if whole else
                    f"is longer than {context} tokens ({len(prompts[i]):,} characters)")
            others = f" ({len(overlong) - 1} more prompts are too long as well)" if len(overlong) > 1 else ""
            keep = fit(len(ids), params.max_new_tokens, context, truncate=True)[0]
            raise OverlongPromptError(
                f"{names[i]} {size}, but the model's context is {context} tokens and the reply needs at least "
                f"one of them{others}. Shorten the prompt, or pass --overlong truncate (Engine overlong_prompt="
                f"'truncate') to keep only its last {keep} tokens.")
        cut = [i for i, (ids, _) in enumerate(measured) if plans[i][0] < len(ids)]
        cut_set = set(cut)
        short = [i for i, plan in enumerate(plans) if plan[1] < params.max_new_tokens and i not in cut_set]
        if cut:
            keep, room = plans[cut[0]]
            notice(f"cut {describe([names[i] for i in cut])} to the last {keep} tokens, leaving {room} for the "
                   f"reply in the model's context of {context} tokens (--overlong truncate)")
        if short:
            verb = "leaves" if len(short) == 1 else "leave"
            notice(f"{describe([names[i] for i in short])} {verb} room for only {min(plans[i][1] for i in short)} "
                   f"of the {params.max_new_tokens} new tokens asked (max_new_tokens) in the model's context of "
                   f"{context} tokens; the reply stops where the context ends")
        return ([ids[len(ids) - plan[0]:] for (ids, _), plan in zip(measured, plans)],
                [plan[1] for plan in plans])

    def _forward(self, input_ids, attention_mask, position_ids, cache):
        """Run the model on new tokens after `cache` (None: a new one, for the prefill).

        Returns the logits of the last position [B, V] and the KV cache (a DynamicCache).
        """
        kwargs = {self.cache_arg: cache, "use_cache": True}
        if self.keep_last_logits:
            kwargs["logits_to_keep"] = 1  # the prompt's other positions need no vocabulary projection
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        return out.logits[:, -1, :], getattr(out, self.cache_arg)

    def _generate_batch(self, rows: list[Row], params, stop_ids: set[int], generator, copies: int = 1,
                        decoder: Decoder | None = None) -> None:
        """Generate `rows` in place: every `copies` consecutive rows share one prompt, prefilled once.
        With a `decoder` the steps after the prefill run through it on the prefill's cache."""
        if max(r.max_new_tokens for r in rows) <= 0:
            for row in rows:
                row.finish_reason = "length"
            return
        prompts = [r.prompt_ids for r in rows[::copies]]
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=self.device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        # Positions count real tokens only, so a left-padded prompt sees the same positions as an unpadded one.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits, cache = self._forward(input_ids, attention_mask, position_ids, None)
        positions = position_ids[:, -1]
        if copies > 1:  # each prompt's state, copied to its samples (prompt-major, as the rows are)
            cache.batch_repeat_interleave(copies)
            logits, attention_mask, positions = (t.repeat_interleave(copies, dim=0)
                                                 for t in (logits, attention_mask, positions))
        if decoder is not None:
            decoder.start(cache, attention_mask, room=max(r.max_new_tokens for r in rows))
            cache = None

        live = list(rows)  # the rows still generating, in the order of the tensors' rows
        while True:
            tokens = pick_tokens(logits, params, generator)
            injected = [k for k, row in enumerate(live) if row.forced]  # rows taking a runtime token (mask 0)
            if injected:
                tokens[injected] = torch.tensor([live[k].forced.popleft() for k in injected], device=self.device)
            # Raw model log-probabilities (temperature 1, unfiltered, from the fp32 head): what RL ratios and
            # calibration need. The fused log_softmax beats logsumexp + gather on CPU (2.4 against 4.3 ms for
            # 32 rows of 49,152 tokens here), so it stays.
            logprobs = F.log_softmax(logits.float(), dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
            for k, (row, tok, lp) in enumerate(zip(live, tokens.tolist(), logprobs.tolist())):
                row.token_ids.append(tok)
                row.mask.append(0 if k in injected else 1)
                row.sampled += row.mask[-1]
                row.logprobs.append(lp)
                if self.tools is not None and row.mask[-1] == 1 and tok in stop_ids:
                    self._call_tool(row)
                row.finish_reason = self._finish_reason(row, params, stop_ids)
            keep = [k for k, row in enumerate(live) if row.finish_reason is None]
            if not keep:
                break
            if len(keep) < len(live):  # finished rows leave the batch: later steps skip their work
                index = torch.tensor(keep, device=self.device)
                if decoder is not None:
                    decoder.select(index)
                else:
                    cache.batch_select_indices(index)
                tokens, attention_mask, positions = tokens[index], attention_mask[index], positions[index]
                live = [live[k] for k in keep]
            positions = positions + 1
            if decoder is not None:
                logits = decoder.step(tokens, positions)
            else:
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(live), 1)], dim=-1)
                logits, cache = self._forward(tokens[:, None], attention_mask, positions[:, None], cache)
        for row in rows:
            row.finish_reason = row.finish_reason or "length"

    def _call_tool(self, row: Row) -> None:
        """The row just ended its turn: if the turn calls a tool, queue the tool's answer and the next
        assistant prompt as forced tokens (when they fit the context and the runner allows another call)."""
        if row.conversation is None or len(row.turns) >= self.tools.max_calls:
            return
        turn = self.tokenizer.decode(row.token_ids[row.turn_start:-1], skip_special_tokens=True)
        result = self.tools.run(turn)
        if result is None:
            return
        end = self.tokenizer.convert_ids_to_tokens(row.token_ids[-1])
        text = self.tools.injection(row.conversation, row.turns + [(turn, result)], end)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(row.token_ids) + len(ids) < row.room:
            row.turns.append((turn, result))
            row.forced.extend(ids)
            row.turn_start = len(row.token_ids) + len(ids)

    def _finish_reason(self, row: Row, params: SamplingParams, stop_ids: set[int]) -> str | None:
        if row.forced:
            return None  # an injection in progress always completes
        if row.mask[-1] == 1 and row.token_ids[-1] in stop_ids:
            return "stop"
        if params.stop_strings and self._has_stop_string(row.token_ids[row.turn_start:], params.stop_strings):
            return "stop"
        if row.sampled >= row.max_new_tokens or len(row.token_ids) >= row.room:
            return "length"
        return None

    def _has_stop_string(self, token_ids: list[int], stop_strings) -> bool:
        # A stop string that just appeared lies in the last few tokens (a token is at least one byte,
        # a character at most four), so decoding a short tail keeps this check cheap on long outputs.
        window = 4 * max(len(s) for s in stop_strings) + 4
        tail = self.tokenizer.decode(token_ids[-window:], skip_special_tokens=True)
        return any(s in tail for s in stop_strings)

    def _completion(self, row: Row, params: SamplingParams, stop_ids: set[int]) -> Completion:
        ended_by_token = row.finish_reason == "stop" and row.token_ids[-1] in stop_ids
        said = row.token_ids[:-1] if ended_by_token else row.token_ids
        text = self.tokenizer.decode(said[row.turn_start:], skip_special_tokens=True)
        cuts = [text.find(s) for s in params.stop_strings if s in text]
        if cuts:
            text = text[: min(cuts)]
        full = self.tokenizer.decode(said, skip_special_tokens=True) if row.turns else text
        return Completion(row.prompt_ids, row.token_ids, text, row.logprobs, row.mask, row.finish_reason,
                          list(row.turns), full)


def _excerpt(name: str, text: str, n: int = 30) -> str:
    """'prompt 3 ('The start of it...')': names a prompt in errors and notices."""
    return f"{name} ({text[:n]!r}{'...' if len(text) > n else ''})"
