"""Shared test fixtures: tiny models and a tokenizer built in the test session, never downloaded.

- `build_tokenizer()`: a byte-level BPE tokenizer trained on a few sentences, with the
  chat special tokens <|im_start|>, <|im_end|>, <|endoftext|> (eos) and <|pad|> (pad), and
  posttrain's default ChatML template. Byte-level, so any text encodes.
- `tiny_llama_dir` / `tiny_qwen2_dir`: directories saved with save_pretrained (safetensors)
  holding a randomly initialised LlamaForCausalLM / Qwen2ForCausalLM (hidden 32, 2 layers,
  4 heads, 2 KV heads) and that tokenizer; load them like any model directory.

The fixtures are session-scoped: treat them as read-only (copy a directory before changing
it). `build_tiny_model` and `build_tokenizer` are plain functions for tests that need a variant.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]

SENTENCES = [
    "The capital of France is Paris.",
    "The capital of Japan is Tokyo.",
    "What is the capital of Italy? The capital of Italy is Rome.",
    "Two plus two is four. Three plus five is eight.",
    "The chemical symbol of gold is Au.",
    "Hello! How can I help you today?",
    "I cannot help with that request, but I can help with something else.",
    "user assistant system tool",
]


def build_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer with chat special tokens and the default ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from posttrain.data.chat import default_template

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = default_template()
    return fast


def build_tiny_model(arch: str, tokenizer, seed: int = 0):
    """A randomly initialised causal LM of architecture "llama" or "qwen2" sized for `tokenizer`.

    initializer_range is larger than usual so that the random model's next-token
    distributions are far from uniform: greedy outputs then vary with the prompt
    and are not decided by float rounding.
    """
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.2,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[arch]
    torch.manual_seed(seed)
    return model_cls(config_cls(**common)).eval()


def _save_tiny(tmp_path_factory, arch: str):
    path = tmp_path_factory.mktemp(f"tiny_{arch}")
    tokenizer = build_tokenizer()
    build_tiny_model(arch, tokenizer).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """Directory with a tiny random LlamaForCausalLM and the test tokenizer (safetensors)."""
    return _save_tiny(tmp_path_factory, "llama")


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory):
    """Directory with a tiny random Qwen2ForCausalLM and the test tokenizer (safetensors)."""
    return _save_tiny(tmp_path_factory, "qwen2")


def load_script(name: str):
    """scripts/<name>.py as a module (the scripts are not a package), for the tests of those scripts."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
