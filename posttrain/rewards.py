"""Rewards an RL stage or best-of-n can optimise: a reward model, the world's gold judge, or your own function.

`load_reward(spec)` turns what a recipe or the command line names into one callable,

    reward(prompts, responses, metas) -> list[float]

where prompts are message lists, responses the generated texts and metas the rows' `meta`
dicts (empty when a row has none). The spec is one of:

- a directory: a reward model written by `posttrain reward` (or any one-label
  `AutoModelForSequenceClassification`); prompt + response are rendered with its chat template
  and scored at the last token, in packed batches;
- `gold`: the built-in world's exact judge (grading.judge), which needs each row's meta;
- `module:function`: a Python function `f(prompt, response, meta) -> float` importable from the
  current directory or the Python path. Its exceptions are not hidden: the caller decides.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from posttrain.errors import ConfigError

Reward = Callable[[list, list, list], list]


def gold_reward(prompts: list, responses: list[str], metas: list[dict]) -> list[float]:
    """The gold judge's score in [0, 1] of each response against its row's meta."""
    from posttrain.grading.judge import judge

    if any(not m or "task" not in m for m in metas):
        raise ConfigError("the reward `gold` needs each prompt row's `meta` (with its `task`), as the built-in "
                          "world's rows have; use a reward model or a function for other data.")
    return [float(judge(m, r).score) for m, r in zip(metas, responses)]


class RewardModel:
    """A one-label sequence classifier scoring prompt + response chats, packed like training batches."""

    def __init__(self, path, device: str = "auto", dtype: str = "auto", batch_size: int = 16, max_length: int = 1024):
        from posttrain.data.chat import ensure_chat_template
        from posttrain.models import load_model, load_tokenizer, resolve_device, resolve_dtype

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.tok = load_tokenizer(path)
        ensure_chat_template(self.tok, "auto")
        self.model = load_model(path, self.device, head="score").eval()
        self.batch_size, self.max_length = batch_size, max_length

    def _example(self, prompt, response: str) -> list[int]:
        from posttrain.data.chat import render_chat

        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        ids = self.tok(render_chat(self.tok, messages + [{"role": "assistant", "content": response}]),
                       add_special_tokens=False)["input_ids"]
        return ids[-self.max_length:]  # the score reads the last token: keep the end of an over-long chat

    @torch.no_grad()
    def __call__(self, prompts: list, responses: list[str], metas: list | None = None) -> list[float]:
        from posttrain.data.packing import Example, collate, pack_examples
        from posttrain.modeling.forward import sequence_scores
        from posttrain.models import autocast

        out: list[float] = []
        for i in range(0, len(responses), self.batch_size):
            ids = [self._example(p, r) for p, r in zip(prompts[i:i + self.batch_size], responses[i:i + self.batch_size])]
            examples = [Example(x, [0] * len(x), k) for k, x in enumerate(ids)]
            batch = collate(pack_examples(examples, max(self.max_length, max(map(len, ids)))), self.tok.pad_token_id)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with autocast(self.dtype, self.device):
                out += sequence_scores(self.model, batch, len(ids)).float().cpu().tolist()
        return out


def python_reward(spec: str) -> Reward:
    """`module:function` -> a reward calling f(prompt, response, meta) per row."""
    module_name, _, fn_name = spec.partition(":")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # the current directory, as `python -m` does
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"reward '{spec}': cannot import {fn_name} from module {module_name} ({e}). Name a "
                          f"function as module:function, with the module on the Python path or in the current "
                          f"directory.") from e
    if not callable(fn):
        raise ConfigError(f"reward '{spec}': {fn_name} is not a function.")

    def reward(prompts: list, responses: list[str], metas: list) -> list[float]:
        return [float(fn(p, r, m)) for p, r, m in zip(prompts, responses, metas)]

    return reward


def check_reward_spec(spec: str) -> None:
    """Refuse a spec load_reward would refuse, before any model is loaded (a function is imported to check it)."""
    if spec != "gold" and not Path(spec).is_dir():
        load_reward(spec)


def load_reward(spec: str, **model_options) -> Reward:
    """A reward model directory, `gold`, or `module:function` -> reward(prompts, responses, metas) -> scores."""
    if spec == "gold":
        return gold_reward
    if Path(spec).is_dir():
        return RewardModel(spec, **model_options)
    if ":" in spec and not Path(spec).exists():
        return python_reward(spec)
    raise ConfigError(f"reward '{spec}' is neither a reward model directory, `gold`, nor a Python function "
                      f"written as module:function.")
